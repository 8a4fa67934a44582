"""Tables and the async engine, for SQLite (default) and PostgreSQL through one URL.

Timestamps are stored as epoch seconds (floats) so both dialects compare them the same way.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import (
    Column,
    Float,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    event,
)
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.pool import ConnectionPoolEntry

metadata = MetaData()

conversations = Table(
    "conversations",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("tenant", String(64), nullable=False, default="default"),
    Column("purpose", String(64), nullable=False),
    Column("comm_method", String(64), nullable=False),
    Column("state", String(16), nullable=False),
    # sha256 of the attr_url slot secret; the secret itself is never stored.
    Column("slot_hash", String(64), unique=True, nullable=True),
    Column("created_at", Float, nullable=False),
    Column("last_activity", Float, nullable=False),
    Column("delivered_at", Float, nullable=True),
    Column("purge_at", Float, nullable=False, index=True),
    Column("idle_seconds", Integer, nullable=False),
)

vault_entries = Table(
    "vault_entries",
    metadata,
    Column("conversation_id", String(32), primary_key=True),
    Column("nonce", LargeBinary(12), nullable=False),
    Column("ciphertext", LargeBinary, nullable=False),
    Column("created_at", Float, nullable=False),
)

used_tokens = Table(
    "used_tokens",
    metadata,
    # "jti:<jti>" or "sha256:<hex>": never the token itself.
    Column("replay_key", String(100), primary_key=True),
    Column("expires_at", Float, nullable=False, index=True),
)

audit_events = Table(
    "audit_events",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("at", Float, nullable=False),
    Column("actor", String(100), nullable=False),
    Column("action", String(50), nullable=False),
    Column("conversation_id", String(32), nullable=True, index=True),
    # JSON with names and numbers only, never attribute values.
    Column("detail", Text, nullable=False, default="{}"),
)


def is_sqlite(url: str) -> bool:
    return url.startswith("sqlite")


def create_engine(url: str) -> AsyncEngine:
    """Create the engine; on SQLite turn on WAL and secure_delete for every connection."""
    if is_sqlite(url):
        path = url.split("///", 1)[1] if "///" in url else ""
        if path and path != ":memory:":
            Path(path).parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            if not Path(path).exists():
                Path(path).touch(mode=0o600)
        engine = create_async_engine(url, connect_args={"timeout": 30})

        @event.listens_for(engine.sync_engine, "connect")
        def _pragmas(dbapi_conn: Any, _record: ConnectionPoolEntry) -> None:
            # We emit BEGIN ourselves (below), so the driver must not.
            dbapi_conn.isolation_level = None
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
            # Deleted vault rows are overwritten with zeros, not left in free pages.
            cur.execute("PRAGMA secure_delete=ON")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.close()

        @event.listens_for(engine.sync_engine, "begin")
        def _begin(conn: Connection) -> None:
            # A write transaction takes the write lock at once: a deferred one that reads
            # first could not upgrade after another process wrote (SQLITE_BUSY_SNAPSHOT).
            immediate = conn.get_execution_options().get("sqlite_immediate", False)
            conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")

        return engine
    # No pre-ping (a round trip per checkout); recycle instead, and let a dead connection
    # fail one request cleanly.
    return create_async_engine(url, pool_size=20, max_overflow=20, pool_recycle=1800)


def _alembic_config(connection: Connection) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(Path(__file__).parent / "migrations"))
    cfg.attributes["connection"] = connection
    return cfg


async def upgrade(engine: AsyncEngine) -> None:
    """Bring the schema to the newest migration (``idcontact db upgrade``)."""

    def run(connection: Connection) -> None:
        command.upgrade(_alembic_config(connection), "head")

    async with engine.begin() as conn:
        await conn.run_sync(run)


async def current_revision(engine: AsyncEngine) -> str | None:
    from alembic.runtime.migration import MigrationContext

    def run(connection: Connection) -> str | None:
        return MigrationContext.configure(connection).get_current_revision()

    async with engine.connect() as conn:
        return await conn.run_sync(run)
