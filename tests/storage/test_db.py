"""Where a unit of work runs: point reads on SQLite stay on the event loop's thread, writes go to
the one writer thread, which commits what queued up together."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import (
    Column,
    Connection,
    Float,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    bindparam,
    func,
    insert,
    literal_column,
    select,
    text,
    update,
)
from sqlalchemy.exc import DBAPIError, IntegrityError, MultipleResultsFound, NoResultFound

from idcontact.storage import db as db_module
from idcontact.storage.db import (
    POSTGRES_UNITS,
    Database,
    Fused,
    Prebuilt,
    one_of,
)
from tests.conftest import CANARY_NAME as CANARY
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


def _in_one_transaction(conn: Connection) -> bool:
    """Whether two statements shared a transaction: a setting made for the transaction only
    (``is_local``) is still there for the second statement."""
    conn.execute(text("SELECT set_config('application_name', 'in-one-transaction', true)"))
    return conn.execute(text("SHOW application_name")).scalar() == "in-one-transaction"


@pytest.mark.postgres
async def test_postgres_runs_point_units_without_a_transaction() -> None:
    """READ COMMITTED gives each statement its own snapshot anyway, and a single write is
    atomic by itself; BEGIN and COMMIT were two of a point unit's three round trips. Other
    units keep their transaction."""
    db = Database(postgres_url())
    try:
        assert await db.run(lambda c: c.execute(text("SELECT 41 + 1")).scalar(), point=True) == 42
        assert not await db.run(_in_one_transaction, point=True)
        assert await db.run(_in_one_transaction)
        assert await db.run(_in_one_transaction, write=True)
        assert not await db.run(_in_one_transaction, write=True, point=True)
    finally:
        await db.dispose()


@pytest.mark.postgres
@pytest.mark.parametrize("units", [POSTGRES_UNITS, 12])
async def test_postgres_units_take_turns_within_the_pool(units: int) -> None:
    """Units keep their connections for the next one; more units at once than allowed
    (``database_units``) take turns, and kept connections plus running units never exceed
    the pool (where a unit waiting for a connection would never hear of one put back)."""
    db = Database(postgres_url(), units=units)
    running = most = 0

    def slow(conn: Connection) -> int:
        nonlocal running, most
        running += 1
        most = max(most, running)
        conn.execute(text("SELECT pg_sleep(0.02)"))
        running -= 1
        return 1

    pool = db.engine.pool.size()  # type: ignore[attr-defined]
    try:
        for point in (True, False, True, False):  # kept connections of one kind, then the other
            done = await asyncio.gather(*(db.run(slow, point=point) for _ in range(60)))
            assert sum(done) == 60
            assert most == units  # as many as allowed, never more
            assert db.engine.pool.checkedout() <= pool  # type: ignore[attr-defined]
        failing = db.run(lambda c: c.execute(text("SELECT 1/0")).scalar())
        with pytest.raises(DBAPIError):
            await failing
        assert await db.run(lambda c: c.execute(text("SELECT 2")).scalar()) == 2
    finally:
        await db.dispose()
    assert db.engine.pool.checkedout() == 0  # type: ignore[attr-defined]
    with pytest.raises(ValueError):
        Database(postgres_url(), units=0)


_PID = text("SELECT pg_backend_pid()")


@pytest.mark.postgres
@pytest.mark.parametrize("recycle", [None, 0.0])
async def test_postgres_units_keep_their_connection_until_it_is_old(
    recycle: float | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The next unit runs on the connection the last one kept; past the recycle age (30 min;
    here 0 s) it gets a new one, so a connection dropped while idle is not used."""
    if recycle is not None:
        monkeypatch.setattr(db_module, "_POSTGRES_RECYCLE", recycle)
    db = Database(postgres_url())
    try:
        for point in (False, True):
            first = await db.run(lambda c: c.execute(_PID).scalar(), point=point)
            second = await db.run(lambda c: c.execute(_PID).scalar(), point=point)
            assert (first == second) is (recycle is None)
    finally:
        await db.dispose()


