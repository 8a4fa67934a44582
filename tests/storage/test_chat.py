"""Chat messages in the vault: numbered, encrypted at rest, and gone with their conversation."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import pytest
from alembic import command
from sqlalchemy import Connection, text

from idcontact.errors import VaultError
from idcontact.storage.db import _alembic_config, create_engine
from idcontact.storage.vault import Vault
from tests.conftest import Instance
from tests.storage.test_vault import raw_bytes, start_conversation

pytestmark = pytest.mark.anyio

CANARY_TEXT = "Canary-Chat-Zr7Q my address is Markt 1"


async def test_messages_are_numbered_encrypted_and_destroyed_with_the_conversation(
    instance: Instance,
) -> None:
    conversations = instance.services.conversations
    assert conversations is not None
    vault = conversations.vault
    conversation_id = await start_conversation(instance)
    with pytest.raises(VaultError):  # no chat before it is opened
        await vault.append_chat(conversation_id, "resident", "too early")
    await vault.open_chat(conversation_id, 3600)
    first = await vault.append_chat(conversation_id, "resident", CANARY_TEXT)
    second = await vault.append_chat(conversation_id, "agent", "Dank u, een moment.")
    assert (first.seq, second.seq) == (1, 2)
    assert CANARY_TEXT not in repr(first)
    assert [m.text for m in await vault.chat_since(conversation_id)] == [
        CANARY_TEXT,
        "Dank u, een moment.",
    ]
    assert [m.seq for m in await vault.chat_since(conversation_id, after=1)] == [2]
    if instance.settings.resolved_database_url.startswith("sqlite"):
        assert CANARY_TEXT.encode() not in raw_bytes(instance.settings.data_dir)

    await conversations.end(conversation_id, actor="test")
    assert await vault.chat_since(conversation_id) == []
    with pytest.raises(VaultError):
        await vault.append_chat(conversation_id, "resident", "after the end")
    rows = await conversations.db.run(
        lambda conn: conn.execute(text("SELECT count(*) FROM chat_messages")).scalar()
    )
    assert rows == 0


async def test_messages_sent_at_once_get_distinct_numbers(instance: Instance) -> None:
    conversations = instance.services.conversations
    assert conversations is not None
    vault = conversations.vault
    conversation_id = await start_conversation(instance)
    await vault.open_chat(conversation_id, 3600)
    sent = await asyncio.gather(
        *(vault.append_chat(conversation_id, "resident", f"m{i}") for i in range(20))
    )
    assert sorted(m.seq for m in sent) == list(range(1, 21))
    stored = await vault.chat_since(conversation_id)
    assert {m.text for m in stored} == {f"m{i}" for i in range(20)}


async def test_a_message_marks_the_conversation_active(instance: Instance) -> None:
    """Storing a message is activity: a resident who writes while waiting is not idle."""
    conversations = instance.services.conversations
    assert conversations is not None
    conversation_id = await start_conversation(instance)
    await conversations.vault.open_chat(conversation_id, 3600)
    before = (await conversations.get(conversation_id)).last_activity
    message = await conversations.vault.append_chat(conversation_id, "resident", "nog daar")
    after = (await conversations.get(conversation_id)).last_activity
    assert after == message.at and after > before


async def test_a_room_serves_what_was_posted_here_without_the_database(
    instance: Instance, monkeypatch: pytest.MonkeyPatch
) -> None:
    """While a socket of the conversation is open here, a message the bus announces comes
    from the room; anything the room does not hold in full comes from the vault, and the room
    and its text are gone when the last socket leaves or the conversation is destroyed."""
    conversations = instance.services.conversations
    assert conversations is not None
    vault = conversations.vault
    conversation_id = await start_conversation(instance)
    await vault.open_chat(conversation_id, 3600)
    before = await vault.append_chat(conversation_id, "resident", "before any socket")
    reads: list[object] = []
    real_run = conversations.db.run

    async def counted(work: object, **kwargs: object) -> object:
        reads.append(work)
        return await real_run(work, **kwargs)  # type: ignore[arg-type]

    with vault.chat_room(conversation_id), vault.chat_room(conversation_id):  # two sides
        second = await vault.append_chat(conversation_id, "agent", CANARY_TEXT)
        third = await vault.append_chat(conversation_id, "resident", "ok")
        monkeypatch.setattr(conversations.db, "run", counted)
        got = await vault.chat_since(conversation_id, after=1, upto=third.seq)
        assert [(m.seq, m.text) for m in got] == [(2, CANARY_TEXT), (3, "ok")]
        assert reads == []  # from the room
        # Message 1 was posted before the room opened: the vault serves it (with the rest).
        got = await vault.chat_since(conversation_id, after=0, upto=third.seq)
        assert [m.seq for m in got] == [before.seq, second.seq, third.seq] and len(reads) == 1
        monkeypatch.undo()
    # The last socket left: the room and its text are gone; the vault answers again.
    assert conversation_id not in vault._rooms
    with vault.chat_room(conversation_id):
        await vault.append_chat(conversation_id, "agent", "kept in the room")
        assert vault._rooms[conversation_id].messages
        await conversations.end(conversation_id, actor="test")  # destroys the keys
        assert not vault._rooms[conversation_id].messages
        assert await vault.chat_since(conversation_id, after=0, upto=4) == []


async def test_a_room_keeps_the_chat_key_and_an_ended_conversation_takes_no_message(
    instance: Instance, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With a socket open here the key store is read once, not per message; a conversation
    ended by another instance (which cannot clear this room's key) still takes no message."""
    conversations = instance.services.conversations
    assert conversations is not None
    vault = conversations.vault
    conversation_id = await start_conversation(instance)
    await vault.open_chat(conversation_id, 3600)
    gets: list[str] = []
    real_get = vault.keys.get

    async def counted(key_id: str) -> bytes | None:
        gets.append(key_id)
        return await real_get(key_id)

    monkeypatch.setattr(vault.keys, "get", counted)
    with vault.chat_room(conversation_id):
        sent = [await vault.append_chat(conversation_id, "resident", f"m{i}") for i in range(5)]
        assert [m.seq for m in sent] == [1, 2, 3, 4, 5]
        assert len(gets) == 1
        # Another instance ends it: its own vault destroys the keys, then the state changes.
        other = Vault(conversations.db, vault.keys)
        await other.destroy(conversation_id)
        await conversations.transition(conversation_id, "ended", actor="test")
        assert vault._rooms[conversation_id].key is not None  # this room still holds it
        with pytest.raises(VaultError):
            await vault.append_chat(conversation_id, "agent", CANARY_TEXT)
    rows = await conversations.db.run(
        lambda conn: conn.execute(
            text("SELECT count(*) FROM chat_messages WHERE conversation_id = :c"),
            {"c": conversation_id},
        ).scalar()
    )
    assert rows == 0
    assert conversation_id not in vault._rooms  # the key left with the last socket


