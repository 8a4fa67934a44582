"""Tables and the async engine, for SQLite (default) and PostgreSQL through one URL.

Timestamps are stored as epoch seconds (floats) so both dialects compare them the same way.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import queue
import re
import sqlite3
import threading
import time
from collections import namedtuple
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Generic, TypeVar, cast

import anyio
import anyio.to_thread
from alembic import command
from alembic.config import Config
from sqlalchemy import (
    Column,
    Engine,
    Float,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    TableClause,
    Text,
    bindparam,
    create_engine as create_sync_engine,
    event,
    exists,
    insert,
    literal_column,
    select,
    text,
)
from sqlalchemy.engine import Connection, Dialect
from sqlalchemy.exc import DBAPIError, MultipleResultsFound, NoResultFound
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.pool import ConnectionPoolEntry
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.elements import ClauseElement, ColumnElement
from sqlalchemy.sql.expression import Executable
from sqlalchemy.util import greenlet_spawn

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
    # The queue (domain/queueing.py): where and since when it waits, who has it.
    Column("queue", String(64), nullable=True),
    Column("channel", String(16), nullable=True),
    Column("waiting_since", Float, nullable=True),
    Column("agent_id", String(32), nullable=True, index=True),
    Column("offer_expires", Float, nullable=True),
    Column("connected_at", Float, nullable=True),
    Column("wrap_up_until", Float, nullable=True),
    # The phone channel (phone/codes.py): a keyed hash of the link code, never the code;
    # how and when it linked (JSON without numbers); a second use of the code; the call.
    Column("link_hash", String(64), nullable=True),
    Column("link_shown", Integer, nullable=True),
    Column("linked_at", Float, nullable=True),
    Column("link_detail", Text, nullable=True),
    Column("hijack_at", Float, nullable=True),
    Column("call_ref_hash", String(64), nullable=True),
    Column("call_state", String(16), nullable=True),
    # Identification asked during the conversation (chat, video): for which purpose, how far
    # (asked, started, done, failed, ineligible) and since when; its slot is ``slot_hash``.
    Column("identify_purpose", String(64), nullable=True),
    Column("identify_state", String(16), nullable=True),
    Column("identify_at", Float, nullable=True),
    # During a phone call: a keyed hash of the code the agent reads out, and until when it works.
    Column("identify_code_hash", String(64), nullable=True),
    Column("identify_code_expires", Float, nullable=True),
    # The transcript still has to reach the customer-contact system; retried until then.
    Column("hand_over_until", Float, nullable=True),
    # The agent noted that the resident acts for someone else (1): the proof is the caller's.
    Column("acting_for", Integer, nullable=True),
    # A warm transfer on offer: to which agent, until when (the holder keeps it meanwhile).
    Column("transfer_to", String(32), nullable=True),
    Column("transfer_expires", Float, nullable=True),
    # The resident asked to be called back (the number is a sealed chat entry, never here).
    Column("callback_at", Float, nullable=True),
    # The attributes came with a session_url (protocol §4.5): the channel reports activity.
    Column("has_session", Integer, nullable=True),
    # The number of the conversation's newest chat message (vault.py takes the next one here).
    Column("chat_seq", Integer, nullable=False, server_default=text("0")),
    Index("ix_conversations_tenant_state", "tenant", "state"),
    Index("ix_conversations_link_hash", "link_hash", unique=True),
    Index("ix_conversations_call_ref_hash", "call_ref_hash", unique=True),
    Index("ix_conversations_identify_code_hash", "identify_code_hash", unique=True),
)

link_failures = Table(
    "link_failures",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("tenant", String(64), nullable=False),
    # "caller:<keyed hash>" or "withheld": never a phone number.
    Column("caller_key", String(80), nullable=False),
    Column("at", Float, nullable=False),
    Index("ix_link_failures_tenant_at", "tenant", "at"),
)

agents = Table(
    "agents",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("username", String(100), nullable=False, unique=True),
    Column("display_name", String(200), nullable=False),
    Column("password_hash", Text, nullable=True),
    # The TOTP secret, sealed with the instance's internal secret (sealing.py).
    Column("totp_secret", Text, nullable=True),
    Column("totp_last_step", Integer, nullable=True),
    # sha256 of a one-time enrolment code (password and TOTP set-up); the code is never stored.
    Column("enrol_hash", String(64), nullable=True, unique=True),
    Column("enrol_expires", Float, nullable=True),
    Column("disabled", Integer, nullable=False, default=0),
    Column("created_at", Float, nullable=False),
    # available or paused, as the agent chose; busy and wrap-up follow from conversations.
    Column("presence", String(16), nullable=False, default="paused"),
    Column("presence_since", Float, nullable=False),
    # The agent's desk phone for the phone channel, e.g. ``PJSIP/agent1``.
    Column("phone_endpoint", String(100), nullable=True),
)

agent_memberships = Table(
    "agent_memberships",
    metadata,
    Column("agent_id", String(32), primary_key=True),
    Column("tenant", String(64), primary_key=True),
    Column("role", String(16), nullable=False),  # agent, supervisor, admin
    # JSON list of queue tags, or ["*"] for every queue of the tenant.
    Column("queues", Text, nullable=False, default='["*"]'),
)

agent_sessions = Table(
    "agent_sessions",
    metadata,
    # sha256 of the session cookie; the cookie value itself is never stored.
    Column("key", String(64), primary_key=True),
    Column("agent_id", String(32), nullable=False, index=True),
    Column("created_at", Float, nullable=False),
    Column("last_seen", Float, nullable=False),
    Column("expires_at", Float, nullable=False),
)

login_failures = Table(
    "login_failures",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    # "account:<sha256>" or "client:<sha256>": never a user name or an address in plaintext.
    Column("key", String(80), nullable=False, index=True),
    Column("at", Float, nullable=False),
)

queue_stats = Table(
    "queue_stats",
    metadata,
    Column("tenant", String(64), primary_key=True),
    Column("queue", String(64), primary_key=True),
    # The moving average handle time (domain/queueing.py HandleTime) and how many it saw.
    Column("handle_seconds", Float, nullable=False),
    Column("handled", Integer, nullable=False, default=0),
)

vault_entries = Table(
    "vault_entries",
    metadata,
    Column("conversation_id", String(32), primary_key=True),
    Column("nonce", LargeBinary(12), nullable=False),
    Column("ciphertext", LargeBinary, nullable=False),
    Column("created_at", Float, nullable=False),
)

chat_messages = Table(
    "chat_messages",
    metadata,
    Column("conversation_id", String(32), primary_key=True),
    Column("seq", Integer, primary_key=True),
    Column("sender", String(16), nullable=False),
    Column("nonce", LargeBinary(12), nullable=False),
    Column("ciphertext", LargeBinary, nullable=False),
    Column("created_at", Float, nullable=False),
)

form_questions = Table(
    "form_questions",
    metadata,
    # The contact form (forms.py): the question and answer themselves are chat messages in the
    # vault; this row holds only keyed hashes of the secrets and the times.
    Column("conversation_id", String(32), primary_key=True),
    Column("tenant", String(64), nullable=False),
    Column("submitted_at", Float, nullable=False),
    Column("answered_at", Float, nullable=True),
    # The one-time link to read the answer (keyed hash; NULL once used up) and failed reads.
    Column("link_hash", String(64), nullable=True, unique=True),
    Column("failures", Integer, nullable=False, default=0),
    # A re-identification in progress: its attr_url slot, its return path and the browser.
    Column("slot_hash", String(64), nullable=True, unique=True),
    Column("return_hash", String(64), nullable=True, unique=True),
    Column("browser_hash", String(64), nullable=True),
    Column("attempt_expires", Float, nullable=True),
    Column("verdict", String(16), nullable=True),
)

registrations = Table(
    "klantinteracties_registrations",
    metadata,
    # One registration of a conversation's contact in the Klantinteracties API, asked for by
    # an agent (klantinteracties.py); retried until done or given up.
    Column("id", String(32), primary_key=True),
    Column("tenant", String(64), nullable=False),
    Column("conversation_id", String(32), nullable=False),
    Column("state", String(16), nullable=False),  # pending, done, failed
    Column("requested_by", String(100), nullable=False),
    Column("created_at", Float, nullable=False),
    Column("updated_at", Float, nullable=False),
    Column("next_attempt_at", Float, nullable=False),
    Column("give_up_at", Float, nullable=False),
    Column("attempts", Integer, nullable=False, default=0),
    # Why the last attempt failed: a kind (``auth``, ``timeout``, …) and the step, no content.
    Column("last_error", String(32), nullable=True),
    Column("last_step", String(32), nullable=True),
    # What the API created so far (a retry continues from there) and the contact's number.
    Column("partij_uuid", String(36), nullable=True),
    Column("klantcontact_uuid", String(36), nullable=True),
    Column("betrokkene_uuid", String(36), nullable=True),
    Column("internetaak_uuid", String(36), nullable=True),
    Column("nummer", String(32), nullable=True),
    # What is sent, sealed under the registration's own data key (in the key store); removed
    # when done or given up.
    Column("nonce", LargeBinary(12), nullable=True),
    Column("ciphertext", LargeBinary, nullable=True),
    Index("ix_registrations_conversation", "tenant", "conversation_id", unique=True),
    Index("ix_registrations_due", "tenant", "state", "next_attempt_at"),
)

used_tokens = Table(
    "used_tokens",
    metadata,
    # "jti:<jti>" or "sha256:<hex>": never the token itself.
    Column("replay_key", String(100), primary_key=True),
    Column("expires_at", Float, nullable=False, index=True),
)

leases = Table(
    "leases",
    metadata,
    # One row per job that must run on one instance at a time (storage/leases.py).
    Column("name", String(64), primary_key=True),
    Column("holder", String(64), nullable=False),
    Column("until", Float, nullable=False),
)

audit_events = Table(
    "audit_events",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("at", Float, nullable=False),
    Column("actor", String(100), nullable=False),
    Column("action", String(50), nullable=False),
    Column("conversation_id", String(32), nullable=True, index=True),
    # JSON with names, numbers and pseudonyms only, never attribute values.
    Column("detail", Text, nullable=False, default="{}"),
    Column("tenant", String(64), nullable=False, server_default="default"),
    # The hash chain (storage/audit.py), filled in by the sealer.
    Column("seq", Integer, nullable=True),
    Column("prev_hash", String(64), nullable=True),
    Column("hash", String(64), nullable=True),
    # Indexes (migrations 0002, 0011): (tenant, id); (tenant, seq), unique; on PostgreSQL
    # (tenant, id) of the events not sealed yet, which the sealer reads every second.
)


def is_sqlite(url: str) -> bool:
    return url.startswith("sqlite")


def _sqlite_path(url: str) -> str:
    path = url.split("///", 1)[1] if "///" in url else ""
    if path and path != ":memory:":
        Path(path).parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        if not Path(path).exists():
            Path(path).touch(mode=0o600)
    return path


def _sqlite_setup(engine: Engine) -> None:
    """WAL, secure_delete and BEGIN IMMEDIATE for writers, on every connection of ``engine``."""

    @event.listens_for(engine, "connect")
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

    @event.listens_for(engine, "begin")
    def _begin(conn: Connection) -> None:
        if _driver(conn).in_transaction:  # begun on the driver (:func:`_unit`)
            return
        # A write transaction takes the write lock at once: a deferred one that reads
        # first could not upgrade after another process wrote (SQLITE_BUSY_SNAPSHOT).
        immediate = conn.get_execution_options().get("sqlite_immediate", False)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")


def _driver(conn: Connection) -> sqlite3.Connection:
    return cast(sqlite3.Connection, conn.connection.driver_connection)


def _unit(conn: Connection, work: Callable[[Connection], T], begin: str) -> T:
    """Run ``work`` in one transaction begun and ended on the driver's connection.

    Through SQLAlchemy (pool checkout, ``begin()``, commit, reset on return) a transaction
    cost ~100 µs on top of its statements; this costs ~5. A statement that ``work`` runs
    through SQLAlchemy joins the transaction (the ``begin`` listener sees it begun) and
    SQLAlchemy's commit or rollback ends it."""
    driver = _driver(conn)
    driver.execute(begin)
    try:
        result = work(conn)
    except BaseException:
        if conn.in_transaction():
            conn.rollback()
        if driver.in_transaction:
            driver.execute("ROLLBACK")
        raise
    if conn.in_transaction():
        conn.commit()
    if driver.in_transaction:
        driver.execute("COMMIT")
    return result


