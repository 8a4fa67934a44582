"""The audit log: who did what to which conversation, never with attribute values.

Each tenant's events form a hash chain. A sealer links every committed event, in order, with
the SHA-256 of the previous event's hash and its own content, within a second or so; a changed,
inserted or removed event then shows when the chain is verified (``idcontact audit verify``).
Appending stays lock-free; only the sealer is serialised. Residents appear only as a keyed
pseudonym (HMAC of the identifying attribute with a per-tenant secret), so "who saw my data?"
(GDPR art. 15) can be answered without keeping the BSN.
"""

from __future__ import annotations

import csv
import hashlib
import hmac
import json
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import IO, Any

from sqlalchemy import Connection, Integer, bindparam, delete, func, insert, select, text, update

from idcontact.storage.db import Prebuilt, audit_events

_COMPACT = json.JSONEncoder(separators=(",", ":"))
"""``json.dumps(..., separators=...)`` builds an encoder per call: a third of sealing's CPU."""


def _content(
    tenant: str, at: float, actor: str, action: str, conversation_id: str | None, detail: str
) -> bytes:
    return _COMPACT.encode(
        [tenant, repr(float(at)), actor, action, conversation_id, detail]
    ).encode()


def _chain(prev_hash: str | None, content: bytes) -> str:
    return hashlib.sha256((prev_hash or "").encode() + content).hexdigest()


_APPEND = Prebuilt(insert(audit_events))
"""Built once: an event's values go in as parameters."""


def audit(
    conn: Connection,
    at: float,
    actor: str,
    action: str,
    conversation_id: str | None,
    detail: Mapping[str, object] | None = None,
    *,
    tenant: str,
) -> None:
    """Append an event, in the caller's transaction; :func:`seal` links it into the chain.

    ``detail`` holds names, numbers and pseudonyms, never attribute values. Appending takes no
    lock, so busy conversations never queue behind the audit log.
    """
    append(conn, event_row(at, actor, action, conversation_id, detail, tenant=tenant))


def append(conn: Connection, row: Mapping[str, object]) -> None:
    """Append an event's row (:func:`event_row`), in the caller's transaction."""
    _APPEND.run(conn, row)


def event_row(
    at: float,
    actor: str,
    action: str,
    conversation_id: str | None,
    detail: Mapping[str, object] | None = None,
    *,
    tenant: str,
) -> dict[str, object]:
    """An event's row, for :func:`audit` or to insert with the change it records (``Fused``)."""
    return {
        "tenant": tenant,
        "at": at,
        "actor": actor,
        "action": action,
        "conversation_id": conversation_id,
        "detail": json.dumps(dict(detail or {}), separators=(",", ":"), sort_keys=True),
    }


SEAL_BATCH = 200
"""Events linked per sealing unit. The sealer holds its worker's event loop (and on SQLite the
writer) while it links a batch: at 400 flows/s a second's ~1,600 events in one unit held it
for ~20 ms every second, and that was the p99 of every request it delayed. A backlog is sealed
batch after batch, with requests in between."""

_HEAD = Prebuilt(
    select(audit_events.c.seq, audit_events.c.hash)
    .where(audit_events.c.tenant == bindparam("tenant"), audit_events.c.seq.is_not(None))
    .order_by(audit_events.c.seq.desc())
    .limit(1)
)
_UNSEALED = Prebuilt(
    select(
        audit_events.c.id,
        audit_events.c.at,
        audit_events.c.actor,
        audit_events.c.action,
        audit_events.c.conversation_id,
        audit_events.c.detail,
    )
    .where(audit_events.c.tenant == bindparam("tenant"), audit_events.c.seq.is_(None))
    .order_by(audit_events.c.id)
    .limit(bindparam("limit", type_=Integer))
)
_LINK = Prebuilt(
    update(audit_events)
    .where(audit_events.c.id == bindparam("_id"))
    .values(seq=bindparam("_seq"), prev_hash=bindparam("_prev"), hash=bindparam("_hash"))
)


def seal(conn: Connection, tenant: str, limit: int = SEAL_BATCH) -> int:
    """Link up to ``limit`` committed, unsealed events into the tenant's chain, in id order;
    returns how many (``limit``: there may be more).

    One sealer at a time per tenant (a PostgreSQL advisory lock; SQLite has one writer). An
    event that commits late is simply sealed in a later pass: the chain order is ``seq``.
    """
    if conn.dialect.name == "postgresql":
        got = conn.execute(
            text("SELECT pg_try_advisory_xact_lock(hashtext(:k))"), {"k": "audit:" + tenant}
        ).scalar()
        if not got:
            return 0
    head = _HEAD.run(conn, {"tenant": tenant}).first()
    seq, prev = (int(head.seq), head.hash) if head else _anchor(conn, tenant)
    rows = _UNSEALED.run(conn, {"tenant": tenant, "limit": limit}).all()
    links = []
    for r in rows:
        seq += 1
        digest = _chain(
            prev, _content(tenant, r.at, r.actor, r.action, r.conversation_id, r.detail)
        )
        links.append({"_id": r.id, "_seq": seq, "_prev": prev, "_hash": digest})
        prev = digest
    _LINK.run_many(conn, links)  # one batched statement, however many events
    return len(rows)


