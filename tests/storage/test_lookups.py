"""A conversation is looked up by its unique key alone: the plan PostgreSQL caches for the lookup
uses that key's index even when it was made on an empty, never analysed table."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator

import asyncpg
import pytest

from idcontact.conversations import _BY_ID, _BY_SLOT
from idcontact.storage.db import Database, upgrade
from tests.services import postgres_url

pytestmark = [pytest.mark.anyio, pytest.mark.postgres]


@pytest.fixture
async def fresh_postgres() -> AsyncIterator[str]:
    """A new database with the schema and nothing in it, dropped afterwards."""
    url = postgres_url()
    plain = url.replace("postgresql+asyncpg://", "postgresql://")
    name = f"idcontact_lookups_{os.getpid()}"
    admin = await asyncpg.connect(plain)
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}"')
        await admin.execute(f'CREATE DATABASE "{name}"')
        fresh = url.rsplit("/", 1)[0] + "/" + name
        db = Database(fresh)
        try:
            await upgrade(db.engine)
        finally:
            await db.dispose()
        yield fresh.replace("postgresql+asyncpg://", "postgresql://")
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


async def test_lookups_take_the_unique_index_in_a_plan_made_on_an_empty_table(
    fresh_postgres: str,
) -> None:
    from sqlalchemy.dialects import postgresql

    conn = await asyncpg.connect(fresh_postgres)
    try:
        # What a pooled connection does after five runs of a prepared statement: one plan for
        # every value, made with what is known now (nothing: no rows, no statistics).
        await conn.execute("SET plan_cache_mode = force_generic_plan")
        for name, statement, index in (
            ("by_id", _BY_ID, "conversations_pkey"),
            ("by_slot", _BY_SLOT, "conversations_slot_hash_key"),
        ):
            compiled = statement.stmt.compile(dialect=postgresql.asyncpg.dialect())
            await conn.execute(f"PREPARE {name} AS {compiled}")
            values = ", ".join("'x'" for _ in compiled.positiontup or ())
            plan = "\n".join(r[0] for r in await conn.fetch(f"EXPLAIN EXECUTE {name}({values})"))
            assert index in plan, plan
    finally:
        await conn.close()
