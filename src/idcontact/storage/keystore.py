"""Key stores for per-conversation data keys.

A data key must live where backups and replicas never see it, so that destroying the key
deletes the attributes everywhere. Three places qualify:

- Redis without persistence (``--save '' --appendonly no``): memory only, with a TTL as backstop;
- a PostgreSQL UNLOGGED table: not in the WAL, so not on replicas or in WAL-based backups
  (a logical ``pg_dump`` must use ``--no-unlogged-table-data``; see docs/storage.md);
- on SQLite, a separate key-store file beside (not inside) the data file, with ``secure_delete``
  and a WAL checkpoint after each deletion so deleted keys are overwritten on disk.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Protocol, TypeVar

import anyio
import anyio.to_thread
from redis.asyncio import Redis
from sqlalchemy import (
    Connection,
    Float,
    LargeBinary,
    String,
    bindparam,
    column,
    delete,
    select,
    table,
)
from sqlalchemy.dialects import postgresql

from idcontact.storage.db import Database, Prebuilt

T = TypeVar("T")

data_keys = table(
    "data_keys",
    column("conversation_id", String),
    column("key", LargeBinary),
    column("expires_at", Float),
)
"""The PostgreSQL key store's table (migration 0001; UNLOGGED, so not in SQLAlchemy's
metadata, which would make it a logged one)."""
_PUT = Prebuilt(
    postgresql.insert(data_keys)
    .on_conflict_do_nothing(index_elements=["conversation_id"])
    .returning(data_keys.c.conversation_id)
)
_GET = Prebuilt(
    select(data_keys.c.key).where(
        data_keys.c.conversation_id == bindparam("c"), data_keys.c.expires_at > bindparam("n")
    )
)
_PURGE = Prebuilt(delete(data_keys).where(data_keys.c.expires_at <= bindparam("n")))


class KeyStore(Protocol):
    """Where data keys live; ``delete`` is what makes deletion final."""

    async def put(self, conversation_id: str, key: bytes, ttl_seconds: int) -> bool:
        """Store a new key; ``False`` when ``conversation_id`` has one already (a key is never
        replaced: the one there may encrypt what someone else just stored)."""
        ...

    async def get(self, conversation_id: str) -> bytes | None: ...
    async def delete(self, *conversation_ids: str) -> None:
        """Delete these conversations' keys (several at once: the sweeper purges batches)."""
        ...

    async def purge_expired(self) -> int: ...
    async def close(self) -> None: ...


class SqliteKeyStore:
    """Data keys in their own SQLite file; one connection guarded by a lock (single writer)."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        fresh = not path.exists()
        self._path = path
        self._conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        if fresh:
            path.chmod(0o600)
        self._conn.execute("PRAGMA journal_mode=WAL")
        # NORMAL: durable at checkpoints, no fsync per key. A key lost in a power cut only
        # means the resident identifies again.
        self._conn.execute("PRAGMA synchronous=NORMAL")
        self._conn.execute("PRAGMA busy_timeout=30000")
        self._conn.execute("PRAGMA secure_delete=ON")
        self._conn.execute(
            "CREATE TABLE IF NOT EXISTS data_keys ("
            " conversation_id TEXT PRIMARY KEY, key BLOB NOT NULL, expires_at REAL NOT NULL)"
        )
        # A thread lock, taken in the worker thread: a cancelled caller stops waiting, but its
        # statement still runs, and close() must not pull the connection from under it.
        self._guard = threading.Lock()
        # The event loop's own connection, for a key read or a new key: a statement on a hot
        # page takes microseconds, less than the hop to a worker thread (every flow stores a
        # key, every chat message reads one). It never waits: busy (a writer of another
        # process, or the worker's connection), the statement goes to the worker instead.
        self._inline = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._inline.execute("PRAGMA busy_timeout=0")
        self._inline.execute("PRAGMA secure_delete=ON")

    @property
    def path(self) -> Path:
        return self._path

    async def _call(self, fn: Callable[..., T], *args: object) -> T:
        return await anyio.to_thread.run_sync(self._locked, fn, *args)

    def _locked(self, fn: Callable[..., T], *args: object) -> T:
        with self._guard:
            return fn(*args)

    async def _run(self, sql: str, params: tuple[object, ...] = ()) -> list[tuple[object, ...]]:
        return await self._call(self._exec, sql, params)

    def _exec(self, sql: str, params: tuple[object, ...]) -> list[tuple[object, ...]]:
        return self._conn.execute(sql, params).fetchall()

    def _checkpoint(self) -> None:
        # Move the zeroed pages into the main file and cut the WAL to nothing.
        self._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")

    async def _here_or_there(
        self, sql: str, params: tuple[object, ...]
    ) -> list[tuple[object, ...]]:
        """On the loop's connection if the file is free this instant, else in the worker."""
        try:
            return self._inline.execute(sql, params).fetchall()
        except sqlite3.OperationalError as busy:
            if busy.sqlite_errorcode not in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED):
                raise
        return await self._run(sql, params)

    async def put(self, conversation_id: str, key: bytes, ttl_seconds: int) -> bool:
        stored = await self._here_or_there(
            "INSERT INTO data_keys (conversation_id, key, expires_at) VALUES (?, ?, ?)"
            " ON CONFLICT (conversation_id) DO NOTHING RETURNING 1",
            (conversation_id, key, time.time() + ttl_seconds),
        )
        return bool(stored)

    async def get(self, conversation_id: str) -> bytes | None:
        rows = await self._here_or_there(
            "SELECT key FROM data_keys WHERE conversation_id = ? AND expires_at > ?",
            (conversation_id, time.time()),
        )
        return bytes(rows[0][0]) if rows else None  # type: ignore[call-overload]

    async def delete(self, *conversation_ids: str) -> None:
        if conversation_ids:
            await self._call(self._delete, conversation_ids)

    def _delete(self, conversation_ids: tuple[str, ...]) -> None:
        self._conn.executemany(
            "DELETE FROM data_keys WHERE conversation_id = ?", [(c,) for c in conversation_ids]
        )
        self._checkpoint()

    async def purge_expired(self) -> int:
        return await self._call(self._purge)

    def _purge(self) -> int:
        cur = self._conn.execute("DELETE FROM data_keys WHERE expires_at <= ?", (time.time(),))
        if cur.rowcount:
            self._checkpoint()
        return cur.rowcount

    async def close(self) -> None:
        self._inline.close()
        await self._call(self._conn.close)


