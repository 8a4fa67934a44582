"""Where a unit of work runs: point reads on SQLite stay on the event loop's thread, writes go to
the one writer thread, which commits what queued up together."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from pathlib import Path

import pytest
from sqlalchemy import Connection, text
from sqlalchemy.exc import IntegrityError

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


# -- SQLite's writer thread ------------------------------------------------------------------


def _table(conn: Connection) -> None:
    conn.execute(text("CREATE TABLE IF NOT EXISTS t (n INTEGER PRIMARY KEY)"))


def _rows(conn: Connection) -> list[int]:
    return [r[0] for r in conn.execute(text("SELECT n FROM t ORDER BY n"))]


class _Gate:
    """A write unit that holds the writer until released, so others queue up behind it."""

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.release = threading.Event()

    def __call__(self, conn: Connection) -> None:
        self.entered.set()
        assert self.release.wait(10)


async def _when_writer_holds(db: Database, gate: _Gate) -> asyncio.Task[None]:
    held = asyncio.create_task(db.run(gate, write=True))
    assert await asyncio.to_thread(gate.entered.wait, 10)
    return held


async def _queued(db: Database, n: int) -> None:
    """Until ``n`` write units wait in the writer's line."""
    assert db._writer is not None
    while db._writer._jobs.qsize() < n:
        await asyncio.sleep(0.001)


async def test_queued_writes_share_a_transaction_and_a_failing_one_is_rolled_back_alone(
    tmp_path: Path,
) -> None:
    db = Database(f"sqlite+aiosqlite:///{tmp_path / 'data.db'}")
    try:
        await db.run(_table, write=True)
        gate = _Gate()
        held = await _when_writer_holds(db, gate)

        def insert(n: int) -> Callable[[Connection], object]:
            def work(conn: Connection) -> object:
                conn.execute(text("INSERT INTO t (n) VALUES (:n)"), {"n": n})
                if n == 2:
                    raise ValueError("unit 2 fails after its insert")
                return conn.get_transaction()

            return work

        # 2 fails after its insert; the second 1 is refused by the database itself.
        numbers = (1, 2, 3, 1, 5)
        units = [asyncio.create_task(db.run(insert(n), write=True)) for n in numbers]
        await _queued(db, len(numbers))
        gate.release.set()
        await held
        first, failed, third, duplicate, fifth = await asyncio.gather(
            *units, return_exceptions=True
        )
        assert isinstance(failed, ValueError) and isinstance(duplicate, IntegrityError)
        assert first is third is fifth  # one transaction for the units that queued up
        assert await db.run(_rows) == [1, 3, 5]  # 2's insert went with its savepoint
    finally:
        await db.dispose()


async def test_a_caller_that_gives_up_does_not_stop_its_write(tmp_path: Path) -> None:
    db = Database(f"sqlite+aiosqlite:///{tmp_path / 'data.db'}")
    try:
        await db.run(_table, write=True)
        gate = _Gate()
        held = await _when_writer_holds(db, gate)
        waiting = asyncio.create_task(
            db.run(lambda c: c.execute(text("INSERT INTO t (n) VALUES (7)")), write=True)
        )
        await _queued(db, 1)
        waiting.cancel()
        gate.release.set()
        await held
        with pytest.raises(asyncio.CancelledError):
            await waiting
        assert await db.run(_rows, write=True) == [7]  # behind the cancelled one in line
    finally:
        await db.dispose()


async def test_the_writer_thread_ends_when_idle_or_disposed_and_comes_back(
    tmp_path: Path,
) -> None:
    db = Database(f"sqlite+aiosqlite:///{tmp_path / 'data.db'}")
    writer = db._writer
    assert writer is not None
    writer.idle_seconds = 0.05
    try:
        thread = await db.run(_thread, write=True)
        await asyncio.to_thread(thread.join, 10)
        assert not thread.is_alive()  # idle: gone
        again = await db.run(_thread, write=True)
        assert again is not thread and again.is_alive()
    finally:
        await db.dispose()
    assert not again.is_alive()  # disposed: joined


async def test_a_write_after_a_stop_is_not_stranded(tmp_path: Path) -> None:
    """A stop that races a new write (dispose, then use again) leaves no unit without a
    thread: the writer ends only when its line is empty."""
    db = Database(f"sqlite+aiosqlite:///{tmp_path / 'data.db'}")
    writer = db._writer
    assert writer is not None
    try:
        await db.run(_table, write=True)
        gate = _Gate()
        held = await _when_writer_holds(db, gate)
        writer.stop()  # the stop is in line before the next write
        later = asyncio.create_task(
            db.run(lambda c: c.execute(text("INSERT INTO t (n) VALUES (8)")), write=True)
        )
        await _queued(db, 2)
        gate.release.set()
        await held
        await asyncio.wait_for(later, 10)
        await db.dispose()
        await db.run(lambda c: c.execute(text("INSERT INTO t (n) VALUES (9)")), write=True)
        assert await db.run(_rows) == [8, 9]  # and after dispose, a new thread served
    finally:
        await db.dispose()