_POSTGRES_POOL = 20
_POSTGRES_OVERFLOW = 20
POSTGRES_UNITS = 8
"""PostgreSQL units at once per process, by default (``database_units``). Each holds a
connection, and so do idle ones kept for the next unit (:class:`Database`): both together stay
within the pool, so nothing waits in it. On a database nearby units take ~0.1–0.3 ms: more at
once only make its server processes contend. ``bench/flows.py`` scenario 7 (two workers):
with 24, 420–440 flows/s and 1.6 ms of database CPU per flow; with 8, 460–510 and 0.9 ms
(4: the same). A database farther away (a round trip of milliseconds) keeps units open
longer: more at once."""


def _pool_size(units: int) -> int:
    """The pool holds the running units and the idle ones kept (as many again, of each kind:
    in a transaction or not), so no unit waits inside it."""
    return max(_POSTGRES_POOL, 3 * units)


_POSTGRES_RECYCLE = 1800.0
"""Seconds a connection serves before it is replaced (the pool's, and the kept ones' too), so
one that a firewall or proxy dropped while idle is not used after a quiet night."""


def create_engine(url: str, units: int = POSTGRES_UNITS) -> AsyncEngine:
    """Create the async engine (migrations, tools); SQLite gets the same pragmas as below."""
    if is_sqlite(url):
        _sqlite_path(url)
        engine = create_async_engine(url, connect_args={"timeout": 30}, hide_parameters=True)
        _sqlite_setup(engine.sync_engine)
        return engine
    # No pre-ping (a round trip per checkout); recycle instead, and let a dead connection
    # fail one request cleanly.
    # hide_parameters: a database error's text names the statement, never the values
    # (attribute ciphertexts, hashes) that a log line or traceback could otherwise carry.
    return create_async_engine(
        url,
        pool_size=_pool_size(units),
        max_overflow=_POSTGRES_OVERFLOW,
        pool_recycle=int(_POSTGRES_RECYCLE),
        hide_parameters=True,
    )