@pytest.mark.postgres
async def test_postgres_cancelled_unit_leaves_nothing_behind() -> None:
    """A request cancelled while its unit waits on the server (the client went away): the unit
    rolls back, its connection is not kept, and the next units run at once."""
    db = Database(postgres_url())
    try:
        for point in (False, True):
            began = asyncio.Event()

            def sleeper(conn: Connection, began: asyncio.Event = began) -> None:
                began.set()
                conn.execute(text("SELECT pg_sleep(5)"))

            unit = asyncio.ensure_future(db.run(sleeper, point=point))
            await began.wait()
            unit.cancel()
            with pytest.raises(asyncio.CancelledError):
                await unit
            one = await asyncio.wait_for(db.run(lambda c: c.execute(text("SELECT 1")).scalar()), 2)
            assert one == 1
            kept = sum(map(len, db._held_pg.values()))
            assert db.engine.pool.checkedout() == kept  # type: ignore[attr-defined]
    finally:
        await db.dispose()


_KILL_THE_OTHERS = text(
    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
    " WHERE datname = current_database() AND pid <> pg_backend_pid()"
)


_ONE = Prebuilt(select(literal_column("1", Integer).label("one")))


@pytest.mark.postgres
@pytest.mark.parametrize("through", ["sqlalchemy", "prebuilt"])
async def test_postgres_drops_kept_connections_when_the_server_lost_them(through: str) -> None:
    """After the server ended the connections (a restart), one unit fails (cleanly) and the
    next ones work: not one failure per kept connection. None stays checked out of the pool.
    The same whether the failing statement ran through SQLAlchemy or on the driver."""
    db = Database(postgres_url())
    one = text("SELECT 1")

    def work(conn: Connection) -> Any:
        return conn.execute(one).scalar() if through == "sqlalchemy" else _ONE.run(conn).scalar()

    try:
        await asyncio.gather(*(db.run(work) for _ in range(8)))
        await asyncio.gather(*(db.run(work, point=True) for _ in range(8)))
        await db.run(lambda c: c.execute(_KILL_THE_OTHERS).all(), point=True)
        with pytest.raises(DBAPIError) as failed:
            await db.run(work)
        assert failed.value.connection_invalidated
        for point in (False, True, False, True):
            assert await db.run(work, point=point) == 1
        if through == "prebuilt":  # it really ran on the driver
            assert _ONE._forms[(db.dialect,)] is not None
        kept = sum(map(len, db._held_pg.values()))
        assert db.engine.pool.checkedout() == kept  # type: ignore[attr-defined]
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


# -- Prebuilt statements: on SQLite's driver, through SQLAlchemy on PostgreSQL ----------------

_scratch = MetaData()
_items = Table(
    "prebuilt_items",
    _scratch,
    Column("id", String(32), primary_key=True),
    Column("kind", String(32), nullable=False),
    Column("at", Float, nullable=True),
    Column("blob", LargeBinary, nullable=True),
)
_ADD = Prebuilt(insert(_items).returning(_items.c.id, _items.c.at))
_GET = Prebuilt(select(_items).where(_items.c.id == bindparam("id")))
_OF_KIND = Prebuilt(
    select(_items.c.id).where(one_of(_items.c.kind, ("a", "b"))).order_by(_items.c.id)
)
_SET_AT = Prebuilt(update(_items).where(_items.c.kind == bindparam("k")).values(at=bindparam("at")))
_IN = Prebuilt(select(_items.c.id).where(_items.c.id.in_(bindparam("ids", expanding=True))))
_notes = Table(
    "scratch_notes",
    _scratch,
    Column("id", String(32), primary_key=True),
    Column("item", String(32), nullable=False),
)
_MOVE = Fused(
    update(_items)
    .where(_items.c.id == bindparam("key"), _items.c.kind == bindparam("was"))
    .values(kind=bindparam("now"))
    .returning(_items.c.id, _items.c.kind),
    _notes,
    _notes,
)
"""A guarded change and two notes about it, inserted only when the guard held."""


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
async def scratch_db(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Database]:
    url = f"sqlite+aiosqlite:///{tmp_path / 'data.db'}"
    if request.param == "postgres":
        url = postgres_url()
    db = Database(url)
    async with db.engine.begin() as conn:
        await conn.run_sync(_scratch.drop_all)
        await conn.run_sync(_scratch.create_all)
    try:
        yield db
    finally:
        async with db.engine.begin() as conn:
            await conn.run_sync(_scratch.drop_all)
        await db.dispose()