@dataclass(frozen=True)
class Event:
    id: int
    at: float
    actor: str
    action: str
    conversation_id: str | None
    detail: str


def write_csv(rows: Iterable[Event], out: IO[str]) -> None:
    """The export for admins and auditors: one row per event, times in UTC, no values."""
    writer = csv.writer(out)
    writer.writerow(["id", "time_utc", "actor", "action", "conversation_id", "detail"])
    for e in rows:
        at = datetime.fromtimestamp(e.at, UTC).isoformat(timespec="seconds")
        writer.writerow([e.id, at, e.actor, e.action, e.conversation_id or "", e.detail])


def events(conn: Connection, tenant: str) -> Iterator[Event]:
    rows = conn.execute(
        select(audit_events).where(audit_events.c.tenant == tenant).order_by(audit_events.c.id)
    )
    for r in rows:
        yield Event(r.id, r.at, r.actor, r.action, r.conversation_id, r.detail)


@dataclass(frozen=True)
class Verdict:
    checked: int
    broken_at: int | None
    """Id of the first sealed event that does not fit the chain, or ``None``."""
    unsealed: int
    """Events not linked yet (normal for a second or so; a sealer that is down otherwise)."""


def verify(conn: Connection, tenant: str) -> Verdict:
    """Walk the tenant's chain in ``seq`` order and check every link."""
    rows = conn.execute(
        select(audit_events)
        .where(audit_events.c.tenant == tenant, audit_events.c.seq.is_not(None))
        .order_by(audit_events.c.seq)
    ).all()
    unsealed = conn.execute(
        select(func.count())
        .select_from(audit_events)
        .where(audit_events.c.tenant == tenant, audit_events.c.seq.is_(None))
    ).scalar_one()
    through, prev = _anchor(conn, tenant)
    expected_seq = through + 1
    for count, r in enumerate(rows):
        digest = _chain(
            prev, _content(tenant, r.at, r.actor, r.action, r.conversation_id, r.detail)
        )
        if r.seq != expected_seq or r.prev_hash != prev or r.hash != digest:
            return Verdict(count, int(r.id), int(unsealed))
        prev = r.hash
        expected_seq += 1
    return Verdict(len(rows), None, int(unsealed))


RETIRED = "audit.retired"


def _anchor(conn: Connection, tenant: str) -> tuple[int, str | None]:
    """Where the chain starts: at the beginning, or where retention last cut it.

    The newest ``audit.retired`` event records the cut, so deleting more than retention did
    shows as a break.
    """
    cut = conn.execute(
        select(audit_events.c.detail)
        .where(audit_events.c.tenant == tenant, audit_events.c.action == RETIRED)
        .order_by(audit_events.c.id.desc())
        .limit(1)
    ).scalar_one_or_none()
    if not cut:
        return 0, None
    anchor: dict[str, Any] = json.loads(cut)
    return int(anchor["through_seq"]), anchor["last_hash"]


def retire(conn: Connection, tenant: str, before: float, at: float) -> int:
    """Delete sealed events older than ``before`` (retention); returns how many.

    An ``audit.retired`` event, itself chained, keeps the sequence number and hash of the last
    deleted event: the rest of the chain stays verifiable from there.
    """
    last = conn.execute(
        select(audit_events.c.seq, audit_events.c.hash)
        .where(
            audit_events.c.tenant == tenant,
            audit_events.c.seq.is_not(None),
            audit_events.c.at < before,
        )
        .order_by(audit_events.c.seq.desc())
        .limit(1)
    ).first()
    if last is None:
        return 0
    gone = conn.execute(
        delete(audit_events).where(
            audit_events.c.tenant == tenant,
            audit_events.c.seq.is_not(None),
            audit_events.c.seq <= last.seq,
        )
    ).rowcount
    audit(
        conn,
        at,
        "retention",
        RETIRED,
        None,
        {"through_seq": int(last.seq), "last_hash": last.hash, "count": gone},
        tenant=tenant,
    )
    return int(gone)


def pseudonym(secret: bytes, value: str) -> str:
    """The resident's keyed pseudonym: stable per tenant, useless without the secret."""
    return hmac.new(secret, b"subject:" + value.encode(), hashlib.sha256).hexdigest()[:32]