T = TypeVar("T")


class Rows:
    """The rows of a :class:`Prebuilt` statement: the part of a ``Result`` units use."""

    __slots__ = ("_rows", "rowcount")

    def __init__(self, rows: list[Any], rowcount: int) -> None:
        self._rows = rows
        self.rowcount = rowcount

    def __iter__(self) -> Iterator[Any]:
        return iter(self._rows)

    def all(self) -> list[Any]:
        return self._rows

    def first(self) -> Any:
        return self._rows[0] if self._rows else None

    def one(self) -> Any:
        if len(self._rows) != 1:
            raise (NoResultFound if not self._rows else MultipleResultsFound)(
                f"expected one row, got {len(self._rows)}"
            )
        return self._rows[0]

    def scalar(self) -> Any:
        return self._rows[0][0] if self._rows else None

    def scalar_one(self) -> Any:
        return self.one()[0]

    def scalar_one_or_none(self) -> Any:
        return None if not self._rows else self.scalar_one()


@dataclass(frozen=True, slots=True)
class _Form:
    """A statement compiled for one database and one set of parameter names."""

    sql: str
    order: tuple[str, ...]
    fixed: dict[str, Any]
    binds: dict[str, Callable[[Any], Any]]
    row: Callable[..., Any] | None


class Prebuilt:
    """A statement built once and run on the driver's cursor.

    Through SQLAlchemy even a cached statement costs ~35 µs a run (cache key, execution
    context, result metadata) against ~5 on the driver; a flow runs a dozen. It is compiled
    once per database and set of parameter names; rows come back as named tuples
    (``row.id``). On PostgreSQL the cursor is SQLAlchemy's asyncpg adapter, under its greenlet
    and in the unit's transaction, as SQLAlchemy's own statements are. A statement with a list
    parameter (``in_``: its SQL depends on the list's length) runs through SQLAlchemy.
    """

    __slots__ = ("_forms", "stmt")

    def __init__(self, stmt: Executable) -> None:
        self.stmt = stmt
        self._forms: dict[tuple[str, ...], _Form | None] = {}

    def _form(self, conn: Connection, params: Mapping[str, Any]) -> _Form | None:
        key = (conn.dialect.name, *params)
        form = self._forms.get(key, _UNSET)
        if form is _UNSET:
            form = self._forms[key] = _compile_form(self.stmt, conn.dialect, key[1:])
        return cast(_Form | None, form)

    def run(self, conn: Connection, params: Mapping[str, Any] | None = None) -> Rows:
        params = params or {}
        form = self._form(conn, params)
        if form is not None:
            return _run_form(conn, form, params)
        result = conn.execute(self.stmt, params)
        return Rows(list(result) if result.returns_rows else [], result.rowcount)

    def run_many(self, conn: Connection, rows: Sequence[Mapping[str, Any]]) -> None:
        """Run a statement that returns nothing once per row (the driver's ``executemany``):
        through SQLAlchemy each row's parameters cost ~3 µs more (the audit sealer's batches)."""
        if not rows:
            return
        form = self._form(conn, rows[0])
        if form is None or form.row is not None:
            conn.execute(self.stmt, list(rows))
            return
        _run_form(conn, form, rows[0], many=rows)


