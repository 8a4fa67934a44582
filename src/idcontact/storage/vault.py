"""The vault: what a conversation holds in confidence — its verified attributes and its chat
messages — encrypted under data keys of that conversation.

The ciphertext lives in the database (and so in its backups); the data key lives in a
:class:`~idcontact.storage.keystore.KeyStore` that backups never see. Destroying the key is
what deletes the attributes, everywhere at once. Reading is explicit and audited.

The database parts are plain functions of a ``Connection`` so they join the caller's unit of
work (:class:`~idcontact.storage.db.Database`); the key store is reached outside it.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, replace as with_fields
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from sqlalchemy import Connection, TableClause, bindparam, delete, insert, select, update

from idcontact.domain.lifecycle import FINAL
from idcontact.errors import SlotUsedError, VaultError
from idcontact.storage.audit import audit
from idcontact.storage.db import (
    Database,
    Prebuilt,
    chat_messages,
    conversations,
    vault_entries,
)
from idcontact.storage.keystore import KeyStore, PostgresKeyStore, data_keys

Clock = Callable[[], float]


@dataclass(frozen=True, repr=False)
class Sealed:
    """Encrypted attributes of one conversation, as stored."""

    conversation_id: str
    nonce: bytes
    ciphertext: bytes
    key_row: Mapping[str, object] | None = None
    """The data key's row when the key store is a table of the same database: stored with the
    entry, in the same statement (:meth:`Vault.rows`), not put beforehand."""


@dataclass(frozen=True, repr=False)
class ChatMessage:
    """One chat message; ``repr`` leaves the text out (it ends up in logs otherwise)."""

    seq: int
    sender: str
    text: str
    at: float

    def __repr__(self) -> str:
        return f"ChatMessage(seq={self.seq}, sender={self.sender!r})"


def _encrypt(key: bytes, conversation_id: str, payload: Mapping[str, object]) -> Sealed:
    nonce = os.urandom(12)
    plaintext = json.dumps(payload, separators=(",", ":")).encode()
    return Sealed(
        conversation_id, nonce, AESGCM(key).encrypt(nonce, plaintext, conversation_id.encode())
    )


CHAT_SENDERS = ("resident", "agent")

# Statements of every chat message, built once (building one per call cost SQLAlchemy more than
# running it).
_INSERT = Prebuilt(insert(vault_entries))
_PUT_KEY = Prebuilt(insert(data_keys))
_NEXT = (
    update(conversations)
    .where(conversations.c.id == bindparam("cid"), conversations.c.state.not_in(FINAL))
    .values(last_activity=bindparam("at"), chat_seq=conversations.c.chat_seq + 1)
    .returning(conversations.c.chat_seq)
)
_SINCE = (
    select(chat_messages)
    .where(
        chat_messages.c.conversation_id == bindparam("cid"),
        chat_messages.c.seq > bindparam("after"),
        chat_messages.c.sender.in_(bindparam("senders", expanding=True)),
    )
    .order_by(chat_messages.c.seq)
    .limit(1000)
)
"""Who writes in a chat; the vault's message store also keeps other sealed entries."""


def _chat_key_id(conversation_id: str) -> str:
    return f"chat:{conversation_id}"


ROOM_KEEP = 32
"""Messages a room keeps: a socket more than that behind reads the vault."""


class _Room:
    """A conversation with chat sockets open on this instance: its chat key and its newest
    messages posted here, so a message needs no read of the key store, and the other side's
    socket (the bus tells it only the number) and the echo to the sender no read of the
    database. Key and text live here only while a socket is open."""

    __slots__ = ("key", "messages", "sockets")

    def __init__(self) -> None:
        self.sockets = 0
        self.key: bytes | None = None
        self.messages: dict[int, ChatMessage] = {}