async def test_prebuilt_statements_give_the_same_answers_on_both_databases(
    scratch_db: Database,
) -> None:
    db = scratch_db

    def fill(conn: Connection) -> list[Any]:
        return [
            _ADD.run(conn, {"id": "one", "kind": "a", "at": 1.5, "blob": b"\x00\xff"}).one(),
            _ADD.run(conn, {"id": "two", "kind": "b"}).one(),  # other columns: another form
            _ADD.run(conn, {"id": "three", "kind": "c", "at": 3.0}).one(),
        ]

    added = await db.run(fill, write=True)
    assert [(r.id, r.at) for r in added] == [("one", 1.5), ("two", None), ("three", 3.0)]

    def read(conn: Connection) -> tuple[Any, ...]:
        row = _GET.run(conn, {"id": "one"}).first()
        return (
            (row.id, row.kind, row.at, bytes(row.blob)),
            _GET.run(conn, {"id": "none"}).first(),
            _GET.run(conn, {"id": "two"}).scalar_one(),
            [r.id for r in _OF_KIND.run(conn)],
            sorted(r.id for r in _IN.run(conn, {"ids": ["one", "three", "x"]})),
        )

    assert await db.run(read) == (
        ("one", "a", 1.5, b"\x00\xff"),
        None,
        "two",
        ["one", "two"],  # the fixed values of one_of() are part of the statement
        ["one", "three"],  # a list parameter: through SQLAlchemy on both
    )
    assert await db.run(read, point=True) == await db.run(read)
    updated = await db.run(lambda c: _SET_AT.run(c, {"k": "a", "at": 9.0}).rowcount, write=True)
    assert updated == 1
    with pytest.raises(NoResultFound):
        await db.run(lambda c: _GET.run(c, {"id": "none"}).one())
    with pytest.raises(MultipleResultsFound):
        await db.run(lambda c: _OF_KIND.run(c).one())
    with pytest.raises(ValueError):  # written into the SQL: plain words only
        one_of(_items.c.kind, ("a", "b') OR ('1'='1"))


_SET_AT_OF = Prebuilt(
    update(_items).where(_items.c.id == bindparam("_id")).values(at=bindparam("_at"))
)


async def test_a_prebuilt_statement_runs_once_per_row(scratch_db: Database) -> None:
    db = scratch_db

    def fill(conn: Connection) -> None:
        for key in ("p", "q", "r"):
            _ADD.run(conn, {"id": key, "kind": "a"})

    await db.run(fill, write=True)
    rows = [{"_id": "p", "_at": 1.0}, {"_id": "r", "_at": 3.0}, {"_id": "none", "_at": 9.0}]
    await db.run(lambda c: _SET_AT_OF.run_many(c, rows), write=True)
    await db.run(lambda c: _SET_AT_OF.run_many(c, []), write=True)  # nothing to do
    # A statement the driver cannot take as it is (a list parameter) goes through SQLAlchemy.
    await db.run(lambda c: _IN_KINDS.run_many(c, [{"ids": ["q"], "k": "b"}]), write=True)

    def read(conn: Connection) -> list[tuple[str, str, float | None]]:
        got = conn.execute(select(_items.c.id, _items.c.kind, _items.c.at).order_by(_items.c.id))
        return [(r.id, r.kind, r.at) for r in got]

    assert await db.run(read) == [("p", "a", 1.0), ("q", "b", None), ("r", "a", 3.0)]
    with pytest.raises(IntegrityError) as refused:  # one bad row: the unit changes nothing
        await db.run(
            lambda c: _SET_KIND_OF.run_many(
                c, [{"_id": "p", "_k": CANARY}, {"_id": "q", "_k": None}]
            ),
            write=True,
        )
    assert CANARY not in str(refused.value)
    assert await db.run(read) == [("p", "a", 1.0), ("q", "b", None), ("r", "a", 3.0)]


_IN_KINDS = Prebuilt(
    update(_items)
    .where(_items.c.id.in_(bindparam("ids", expanding=True)))
    .values(kind=bindparam("k"))
)
_SET_KIND_OF = Prebuilt(
    update(_items).where(_items.c.id == bindparam("_id")).values(kind=bindparam("_k"))
)


async def test_a_prebuilt_insert_that_breaks_a_constraint_is_an_integrity_error_without_values(
    scratch_db: Database,
) -> None:
    db = scratch_db
    await db.run(lambda c: _ADD.run(c, {"id": "k1", "kind": "a"}), write=True)
    with pytest.raises(IntegrityError) as refused:
        await db.run(lambda c: _ADD.run(c, {"id": "k1", "kind": CANARY}), write=True)
    assert CANARY not in str(refused.value)
    assert await db.run(lambda c: [r.id for r in _OF_KIND.run(c)]) == ["k1"]