class Fused:
    """A statement that returns rows, and inserts that follow it only when it returned any.

    On PostgreSQL they run as one statement (each insert a CTE conditional on the first's rows):
    one round trip, atomic by itself, so a unit of it alone needs no ``BEGIN`` and ``COMMIT``
    (``Database.run(..., point=True)``): a lifecycle step with its audit event took four round
    trips. Elsewhere they run one after another, in the unit's transaction. Either way, when
    the first returns no row (a guard did not hold), nothing is inserted.
    """

    __slots__ = ("_first", "_fused", "_inserts", "_stmt", "_tables")

    def __init__(self, first: Executable, *then: TableClause) -> None:
        self._stmt = first
        self._first = Prebuilt(first)
        self._tables = then
        self._inserts = tuple(Prebuilt(insert(table)) for table in then)
        self._fused: dict[tuple[tuple[str, ...], ...], Prebuilt] = {}

    def run(self, conn: Connection, params: Mapping[str, Any], *rows: Mapping[str, Any]) -> Rows:
        """Run the first statement with ``params``; then insert ``rows``, one per table."""
        if len(rows) != len(self._tables):
            raise ValueError(f"expected {len(self._tables)} rows to insert, got {len(rows)}")
        if conn.dialect.name != "postgresql":
            got = self._first.run(conn, params)
            if got.first() is not None:
                for statement, row in zip(self._inserts, rows, strict=True):
                    statement.run(conn, row)
            return got
        key = (tuple(params), *(tuple(row) for row in rows))
        fused = self._fused.get(key)
        if fused is None:
            fused = self._fused[key] = Prebuilt(self._build(key[1:]))
        merged = dict(params)
        for i, row in enumerate(rows):
            merged.update({f"then{i}_{name}": value for name, value in row.items()})
        return fused.run(conn, merged)

    def _build(self, names: tuple[tuple[str, ...], ...]) -> Executable:
        first = cast(Any, self._stmt).cte("first")
        stmt = select(first)
        for i, (table, columns) in enumerate(zip(self._tables, names, strict=True)):
            values = select(
                *(bindparam(f"then{i}_{c}", type_=table.c[c].type) for c in columns)
            ).where(exists().select_from(first))
            stmt = stmt.add_cte(insert(table).from_select(list(columns), values).cte(f"then{i}"))
        return stmt