class Vault:
    def __init__(self, db: Database, keys: KeyStore, clock: Clock = time.time) -> None:
        self._db = db
        self._keys = keys
        self._clock = clock
        self._rooms: dict[str, _Room] = {}

    @property
    def keys(self) -> KeyStore:
        return self._keys

    async def seal(
        self, conversation_id: str, payload: Mapping[str, object], ttl_seconds: int
    ) -> Sealed:
        """Encrypt ``payload`` under a fresh data key and put the key in the key store.

        The caller inserts the result within its transaction (:meth:`insert`, :meth:`rows`)
        and calls :meth:`discard` if that transaction fails, so no key is left over (a key that
        goes in with the entry, ``key_row``, was never stored). ``SlotUsedError`` when the
        conversation has a key already: another delivery came first."""
        key = AESGCM.generate_key(bit_length=256)
        sealed = _encrypt(key, conversation_id, payload)
        if isinstance(self._keys, PostgresKeyStore) and self._keys.db is self._db:
            # One round trip less, and nothing to remove when the write fails.
            return with_fields(sealed, key_row=self._keys.row(conversation_id, key, ttl_seconds))
        if not await self._keys.put(conversation_id, key, ttl_seconds):
            raise SlotUsedError()  # another delivery to this conversation came first
        return sealed

    async def reseal(
        self, conversation_id: str, payload: Mapping[str, object], ttl_seconds: int
    ) -> tuple[Sealed, bool]:
        """Encrypt new attributes for a conversation that may hold some already, under its
        existing data key when there is one (so a refused replacement leaves the old readable);
        ``True`` with a fresh key, which the caller forgets if its transaction fails. Store it
        with :meth:`replace`."""
        key = await self._keys.get(conversation_id)
        if key is None:
            return await self.seal(conversation_id, payload, ttl_seconds), True
        return _encrypt(key, conversation_id, payload), False

    def replace(self, conn: Connection, sealed: Sealed) -> None:
        """Store ``sealed`` in place of what the conversation held (in the caller's work)."""
        conn.execute(
            delete(vault_entries).where(vault_entries.c.conversation_id == sealed.conversation_id)
        )
        self.insert(conn, sealed)

    def insert(self, conn: Connection, sealed: Sealed) -> None:
        for table, row in self.rows(sealed):
            (_INSERT if table is vault_entries else _PUT_KEY).run(conn, row)

    def rows(self, sealed: Sealed) -> list[tuple[TableClause, Mapping[str, object]]]:
        """What :meth:`insert` inserts, by table (the data key's row first, when it goes with
        the entry): to insert with a change instead, in one statement (``Fused``)."""
        entry = {
            "conversation_id": sealed.conversation_id,
            "nonce": sealed.nonce,
            "ciphertext": sealed.ciphertext,
            "created_at": self._clock(),
        }
        if sealed.key_row is None:
            return [(vault_entries, entry)]
        return [(data_keys, sealed.key_row), (vault_entries, entry)]

    async def forget(self, conversation_id: str) -> None:
        await self._keys.delete(conversation_id)

    async def discard(self, sealed: Sealed) -> None:
        """The write of ``sealed`` failed: remove the data key put for it. A key that was to go
        in with it (``key_row``) never was stored, and the conversation's key, if any, is
        someone else's (a delivery that won the race), so it stays."""
        if sealed.key_row is None:
            await self.forget(sealed.conversation_id)

    def fetch(
        self, conn: Connection, conversation_id: str, *, actor: str, at: float, tenant: str
    ) -> Sealed | None:
        """The stored ciphertext, in the caller's transaction; the read is audited there."""
        row = conn.execute(
            select(vault_entries.c.nonce, vault_entries.c.ciphertext).where(
                vault_entries.c.conversation_id == conversation_id
            )
        ).first()
        if row is None:
            return None
        audit(conn, at, actor, "attributes.view", conversation_id, tenant=tenant)
        return Sealed(conversation_id, row.nonce, row.ciphertext)

    async def open(self, sealed: Sealed) -> dict[str, object] | None:
        """Decrypt with the conversation's data key; ``None`` once the key is destroyed."""
        key = await self._keys.get(sealed.conversation_id)
        if key is None:
            return None
        try:
            plaintext = AESGCM(key).decrypt(
                sealed.nonce, sealed.ciphertext, sealed.conversation_id.encode()
            )
        except InvalidTag:
            raise VaultError() from None
        data: dict[str, object] = json.loads(plaintext)
        return data

    # -- chat ---------------------------------------------------------------------------------

    async def open_chat(self, conversation_id: str, ttl_seconds: int) -> None:
        """Make the conversation's chat key, once, when its chat starts (never lazily: two
        first messages at once would make two keys). When it is there already, it stays."""
        await self._keys.put(
            _chat_key_id(conversation_id), AESGCM.generate_key(bit_length=256), ttl_seconds
        )

    async def has_chat(self, conversation_id: str) -> bool:
        return await self._keys.get(_chat_key_id(conversation_id)) is not None

    async def append_chat(self, conversation_id: str, sender: str, text: str) -> ChatMessage:
        """Store a message, encrypted (the conversation id and its number are bound to it), and
        return it with its number: 1, 2, … per conversation, in the order stored. A
        ``VaultError`` once the conversation's chat is destroyed or the conversation has ended.

        The same statement marks the conversation active (``last_activity``, a resident who
        writes is not idle) and takes the number: it holds the conversation's row until the
        message is stored, so writers on any instance take numbers in turn."""
        room = self._rooms.get(conversation_id)
        key = await self._chat_key(conversation_id, room)
        if key is None:
            raise VaultError()
        at = self._clock()

        def work(conn: Connection) -> ChatMessage | None:
            seq = conn.execute(_NEXT, {"cid": conversation_id, "at": at}).scalar()
            if seq is None:
                return None  # ended (its chat is being destroyed) or gone
            nonce = os.urandom(12)
            aad = f"{conversation_id}:{seq}:{sender}".encode()
            conn.execute(
                insert(chat_messages),
                {
                    "conversation_id": conversation_id,
                    "seq": seq,
                    "sender": sender,
                    "nonce": nonce,
                    "ciphertext": AESGCM(key).encrypt(nonce, text.encode(), aad),
                    "created_at": at,
                },
            )
            return ChatMessage(int(seq), sender, text, at)

        message = await self._db.run(work, write=True)
        if message is None:
            raise VaultError()
        if room is not None:
            room.messages[message.seq] = message
            if len(room.messages) > ROOM_KEEP:
                del room.messages[min(room.messages)]
        return message

    async def _chat_key(self, conversation_id: str, room: _Room | None) -> bytes | None:
        """The conversation's chat key: from its room when a socket here has read it already."""
        if room is not None and room.key is not None:
            return room.key
        key = await self._keys.get(_chat_key_id(conversation_id))
        if room is not None and self._rooms.get(conversation_id) is room:
            room.key = key
        return key

    @contextlib.contextmanager
    def chat_room(self, conversation_id: str) -> Iterator[None]:
        """While a chat socket of the conversation is open here: keep its newest messages
        posted on this instance for :meth:`chat_since` (``upto``)."""
        room = self._rooms.setdefault(conversation_id, _Room())
        room.sockets += 1
        try:
            yield
        finally:
            room.sockets -= 1
            if not room.sockets and self._rooms.get(conversation_id) is room:
                del self._rooms[conversation_id]

    async def chat_since(
        self,
        conversation_id: str,
        after: int = 0,
        *,
        senders: tuple[str, ...] = CHAT_SENDERS,
        upto: int | None = None,
    ) -> list[ChatMessage]:
        """The messages after number ``after``; none once the conversation's key is gone.
        Only those of ``senders``: other entries (a callback number) are no chat. With
        ``upto`` (the newest number the bus announced), from the conversation's room when it
        holds every number up to it: they were posted on this instance."""
        room = self._rooms.get(conversation_id)
        if room is not None and upto is not None and 0 < upto - after <= ROOM_KEEP:
            kept = [room.messages.get(seq) for seq in range(after + 1, upto + 1)]
            if all(m is not None for m in kept):
                return [m for m in kept if m is not None and m.sender in senders]
        key = await self._chat_key(conversation_id, room)
        if key is None:
            return []

        def work(conn: Connection) -> list[Any]:
            params = {"cid": conversation_id, "after": after, "senders": senders}
            return list(conn.execute(_SINCE, params))

        out = []
        for row in await self._db.run(work, point=True):
            aad = f"{conversation_id}:{row.seq}:{row.sender}".encode()
            try:
                text = AESGCM(key).decrypt(row.nonce, row.ciphertext, aad).decode()
            except InvalidTag:
                raise VaultError() from None
            out.append(ChatMessage(row.seq, row.sender, text, row.created_at))
        return out

    async def has_messages(self, conversation_id: str) -> bool:
        def work(conn: Connection) -> bool:
            found = conn.execute(
                select(chat_messages.c.seq)
                .where(
                    chat_messages.c.conversation_id == conversation_id,
                    chat_messages.c.sender.in_(CHAT_SENDERS),
                )
                .limit(1)
            ).first()
            return found is not None

        return await self._db.run(work)

    async def destroy_attributes(self, conversation_id: str) -> None:
        """Delete the attributes only (the resident logged out); the chat stays."""
        await self._keys.delete(conversation_id)

        def work(conn: Connection) -> None:
            conn.execute(
                delete(vault_entries).where(vault_entries.c.conversation_id == conversation_id)
            )

        await self._db.run(work, write=True)

    async def destroy(self, *conversation_ids: str) -> None:
        """Delete the keys first (that is the deletion), then the ciphertext: the attributes
        and every chat message, of one conversation or of the sweeper's batch."""
        if not conversation_ids:
            return
        for conversation_id in conversation_ids:
            room = self._rooms.get(conversation_id)
            if room is not None:
                room.key = None
                room.messages.clear()
        await self._keys.delete(*conversation_ids, *map(_chat_key_id, conversation_ids))

        def work(conn: Connection) -> None:
            conn.execute(
                delete(vault_entries).where(vault_entries.c.conversation_id.in_(conversation_ids))
            )
            conn.execute(
                delete(chat_messages).where(chat_messages.c.conversation_id.in_(conversation_ids))
            )

        await self._db.run(work, write=True)