async def test_a_unit_on_the_driver_and_through_sqlalchemy_is_one_transaction(
    scratch_db: Database,
) -> None:
    """Prebuilt statements and statements built per call (through SQLAlchemy) share the
    unit's transaction, whichever comes first: a failure rolls both back, on a write and on
    a read."""
    db = scratch_db

    def both_then_fail(conn: Connection) -> None:
        _ADD.run(conn, {"id": "raw", "kind": "a"})
        conn.execute(insert(_items).values(id="sa", kind="b"))
        raise ValueError("after both")

    with pytest.raises(ValueError):
        await db.run(both_then_fail, write=True)
    assert await db.run(lambda c: _OF_KIND.run(c).all()) == []

    def sa_first_then_fail(conn: Connection) -> None:
        conn.execute(insert(_items).values(id="sa", kind="b"))
        _ADD.run(conn, {"id": "raw", "kind": "a"})
        raise ValueError("after both")

    with pytest.raises(ValueError):
        await db.run(sa_first_then_fail, write=True)
    assert await db.run(lambda c: _OF_KIND.run(c).all()) == []

    def both(conn: Connection) -> None:
        _ADD.run(conn, {"id": "raw", "kind": "a"})
        conn.execute(insert(_items).values(id="sa", kind="b"))

    await db.run(both, write=True)

    def read_then_fail(conn: Connection) -> None:
        assert _GET.run(conn, {"id": "raw"}).first() is not None
        raise ValueError("read fails")

    with pytest.raises(ValueError):  # its connection is not handed out again broken
        await db.run(read_then_fail, point=True)
    assert await db.run(lambda c: [r.id for r in _OF_KIND.run(c)], point=True) == [
        "raw",
        "sa",
    ]
    # Both statements really ran on the driver: compiled for this database, not skipped.
    assert _ADD._forms[(db.dialect, "id", "kind")] is not None
    assert _GET._forms[(db.dialect, "id")] is not None
    assert _IN._forms[(db.dialect, "ids")] is None  # a list parameter: through SQLAlchemy


async def test_a_fused_change_inserts_its_rows_only_when_it_returned_one(
    scratch_db: Database,
) -> None:
    db = scratch_db
    await db.run(lambda c: _ADD.run(c, {"id": "i1", "kind": "a"}), write=True)

    def move(was: str, note: str) -> Callable[[Connection], list[Any]]:
        def work(conn: Connection) -> list[Any]:
            rows = _MOVE.run(
                conn,
                {"key": "i1", "was": was, "now": "b"},
                {"id": f"{note}-1", "item": "i1"},
                {"id": f"{note}-2", "item": "i1"},
            )
            return [tuple(r) for r in rows]

        return work

    def notes(conn: Connection) -> list[str]:
        return list(conn.execute(select(_notes.c.id).order_by(_notes.c.id)).scalars())

    assert await db.run(move("a", "n"), write=True, point=True) == [("i1", "b")]
    assert await db.run(notes) == ["n-1", "n-2"]
    assert await db.run(move("a", "m"), write=True, point=True) == []  # the guard fails
    assert await db.run(notes) == ["n-1", "n-2"]
    with pytest.raises(ValueError, match="2 rows"):
        await db.run(lambda c: _MOVE.run(c, {"key": "i1", "was": "b", "now": "c"}), write=True)


async def test_a_fused_change_is_atomic_even_without_a_transaction(
    scratch_db: Database,
) -> None:
    """A note that cannot be inserted undoes the change too. On PostgreSQL a point unit has
    no transaction: only because change and notes are one statement does the change go."""
    db = scratch_db
    await db.run(lambda c: _ADD.run(c, {"id": "i1", "kind": "a"}), write=True)
    await db.run(lambda c: c.execute(insert(_notes).values(id="taken", item="x")), write=True)

    def clash(conn: Connection) -> None:
        _MOVE.run(
            conn,
            {"key": "i1", "was": "a", "now": "b"},
            {"id": "fresh", "item": "i1"},
            {"id": "taken", "item": CANARY},
        )

    with pytest.raises(IntegrityError) as refused:
        await db.run(clash, write=True, point=True)
    assert CANARY not in str(refused.value)
    assert await db.run(lambda c: _GET.run(c, {"id": "i1"}).one().kind) == "a"
    assert await db.run(lambda c: c.execute(select(func.count()).select_from(_notes)).scalar()) == 1