_UNSET: Any = object()
_WORD = re.compile(r"[a-z_]+")
_NATIVE = (String, Integer, Float, LargeBinary)
"""Column types both drivers return as Python wants them (str, int, float, bytes): their rows
need no result processing."""


def one_of(column: ColumnElement[Any], values: Iterable[str]) -> ColumnElement[bool]:
    """``column IN (values)`` with the values written into the SQL: an ``in_`` of values is a
    list parameter, which a :class:`Prebuilt` statement cannot run on the driver. (As
    ``= … OR`` PostgreSQL read the whole range through a bitmap, where ``IN`` walks the index
    and stops at a ``LIMIT``.) For fixed names (states) only: each must be a plain word."""
    names = list(values)
    if not all(_WORD.fullmatch(name) for name in names):
        raise ValueError("one_of takes plain words only")
    return column.in_([literal_column(f"'{name}'") for name in names])


def _compile_form(stmt: Executable, dialect: Dialect, names: tuple[str, ...]) -> _Form | None:
    compiled = cast(
        SQLCompiler, cast(ClauseElement, stmt).compile(dialect=dialect, column_keys=list(names))
    )
    if not compiled.positional or any(b.expanding for b in compiled.binds.values()):
        return None
    binds: dict[str, Callable[[Any], Any]] = {}
    for key, bind in compiled.binds.items():
        process = dialect.type_descriptor(bind.type).bind_processor(dialect)
        if process is not None:
            binds[key] = process
    columns = cast(Any, stmt).exported_columns  # selected or returned; none otherwise
    if not all(isinstance(c.type, _NATIVE) for c in columns):
        return None
    row: Callable[..., Any] | None = (
        namedtuple("Row", list(columns.keys()), rename=True) if len(columns) else None
    )
    given = compiled.params
    fixed = {
        key: given[key]
        for key, bind in compiled.binds.items()
        if not bind.required and key not in names and key in given
    }
    return _Form(compiled.string, tuple(compiled.positiontup or ()), fixed, binds, row)


