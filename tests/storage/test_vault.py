"""The vault: after a conversation's key is destroyed, nothing anywhere opens its attributes."""

from __future__ import annotations

import asyncio
import secrets
import sqlite3
from pathlib import Path
from typing import Any, cast

import pytest
from redis.asyncio import Redis

from idcontact.errors import SlotUsedError
from idcontact.storage.keystore import PostgresKeyStore, RedisKeyStore, SqliteKeyStore
from idcontact.tokens import AuthResult, ReceivedToken, TokenIssuer
from tests.conftest import CANARY_NAME, AppFactory, Instance, demo_settings
from tests.flows.test_core_flows import JSON, issue, new_slot
from tests.services import redis_url

pytestmark = pytest.mark.anyio


async def start_conversation(instance: Instance) -> str:
    body = {"purpose": "report_move", "auth_result": issue(instance), "comm_method": "demo"}
    response = await instance.client.post("/start", json=body, headers=JSON)
    assert response.status_code == 200
    return str(response.json()["client_url"].rsplit("/", 1)[1])


def raw_bytes(directory: Path) -> bytes:
    """Every byte of every file in the data directory (database, WAL, key store)."""
    return b"".join(p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file())


async def test_sqlite_destroyed_key_is_gone_from_every_file(make_app: AppFactory) -> None:
    instance: Instance = await make_app()
    services = instance.services
    assert services.keystore is not None and services.conversations is not None
    conversation_id = await start_conversation(instance)
    key = await services.keystore.get(conversation_id)
    assert key is not None and len(key) == 32
    data_dir = instance.settings.data_dir
    assert key in raw_bytes(data_dir)  # the check below can fail
    # The attribute values are never on disk in plaintext, before or after.
    assert CANARY_NAME.encode() not in raw_bytes(data_dir)

    await services.conversations.end(conversation_id, actor="test")

    assert await services.keystore.get(conversation_id) is None
    assert key not in raw_bytes(data_dir)
    assert await services.conversations.attributes(conversation_id, actor="test") is None


async def test_key_store_is_beside_not_inside_the_data_file(make_app: AppFactory) -> None:
    instance: Instance = await make_app()
    conversation_id = await start_conversation(instance)
    assert instance.services.keystore is not None
    key = await instance.services.keystore.get(conversation_id)
    assert key is not None
    db_file = instance.settings.data_dir / "idcontact.sqlite3"
    main_bytes = b"".join(
        p.read_bytes() for p in db_file.parent.glob("idcontact.sqlite3*") if p.is_file()
    )
    assert key not in main_bytes
    assert (instance.settings.data_dir / "idcontact.keys.sqlite3").exists()


@pytest.mark.postgres
async def test_postgres_keys_live_in_an_unlogged_table(make_app: AppFactory) -> None:
    instance: Instance = await make_app(database="postgres")
    assert instance.services.engine is not None and instance.services.conversations is not None
    from sqlalchemy import text

    async with instance.services.engine.connect() as conn:
        persistence = (
            await conn.execute(
                text("SELECT relpersistence FROM pg_class WHERE relname = 'data_keys'")
            )
        ).scalar_one()
    assert persistence in ("u", b"u")  # UNLOGGED: not in WAL, replicas or WAL-based backups
    conversation_id = await start_conversation(instance)
    await instance.services.conversations.end(conversation_id, actor="test")
    async with instance.services.engine.connect() as conn:
        left = (
            await conn.execute(
                text("SELECT count(*) FROM data_keys WHERE conversation_id = :c"),
                {"c": conversation_id},
            )
        ).scalar_one()
    assert left == 0


@pytest.mark.postgres
async def test_postgres_key_store_puts_gets_expires_and_deletes(make_app: AppFactory) -> None:
    instance: Instance = await make_app(database="postgres")
    store = instance.services.keystore
    assert isinstance(store, PostgresKeyStore)
    live, stale, other = (secrets.token_hex(16) for _ in range(3))
    await store.put(live, b"k" * 32, 60)
    await store.put(other, b"o" * 32, 60)
    await store.put(stale, b"s" * 32, -1)  # already past its time
    assert await store.get(live) == b"k" * 32
    assert await store.get(stale) is None  # expired keys are never handed out
    assert await store.get(secrets.token_hex(16)) is None
    assert await store.purge_expired() >= 1
    await store.delete(live, secrets.token_hex(16))
    assert await store.get(live) is None
    assert await store.get(other) == b"o" * 32  # only the named ones went
    assert await store.put(other, b"x" * 32, 60) is False  # a key is never replaced
    assert await store.get(other) == b"o" * 32


@pytest.mark.redis
async def test_redis_key_store_holds_nothing_after_destroy(
    make_app: AppFactory, tmp_path: Any
) -> None:
    url = redis_url()
    redis = Redis.from_url(url)
    await redis.flushdb()
    instance: Instance = await make_app(demo_settings(tmp_path, keystore="redis", redis_url=url))
    assert isinstance(instance.services.keystore, RedisKeyStore)
    assert instance.services.conversations is not None
    conversation_id = await start_conversation(instance)
    key = await redis.get(RedisKeyStore.PREFIX + conversation_id)
    assert key is not None and len(key) == 32
    ttl = await redis.ttl(RedisKeyStore.PREFIX + conversation_id)
    assert 0 < ttl <= 120 * 60  # the retention is a backstop even if no sweeper ran
    # The data key is not in the database files at all.
    assert key not in raw_bytes(instance.settings.data_dir)

    await instance.services.conversations.end(conversation_id, actor="test")

    values = [await redis.get(k) for k in await redis.keys("*")]
    assert key not in values
    assert await instance.services.conversations.attributes(conversation_id, actor="test") is None
    await redis.aclose()


