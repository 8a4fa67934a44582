"""The audit log: who did what to which conversation, never with attribute values.

Each tenant's events form a hash chain: every event stores the SHA-256 of the previous event's
hash and its own content, so a changed, inserted or removed event shows up when the chain is
verified (``idcontact audit verify``). Residents appear only as a keyed pseudonym (HMAC of the
identifying attribute with a per-tenant secret), so "who saw my data?" (GDPR art. 15) can be
answered without keeping the BSN.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

from sqlalchemy import Connection, insert, select, text

from idcontact.storage.db import audit_events


def _content(
    tenant: str, at: float, actor: str, action: str, conversation_id: str | None, detail: str
) -> bytes:
    return json.dumps(
        [tenant, repr(float(at)), actor, action, conversation_id, detail], separators=(",", ":")
    ).encode()


def _chain(prev_hash: str | None, content: bytes) -> str:
    return hashlib.sha256((prev_hash or "").encode() + content).hexdigest()


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
    """Append an event to the tenant's chain, in the caller's transaction.

    ``detail`` holds names, numbers and pseudonyms, never attribute values.
    """
    if conn.dialect.name == "postgresql":
        # One writer per chain at a time; SQLite has one writer anyway.
        conn.execute(text("SELECT pg_advisory_xact_lock(hashtext(:k))"), {"k": "audit:" + tenant})
    prev = conn.execute(
        select(audit_events.c.hash)
        .where(audit_events.c.tenant == tenant)
        .order_by(audit_events.c.id.desc())
        .limit(1)
    ).scalar()
    detail_json = json.dumps(dict(detail or {}), separators=(",", ":"), sort_keys=True)
    conn.execute(
        insert(audit_events).values(
            tenant=tenant,
            at=at,
            actor=actor,
            action=action,
            conversation_id=conversation_id,
            detail=detail_json,
            prev_hash=prev,
            hash=_chain(prev, _content(tenant, at, actor, action, conversation_id, detail_json)),
        )
    )


@dataclass(frozen=True)
class Event:
    id: int
    at: float
    actor: str
    action: str
    conversation_id: str | None
    detail: str


def events(conn: Connection, tenant: str) -> Iterator[Event]:
    rows = conn.execute(
        select(audit_events).where(audit_events.c.tenant == tenant).order_by(audit_events.c.id)
    )
    for r in rows:
        yield Event(r.id, r.at, r.actor, r.action, r.conversation_id, r.detail)


def verify(conn: Connection, tenant: str) -> tuple[int, int | None]:
    """Walk the chain: (events checked, id of the first event that does not fit or ``None``)."""
    rows = conn.execute(
        select(audit_events).where(audit_events.c.tenant == tenant).order_by(audit_events.c.id)
    ).all()
    prev: str | None = rows[0].prev_hash if rows else None  # older events may be retired
    for count, r in enumerate(rows):
        expected = _chain(
            prev, _content(tenant, r.at, r.actor, r.action, r.conversation_id, r.detail)
        )
        if r.prev_hash != prev or r.hash != expected:
            return count, int(r.id)
        prev = r.hash
    return len(rows), None


def pseudonym(secret: bytes, value: str) -> str:
    """The resident's keyed pseudonym: stable per tenant, useless without the secret."""
    return hmac.new(secret, b"subject:" + value.encode(), hashlib.sha256).hexdigest()[:32]