def test_the_counter_goes_on_from_the_messages_stored_before_it(tmp_path: Path) -> None:
    """Migration 0010: a conversation with messages numbered before the counter existed
    numbers its next message after them."""
    url = f"sqlite+aiosqlite:///{tmp_path / 'db.sqlite3'}"

    async def migrate(revision: str) -> None:
        engine = create_engine(url)

        def run(connection: Connection) -> None:
            command.upgrade(_alembic_config(connection), revision)

        async with engine.begin() as conn:
            await conn.run_sync(run)
        await engine.dispose()

    asyncio.run(migrate("0009"))
    with sqlite3.connect(tmp_path / "db.sqlite3") as conn:
        for cid in ("with", "without"):
            conn.execute(
                "INSERT INTO conversations (id, tenant, purpose, comm_method, state, created_at,"
                " last_activity, purge_at, idle_seconds) VALUES (?, 't', 'p', 'chat', 'connected',"
                " 0, 0, 0, 0)",
                (cid,),
            )
        for seq in (1, 2, 7):
            conn.execute(
                "INSERT INTO chat_messages VALUES ('with', ?, 'resident', x'00', x'00', 0)", (seq,)
            )
    conn.close()
    asyncio.run(migrate("head"))
    with sqlite3.connect(tmp_path / "db.sqlite3") as conn:
        counters = dict(conn.execute("SELECT id, chat_seq FROM conversations").fetchall())
    conn.close()
    assert counters == {"with": 7, "without": 0}