async def test_sweeper_purges_after_retention(make_app: AppFactory, tmp_path: Any) -> None:
    now = [1_000_000.0]
    instance: Instance = await make_app(demo_settings(tmp_path), clock=lambda: now[0])
    services = instance.services
    assert services.conversations is not None and services.keystore is not None
    keys = services.keys
    from idcontact.tokens import AuthResult, TokenIssuer

    token = TokenIssuer(keys.signing, kid=keys.signing_kid, clock=lambda: now[0]).issue(
        AuthResult(status="success", attributes={"fullname": CANARY_NAME, "bsn": "1"}),
        keys.encryption_public,
    )
    purpose = instance.settings.purpose("report_move")
    assert purpose is not None
    conversation_id = await services.conversations.create_with_token(purpose, "demo", token)
    assert await services.conversations.purge_expired() == 0
    # Idle for longer than the purpose allows: purged, even though retention is not over.
    now[0] += purpose.idle_minutes * 60 + 1
    assert await services.conversations.purge_expired() == 1
    assert await services.conversations.attributes(conversation_id, actor="test") is None
    assert (await services.conversations.get(conversation_id)).state == "purged"
    # Running it again (or on a second instance) is harmless.
    assert await services.conversations.purge_expired() == 0


async def test_reading_is_audited_without_values(make_app: AppFactory) -> None:
    instance: Instance = await make_app()
    conversation_id = await start_conversation(instance)
    assert instance.services.conversations is not None and instance.services.engine is not None
    await instance.services.conversations.attributes(conversation_id, actor="agent:7")
    from sqlalchemy import text

    async with instance.services.engine.connect() as conn:
        rows = (
            await conn.execute(
                text("SELECT actor, action, detail FROM audit_events WHERE conversation_id = :c"),
                {"c": conversation_id},
            )
        ).all()
    assert ("agent:7", "attributes.view") in [(r.actor, r.action) for r in rows]
    assert all(CANARY_NAME not in r.detail for r in rows)


async def test_sqlite_key_store_waits_for_a_busy_file_instead_of_failing(tmp_path: Path) -> None:
    """A key is stored and read on the event loop's own connection when the file is free; when
    another writer holds it (another process), the statement waits in the worker thread."""
    store = SqliteKeyStore(tmp_path / "keys.db")
    other = sqlite3.connect(tmp_path / "keys.db", isolation_level=None)
    try:
        await store.put("free", b"k" * 32, 60)
        assert await store.get("free") == b"k" * 32
        other.execute("BEGIN IMMEDIATE")  # the write lock, as a writer of another process
        other.execute("INSERT INTO data_keys VALUES ('other', x'00', 0)")
        pending = asyncio.create_task(store.put("busy", b"b" * 32, 60))
        done, _ = await asyncio.wait({pending}, timeout=0.2)
        assert not done  # waiting for the lock, not failed
        assert await store.get("free") == b"k" * 32  # a reader never waits on a writer
        other.execute("COMMIT")
        await asyncio.wait_for(pending, 10)
        assert await store.get("busy") == b"b" * 32
        assert await store.put("busy", b"x" * 32, 60) is False  # never replaced
        assert await store.get("busy") == b"b" * 32
        with pytest.raises(sqlite3.IntegrityError):  # a real error is not taken for "busy"
            await store.put("null", cast(bytes, None), 60)  # the key is NOT NULL
    finally:
        other.close()
        await store.close()


BSNS = ("999990019", "999990020")


@pytest.mark.parametrize("kind", ["token", "handed over"])
@pytest.mark.parametrize(
    "store",
    [
        "sqlite",
        pytest.param("postgres", marks=pytest.mark.postgres),
        pytest.param("redis", marks=pytest.mark.redis),
    ],
)
async def test_two_deliveries_to_one_slot_at_once_leave_the_winners_key(
    make_app: AppFactory, tmp_path: Path, store: str, kind: str
) -> None:
    """Both seal under a key of their own; one claims the slot, the other is refused (409).
    The one refused must not take the conversation's key with it: the key store never
    replaces a key and says so (Redis's ``SET NX`` did silently, and the loser then deleted
    the winner's key); on PostgreSQL the key goes in with the vault entry, in one statement."""
    if store == "redis":
        settings = demo_settings(tmp_path, keystore="redis", redis_url=redis_url())
        instance: Instance = await make_app(settings)
    else:
        instance = await make_app(database=store)
    conversations = instance.services.conversations
    assert conversations is not None and instance.services.keystore is not None
    conversation_id, slot = await new_slot(instance)
    results: list[str | ReceivedToken] = []
    for bsn in BSNS:
        attributes = {"fullname": CANARY_NAME, "bsn": bsn}
        if kind == "token":
            results.append(issue(instance, attributes))
        else:
            keys = instance.services.keys
            issuer = TokenIssuer(keys.signing, kid=keys.signing_kid)
            results.append(issuer.hand_over(AuthResult(status="success", attributes=attributes)))
    outcomes = await asyncio.gather(
        *(conversations.deliver_to_slot(slot, result) for result in results),
        return_exceptions=True,
    )
    assert sorted(map(str, outcomes)) == sorted(["authenticated", str(SlotUsedError())])
    stored = await conversations.attributes(conversation_id, actor="test")
    assert stored is not None
    assert stored["attributes"] in [{"fullname": CANARY_NAME, "bsn": b} for b in BSNS]
    assert await instance.services.keystore.get(conversation_id) is not None
