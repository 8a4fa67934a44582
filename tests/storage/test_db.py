"""Where a unit of work runs: point reads on SQLite stay on the event loop's thread."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from sqlalchemy import Connection, text

from idcontact.storage.db import Database
from tests.services import postgres_url

pytestmark = pytest.mark.anyio


def _thread(conn: Connection) -> threading.Thread:
    conn.execute(text("SELECT 1"))
    return threading.current_thread()


async def test_sqlite_runs_point_reads_here_and_the_rest_in_worker_threads(
    tmp_path: Path,
) -> None:
    db = Database(f"sqlite+aiosqlite:///{tmp_path / 'data.db'}")
    try:
        here = threading.current_thread()
        assert await db.run(_thread, point=True) is here
        assert await db.run(_thread) is not here
        assert await db.run(_thread, write=True) is not here
        assert await db.run(_thread, write=True, point=True) is not here  # writes never
    finally:
        await db.dispose()


@pytest.mark.postgres
async def test_postgres_takes_point_reads_like_any_other() -> None:
    db = Database(postgres_url())
    try:
        assert await db.run(lambda c: c.execute(text("SELECT 41 + 1")).scalar(), point=True) == 42
    finally:
        await db.dispose()