def _args(form: _Form, params: Mapping[str, Any]) -> tuple[Any, ...]:
    values = {**form.fixed, **params} if form.fixed else params
    args = [values[name] for name in form.order]  # KeyError: a parameter is missing
    if form.binds:
        args = [
            form.binds[name](arg) if name in form.binds else arg
            for name, arg in zip(form.order, args, strict=True)
        ]
    return tuple(args)


def _run_form(
    conn: Connection,
    form: _Form,
    params: Mapping[str, Any],
    *,
    many: Sequence[Mapping[str, Any]] = (),
) -> Rows:
    cursor = conn.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
    try:
        try:
            if many:
                cursor.executemany(form.sql, [_args(form, row) for row in many])
            else:
                cursor.execute(form.sql, _args(form, params))
        except conn.dialect.loaded_dbapi.Error as failed:  # as SQLAlchemy's, without values
            # Whether the server went away, as SQLAlchemy's own execution tells: the kept
            # PostgreSQL connections are then dropped (``Database._postgres_unit``).
            gone = conn.dialect.is_disconnect(failed, conn.connection.dbapi_connection, cursor)
            if gone:
                conn.invalidate()
            raise DBAPIError.instance(
                form.sql,
                None,
                failed,
                conn.dialect.loaded_dbapi.Error,
                hide_parameters=True,
                connection_invalidated=gone,
            ) from failed
        if form.row is None:
            return Rows([], cursor.rowcount)
        make = form.row
        return Rows([make(*r) for r in cursor.fetchall()], cursor.rowcount)
    finally:
        cursor.close()


@dataclass(slots=True)
class _Job(Generic[T]):
    work: Callable[[Connection], T]
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[T]


def _settle(future: asyncio.Future[Any], result: Any, error: BaseException | None) -> None:
    if future.done():  # the caller was cancelled; the unit ran (or failed) all the same
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)