class PostgresKeyStore:
    """Data keys in the UNLOGGED table ``data_keys`` created by migration 0001.

    Each call is one statement, so each runs without a transaction around it (``point``)."""

    def __init__(self, db: Database) -> None:
        self.db = db

    def row(self, conversation_id: str, key: bytes, ttl_seconds: int) -> dict[str, object]:
        """The key's row in ``data_keys``: :meth:`put` inserts it, or the write that stores what
        it encrypts, in the same database (the vault's, in one statement with its entry)."""
        return {
            "conversation_id": conversation_id,
            "key": key,
            "expires_at": time.time() + ttl_seconds,
        }

    async def put(self, conversation_id: str, key: bytes, ttl_seconds: int) -> bool:
        values = self.row(conversation_id, key, ttl_seconds)

        def work(conn: Connection) -> bool:
            return _PUT.run(conn, values).first() is not None

        return bool(await self.db.run(work, write=True, point=True))

    async def get(self, conversation_id: str) -> bytes | None:
        def work(conn: Connection) -> bytes | None:
            found = _GET.run(conn, {"c": conversation_id, "n": time.time()}).scalar()
            return bytes(found) if found is not None else None

        return await self.db.run(work, point=True)

    async def delete(self, *conversation_ids: str) -> None:
        if not conversation_ids:
            return

        def work(conn: Connection) -> None:
            conn.execute(delete(data_keys).where(data_keys.c.conversation_id.in_(conversation_ids)))

        await self.db.run(work, write=True, point=True)

    async def purge_expired(self) -> int:
        def work(conn: Connection) -> int:
            return _PURGE.run(conn, {"n": time.time()}).rowcount

        return int(await self.db.run(work, write=True, point=True))

    async def close(self) -> None:
        return None


class RedisKeyStore:
    """Data keys in Redis, which must run without persistence; the TTL is a backstop."""

    PREFIX = "idcontact:dk:"

    def __init__(self, redis: Redis) -> None:
        self._redis = redis

    async def put(self, conversation_id: str, key: bytes, ttl_seconds: int) -> bool:
        return bool(
            await self._redis.set(self.PREFIX + conversation_id, key, ex=ttl_seconds, nx=True)
        )

    async def get(self, conversation_id: str) -> bytes | None:
        value = await self._redis.get(self.PREFIX + conversation_id)
        if value is None:
            return None
        return value if isinstance(value, bytes) else str(value).encode()

    async def delete(self, *conversation_ids: str) -> None:
        if conversation_ids:
            await self._redis.delete(*(self.PREFIX + c for c in conversation_ids))

    async def purge_expired(self) -> int:
        return 0  # Redis expires keys itself.

    async def close(self) -> None:
        await self._redis.aclose()