class _Writer:
    """SQLite's one writer: a thread that runs write units back to back (group commit).

    SQLite allows one writer at a time. Handing each unit to a pool thread left the lane idle
    between units until the busy event loop noticed one had finished and sent the next; here
    the thread takes the next unit itself. Units that queued up meanwhile share one
    transaction, each in its own savepoint, so one that fails is rolled back alone and the
    others commit. Every caller hears back only after the commit. The thread ends when idle
    and starts again on demand, so a ``Database`` that is never disposed leaves nothing behind.

    Writers of other processes on the same file (``--workers``, the CLI) take turns through
    an exclusive ``flock`` on ``<data file>-writer.lock``, taken before BEGIN: the kernel
    wakes the next one when the lock is free. Without it they met in SQLite's busy handler,
    which sleeps 1, 2, 5 ... 100 ms between tries, and two workers did no more than one.
    """

    max_batch = 64
    idle_seconds = 5.0

    def __init__(self, engine: Engine, lock_path: str | None) -> None:
        self._lock_path = lock_path
        self._engine = engine
        self._jobs: queue.SimpleQueue[_Job[Any] | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    async def run(self, work: Callable[[Connection], T]) -> T:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        self._jobs.put(_Job(work, loop, future))
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._serve, name="idcontact-sqlite-writer", daemon=True
                )
                self._thread.start()
        return await future

    def stop(self) -> threading.Thread | None:
        """Let the thread finish what was queued and end; returns it to join."""
        with self._lock:
            thread = self._thread
        if thread is not None:
            self._jobs.put(None)
        return thread

    def _serve(self) -> None:
        lock = None
        if self._lock_path is not None:
            lock = os.open(self._lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            self._loop(lock)
        finally:
            if lock is not None:
                os.close(lock)

    def _loop(self, lock: int | None) -> None:
        stopping = False
        with self._engine.connect() as conn:
            while True:
                batch, stopping = self._take(stopping)
                if batch:
                    with _exclusive(lock):
                        self._commit(conn, batch)
                    continue
                with self._lock:  # idle, or told to stop: end, unless a unit came meanwhile
                    if self._jobs.empty():
                        self._thread = None
                        return

    def _take(self, stopping: bool) -> tuple[list[_Job[Any]], bool]:
        """The units in line now, after waiting up to ``idle_seconds`` for the first (not at
        all once told to stop); and whether it was told to stop."""
        batch: list[_Job[Any]] = []
        try:
            job = self._jobs.get(timeout=0 if stopping else self.idle_seconds)
            while True:
                if job is None:
                    stopping = True
                else:
                    batch.append(job)
                if len(batch) == self.max_batch:
                    break
                job = self._jobs.get_nowait()
        except queue.Empty:
            pass
        return batch, stopping

    def _commit(self, conn: Connection, batch: list[_Job[Any]]) -> None:
        outcomes: list[tuple[Any, BaseException | None]] = []
        try:
            if len(batch) == 1:
                outcomes.append((_unit(conn, batch[0].work, "BEGIN IMMEDIATE"), None))
            else:
                outcomes = _unit(conn, partial(_savepoints, batch), "BEGIN IMMEDIATE")
        except BaseException as failed:  # BEGIN or COMMIT failed (or the single unit did)
            outcomes = [(None, failed)] * len(batch)
        for job, (result, error) in zip(batch, outcomes, strict=True):
            try:
                job.loop.call_soon_threadsafe(_settle, job.future, result, error)
            except RuntimeError:  # the caller's event loop is closed: nobody is waiting
                pass


def _savepoints(batch: list[_Job[Any]], conn: Connection) -> list[tuple[Any, BaseException | None]]:
    """Each unit of a batch in its own savepoint, on the driver: through SQLAlchemy
    (``begin_nested``) they took a third of a small unit's time, and the write lock is held
    meanwhile. A failed statement leaves the transaction as it was."""
    driver = _driver(conn)
    outcomes: list[tuple[Any, BaseException | None]] = []
    for job in batch:
        driver.execute("SAVEPOINT unit")
        try:
            outcomes.append((job.work(conn), None))
        except Exception as unit_failed:  # this unit only; the others go on
            driver.execute("ROLLBACK TO SAVEPOINT unit")
            outcomes.append((None, unit_failed))
        driver.execute("RELEASE SAVEPOINT unit")
    return outcomes


@contextlib.contextmanager
def _exclusive(lock: int | None) -> Iterator[None]:
    if lock is None:  # an in-memory database: this process alone
        yield
        return
    fcntl.flock(lock, fcntl.LOCK_EX)
    try:
        yield
    finally:
        fcntl.flock(lock, fcntl.LOCK_UN)


_READERS = 16
"""SQLite reads in worker threads at once; more would only wait for the same CPUs."""


class Database:
    """Runs units of work, each in one transaction, on SQLite or PostgreSQL.

    A unit of work is a plain function of a SQLAlchemy ``Connection``: the same code for both.
    On PostgreSQL it runs on asyncpg, in one greenlet on a kept connection. On SQLite it runs
    on the standard driver: reads in a worker thread (one thread hop per transaction;
    aiosqlite makes one per cursor call, dozens per flow), writes in the one writer thread
    (:class:`_Writer`), where their transactions begin IMMEDIATE.
    """

    def __init__(self, url: str, *, units: int = POSTGRES_UNITS) -> None:
        """``units``: PostgreSQL units at once (:data:`POSTGRES_UNITS`)."""
        if units < 1:
            raise ValueError("units must be at least 1")
        self.url = url
        self.engine = create_engine(url, units)
        self._idle = 2 * units
        self._autocommit = self.engine.execution_options(isolation_level="AUTOCOMMIT")
        self._sync: Engine | None = None
        self._writer: _Writer | None = None
        self._readers: anyio.CapacityLimiter | None = None
        # Open connections, taken and put back per unit (list.pop and append are atomic): a
        # pool checkout, with its reset on return, cost more than a small unit's statements.
        # SQLite: for reads. PostgreSQL: by whether they run in transactions (False) or not.
        self._held: list[Connection] = []
        self._held_pg: dict[bool, list[tuple[Connection, float]]] = {False: [], True: []}
        # Held PostgreSQL connections stay checked out of the pool, so units take turns here
        # and never wait inside it (where a connection put back to ``_held_pg`` wakes nobody).
        self._pg_turns = asyncio.Semaphore(units)
        if is_sqlite(url):
            self._sync = create_sync_engine(
                "sqlite:///" + _sqlite_path(url),
                hide_parameters=True,
                connect_args={"timeout": 30, "check_same_thread": False},
                # Every reader thread (below), the loop's point reads and the writer each
                # hold one (``_held``); past the pool, one is opened and closed per use.
                pool_size=_READERS + 4,
                max_overflow=8,
            )
            _sqlite_setup(self._sync)
            path = _sqlite_path(url)
            self._writer = _Writer(self._sync, f"{path}-writer.lock" if path else None)

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    async def run(
        self, work: Callable[[Connection], T], *, write: bool = False, point: bool = False
    ) -> T:
        """Run ``work`` in one transaction and return its result; roll back on error.

        ``point``: a few rows by key, in statements that need no transaction around them: a
        read, or a single write (which is atomic by itself). A read runs right here on SQLite
        instead of in a worker thread: it takes less time than the hop there and back (two
        thread wake-ups), and a WAL reader never waits for a writer. On PostgreSQL it runs
        without ``BEGIN`` and ``COMMIT``, two of a single statement's three round trips
        (~200 µs of CPU); under READ COMMITTED each statement reads its own snapshot either way.

        On PostgreSQL the whole unit, ``BEGIN`` to ``COMMIT``, runs in one greenlet on a held
        connection: through ``AsyncConnection`` (pool checkout, begin, run, commit, reset and
        check-in, each a greenlet of its own) a small unit took twice the CPU.
        """
        if self._sync is None:
            async with self._pg_turns:
                held = self._held_pg[point]
                done: tuple[T, tuple[Connection, float] | None] = await greenlet_spawn(
                    self._postgres_unit, work, point, held.pop() if held else None
                )
                if done[1] is not None:
                    held.append(done[1])
                return done[0]
        if write and self._writer is not None:
            return await self._writer.run(work)
        if point:
            return self._read_sqlite(work)
        if self._readers is None:
            self._readers = anyio.CapacityLimiter(_READERS)
        return await anyio.to_thread.run_sync(self._read_sqlite, work, limiter=self._readers)

    def _postgres_unit(
        self, work: Callable[[Connection], T], point: bool, kept: tuple[Connection, float] | None
    ) -> tuple[T, tuple[Connection, float] | None]:
        """Run ``work`` on a kept connection (or a new one); return the result and the
        connection to keep for the next unit, with when it was first taken, or ``None`` when
        enough are kept (it went back to the pool)."""
        conn, since = kept if kept is not None else (None, time.monotonic())
        if conn is not None and time.monotonic() - since > _POSTGRES_RECYCLE:
            conn.close()  # the pool recycles it (it is as old)
            conn, since = None, time.monotonic()
        if conn is None:
            conn = (self._autocommit if point else self.engine).sync_engine.connect()
        try:
            if point:
                result = work(conn)
                if conn.in_transaction():  # SQLAlchemy's own, begun by a statement of its own
                    conn.commit()
            else:
                with conn.begin():
                    result = work(conn)
        except BaseException as failed:
            if isinstance(failed, DBAPIError) and failed.connection_invalidated:
                # The server went away: the kept connections are dead too. The pool renews
                # its own, but kept ones never pass through it, and each would fail a unit.
                for held in self._held_pg.values():
                    while held:
                        held.pop()[0].invalidate()
            conn.close()  # back to the pool, which drops it if it broke; a new one is cheap
            raise
        if sum(map(len, self._held_pg.values())) < self._idle:
            return result, (conn, since)
        conn.close()
        return result, None

    def _read_sqlite(self, work: Callable[[Connection], T]) -> T:
        if self._sync is None:  # pragma: no cover - only called on SQLite
            raise RuntimeError("not a SQLite database")
        try:
            conn = self._held.pop()
        except IndexError:
            conn = self._sync.connect()
        try:
            result = _unit(conn, work, "BEGIN")
        except BaseException:
            conn.close()  # it may be broken; a new one is cheap
            raise
        self._held.append(conn)
        return result

    async def dispose(self) -> None:
        if self._writer is not None and (thread := self._writer.stop()) is not None:
            await anyio.to_thread.run_sync(thread.join)
        while self._held:
            self._held.pop().close()
        for held in self._held_pg.values():
            while held:
                await greenlet_spawn(held.pop()[0].close)
        if self._sync is not None:
            self._sync.dispose()
        await self.engine.dispose()


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
