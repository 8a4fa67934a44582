"""Conversations on the comm side: creation, receipt of attributes, reading, ending, purging.

Every channel uses this one service. A token is verified once, here, on receipt; from then on
its attributes live only in the vault and are never re-checked against the token's 5-minute
``exp``. Receipt is all-or-nothing: the replay mark, the slot claim and the vault row are one
transaction, so a refused or failed delivery changes nothing.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import hmac
import json
import logging
import math
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from sqlalchemy import (
    Connection,
    TableClause,
    and_,
    bindparam,
    delete,
    func,
    insert,
    or_,
    select,
    update,
)
from sqlalchemy.exc import IntegrityError

from idcontact.domain.lifecycle import (
    HOLDS_ATTRIBUTES,
    LIVE,
    InvalidTransitionError,
    State,
    change,
    sources,
)
from idcontact.domain.queueing import HandleTime
from idcontact.errors import NotFoundError, SlotUsedError, TokenReplayError
from idcontact.events import Bus, Event
from idcontact.logs import bind_conversation
from idcontact.settings import Purpose, Tenant
from idcontact.storage.audit import append, audit, event_row, pseudonym
from idcontact.storage.db import (
    Database,
    Fused,
    Prebuilt,
    audit_events,
    conversations,
    one_of,
    queue_stats,
    used_tokens,
)
from idcontact.storage.vault import Sealed, Vault
from idcontact.tokens import ReceivedToken, TokenReader

Clock = Callable[[], float]
StepObserver = Callable[[str, str, str, State, State | None], None]
"""Told each lifecycle step: tenant, purpose, comm method, new state, previous state (``None``
for a new conversation). The metrics (ops.py); tags and states only."""
log = logging.getLogger(__name__)

# Statements of every identification, built once. Building one per call (each value coerced, the
# cache key computed from scratch) cost SQLAlchemy several times what running it costs.
#
# A conversation is found by its unique key alone, and its tenant checked on the row
# (:meth:`Conversations._find`). With ``tenant = $1`` in the statement too, a generic plan made
# while the table was empty (a fresh database's first minute) took the ``(tenant, state)`` index
# and filtered every row of the tenant: 0.7-1 ms a lookup at 20,000 conversations instead of
# 0.04, until the table was next analysed (docs/storage.md).
_BY_ID = Prebuilt(select(conversations).where(conversations.c.id == bindparam("key")))


@functools.cache
def _step(columns: tuple[str, ...]) -> Fused:
    """A lifecycle step's guarded ``UPDATE … RETURNING`` that also sets ``columns``, with its
    audit event: built once per set of columns (building one per call cost more than running
    it)."""
    return Fused(
        update(conversations)
        .where(
            conversations.c.tenant == bindparam("b_tenant"),
            conversations.c.id == bindparam("b_cid"),
            conversations.c.state == bindparam("b_before"),
        )
        .values(
            state=bindparam("b_after"),
            last_activity=bindparam("b_now"),
            **{column: bindparam(f"set_{column}") for column in columns},
        )
        .returning(*conversations.c),
        audit_events,
    )


@functools.cache
def _creating(columns: tuple[str, ...]) -> Fused:
    """A new conversation, given these columns, with its audit event; returns it as stored."""
    return Fused(
        insert(conversations)
        .values({column: bindparam(column) for column in columns})
        .returning(*conversations.c),
        audit_events,
    )


_BY_SLOT = Prebuilt(select(conversations).where(conversations.c.slot_hash == bindparam("key")))


@functools.cache
def _accepting(state: State, stored: tuple[TableClause, ...]) -> Fused:
    """Claim a conversation's one delivery: to ``state``, from a state that may change to it,
    returning the row (what the event says, without another read); with the rows of the vault
    (``Vault.rows``: its entry and data key) in ``stored`` and the audit event."""
    return Fused(
        update(conversations)
        .where(
            conversations.c.id == bindparam("cid"),
            conversations.c.delivered_at.is_(None),
            one_of(conversations.c.state, sources(state)),
        )
        .values(
            state=state,
            delivered_at=bindparam("now"),
            last_activity=bindparam("now"),
            has_session=bindparam("has_session"),
        )
        .returning(*conversations.c),
        *stored,
        audit_events,
    )


PURGE_BATCH = 200
"""Conversations purged per transaction by the sweeper."""
CALLBACK = "callback"
"""The vault entry (beside chat messages) that holds a callback number."""
ASKABLE: tuple[State, ...] = ("waiting", "offered", "connected")
"""States in which an agent may ask the resident to identify (and the answer may arrive)."""


def new_id(nbytes: int = 16) -> str:
    """A random url-safe identifier (128 bits by default)."""
    return secrets.token_urlsafe(nbytes)


def slot_hash(slot: str) -> str:
    return hashlib.sha256(slot.encode()).hexdigest()


@dataclass(frozen=True)
class Conversation:
    id: str
    purpose: str
    comm_method: str
    state: State
    created_at: float
    delivered_at: float | None
    queue: str | None = None
    channel: str | None = None
    waiting_since: float | None = None
    agent_id: str | None = None
    offer_expires: float | None = None
    connected_at: float | None = None
    wrap_up_until: float | None = None
    last_activity: float = 0.0
    linked_at: float | None = None
    link_detail: dict[str, object] | None = None
    """How a phone call linked (phone/codes.py): ``via``, ``shown``, ``caller``, ``seconds``."""
    hijack_at: float | None = None
    """When another call presented this conversation's code again: a possible hijack."""
    call_state: str | None = None
    """The phone call: ``waiting``, ``ringing`` (the agent's phone), ``connected``, ``ended``."""
    identify_purpose: str | None = None
    """The purpose an agent asked the resident to identify for during the conversation."""
    acting_for: bool = False
    """The agent noted that the resident acts for someone else: the data proves the caller."""
    transfer_to: str | None = None
    """A warm transfer on offer to this agent (until ``transfer_expires``)."""
    transfer_expires: float | None = None
    callback_at: float | None = None
    """When the resident asked to be called back instead of waiting."""
    has_session: bool = False
    """The attributes came with a ``session_url``: report the resident's activity there."""
    identify_state: str | None = None
    """How far that is: ``asked``, ``started``, ``done``, ``failed``, ``ineligible``,
    ``declined``."""

    @property
    def identified(self) -> bool:
        return self.delivered_at is not None

    def summary(self) -> dict[str, object]:
        """What consoles are told: ids, states and times, never attributes."""
        return {
            "id": self.id,
            "purpose": self.purpose,
            "queue": self.queue,
            "channel": self.channel,
            "state": self.state,
            "identified": self.identified,
            "created_at": self.created_at,
            "waiting_since": self.waiting_since,
            "agent_id": self.agent_id,
            "offer_expires": self.offer_expires,
            "connected_at": self.connected_at,
            "wrap_up_until": self.wrap_up_until,
            "call_state": self.call_state,
            "hijack": self.hijack_at is not None,
            "identify": self.identify_state,
            "transfer_to": self.transfer_to,
            "transfer_expires": self.transfer_expires,
            "callback": self.callback_at is not None,
        }


class Conversations:
    """The conversation store of one tenant: every query is scoped to it. Every method is one
    unit of work on the database (plus the key store for data keys), so it behaves the same on
    SQLite and PostgreSQL."""

    def __init__(
        self,
        db: Database,
        vault: Vault,
        reader: TokenReader,
        tenant: Tenant,
        clock: Clock = time.time,
        *,
        pseudonym_secret: bytes = b"",
        bus: Bus | None = None,
        observe: StepObserver | None = None,
    ) -> None:
        self._observe = observe
        self._config = tenant
        self._tenant = tenant.slug
        self._pseudonym_secret = pseudonym_secret
        self._db = db
        self._vault = vault
        self._reader = reader
        self._clock = clock
        self._bus = bus

    @property
    def tenant(self) -> Tenant:
        return self._config

    @property
    def db(self) -> Database:
        return self._db

    @property
    def vault(self) -> Vault:
        return self._vault

    def _purpose(self, tag: str) -> Purpose:
        purpose = self._config.purpose(tag)
        if purpose is None:  # the purpose was removed from the configuration
            raise NotFoundError("This conversation's purpose is no longer offered")
        return purpose

    def _mine(self, conversation_id: str) -> Any:
        """The condition that selects one conversation of this tenant."""
        return and_(conversations.c.id == conversation_id, conversations.c.tenant == self._tenant)

    def _row(self, purpose: Purpose, comm_method: str, slot: str | None) -> _NewRow:
        now = self._clock()
        method = self._config.comm_method(comm_method)
        return _NewRow(
            values=dict(
                id=new_id(),
                tenant=self._tenant,
                purpose=purpose.tag,
                comm_method=comm_method,
                state="created",
                slot_hash=slot_hash(slot) if slot else None,
                created_at=now,
                last_activity=now,
                delivered_at=None,
                purge_at=now + purpose.retention_minutes * 60,
                idle_seconds=purpose.idle_minutes * 60,
                queue=self._config.queue_of(purpose).tag,
                channel=method.channel if method is not None else "chat",
            ),
        )

    async def create(
        self,
        purpose: Purpose,
        comm_method: str,
        *,
        with_slot: bool,
        unidentified: bool = False,
        details: dict[str, Any] | None = None,
    ) -> tuple[str, str | None]:
        """Create a conversation; return its id and, if asked, a fresh attr_url slot secret.

        An unidentified conversation goes straight to ``waiting``: no attributes will come.
        ``details``: channel columns written with it (a call's reference and line state).
        """
        slot = secrets.token_urlsafe(32) if with_slot and not unidentified else None
        row = self._row(purpose, comm_method, slot)
        bind_conversation(row.id)
        row.values.update(details or {})
        if unidentified:
            row.values["state"] = change("created", "waiting")
            row.values["waiting_since"] = row.created_at
        stored = await self._db.run(row.insert, write=True, point=True)
        self._stepped(purpose.tag, comm_method, row.values["state"], None)
        await self.publish(_conversation(stored))
        return row.id, slot

    async def create_with_token(self, purpose: Purpose, comm_method: str, token: str) -> str:
        """Create a conversation whose attributes arrive with it (``auth_result`` at start).

        The token is verified before anything is written; creation and receipt are one
        transaction, so a bad or replayed token changes nothing.
        """
        received = self._reader.read(token)
        row = self._row(purpose, comm_method, None)
        self._stepped(purpose.tag, comm_method, "created", None)
        await self._accept(
            row.id, row.purge_at, received, purpose, method=comm_method, before=row.insert
        )
        return row.id

    async def _find(self, by: Prebuilt, key: str) -> Any:
        """This tenant's conversation ``by`` id or slot (``_BY_ID``, ``_BY_SLOT``)."""
        return self._own(
            await self._db.run(lambda conn: by.run(conn, {"key": key}).first(), point=True)
        )

    def _own(self, row: Any) -> Any:
        """``row`` if it is this tenant's, else ``None`` (lookups go by a unique key alone)."""
        return row if row is not None and row.tenant == self._tenant else None

    async def get(self, conversation_id: str) -> Conversation:
        bind_conversation(conversation_id)
        row = await self._find(_BY_ID, conversation_id)
        if row is None:
            raise NotFoundError("No such conversation")
        return _conversation(row)

    async def deliver_to_slot(self, slot: str, token: str | ReceivedToken) -> State:
        """Out-of-band receipt at an attr_url slot: verify ``token`` and store, exactly once.

        A ``ReceivedToken`` is a result an auth plugin of this process hands over directly
        (:class:`LocalSlots`): there is no token to verify."""
        row = await self._find(_BY_SLOT, slot_hash(slot))
        if row is None:
            raise NotFoundError("No such attribute slot")
        if row.identify_state == "started":
            received = self._read(token)
            await self._accept_during(row, slot, received)
            state: State = row.state
            return state
        if row.delivered_at is not None:
            raise SlotUsedError()
        received = self._read(token)
        return await self._accept(
            row.id, row.purge_at, received, self._purpose(row.purpose), method=row.comm_method
        )

    def _read(self, token: str | ReceivedToken) -> ReceivedToken:
        return token if isinstance(token, ReceivedToken) else self._reader.read(token)

    async def deliver(self, conversation_id: str, token: str) -> State:
        """In-band receipt (``?result=``) for a known conversation, exactly once."""
        row = await self._find(_BY_ID, conversation_id)
        if row is None:
            raise NotFoundError("No such conversation")
        received = self._reader.read(token)
        return await self._accept(
            row.id, row.purge_at, received, self._purpose(row.purpose), method=row.comm_method
        )

    def _disclosed(
        self, received: ReceivedToken, purpose: Purpose, now: float
    ) -> tuple[
        Literal["done", "failed", "ineligible"], dict[str, object] | None, dict[str, object]
    ]:
        """What a verified token means for ``purpose``: the outcome, what the vault keeps (only
        the purpose's attributes; anything extra is dropped here) and the audit's subject."""
        result = received.result
        if result.status != "success":
            return "failed", None, {}
        attrs = {k: v for k, v in (result.attributes or {}).items() if k in purpose.attributes}
        if not all(attrs.get(rule.attribute) in rule.one_of for rule in purpose.eligibility):
            return "ineligible", None, {}
        payload: dict[str, object] = {
            "attributes": attrs,
            "session_url": result.session_url,
            "provenance": dict(result.provenance or {}),
            "received_at": now,
            "issued_at": received.issued_at,
            "kid": received.kid,
        }
        # The resident in the audit log: a keyed pseudonym of the identifying attribute only.
        identifying = (result.attributes or {}).get(purpose.subject_attribute or "")
        if identifying and self._pseudonym_secret:
            return "done", payload, {"subject": pseudonym(self._pseudonym_secret, identifying)}
        return "done", payload, {}

    async def _accept(
        self,
        conversation_id: str,
        purge_at: float,
        received: ReceivedToken,
        purpose: Purpose,
        *,
        method: str,
        before: Callable[[Connection], None] | None = None,
    ) -> State:
        bind_conversation(conversation_id)
        now = self._clock()
        outcome, payload, subject = self._disclosed(received, purpose, now)
        state: State = "authenticated" if outcome == "done" else outcome
        sealed: Sealed | None = None
        if payload is not None:
            # The data key goes to the key store before the transaction; removed on failure.
            sealed = await self._vault.seal(
                conversation_id, payload, self.key_seconds(purge_at - now)
            )

        stored = self._vault.rows(sealed) if sealed is not None else []
        logged = event_row(
            now,
            "system",
            f"conversation.{state}",
            conversation_id,
            {"attribute_names": sorted(purpose.attributes), **subject},
            tenant=self._tenant,
        )
        claim = _accepting(state, tuple(table for table, _ in stored))

        def work(conn: Connection) -> Any:
            if before is not None:
                before(conn)
            _mark_used(conn, received)
            claimed = claim.run(
                conn,
                {
                    "cid": conversation_id,
                    "now": now,
                    "has_session": 1 if payload and payload.get("session_url") else None,
                },
                *(row for _, row in stored),
                logged,
            ).first()
            if claimed is None:
                raise SlotUsedError()
            return claimed

        try:
            # The claim, the vault entry (and its data key) and the audit event are one
            # statement: alone (no row to create first, no token to mark used) it needs no
            # transaction around it.
            alone = before is None and received.replay_key is None
            row = await self._db.run(work, write=True, point=alone)
        except BaseException:
            if sealed is not None:
                await self._vault.discard(sealed)
            raise
        self._stepped(purpose.tag, method, state, "created")
        await self.publish(_conversation(row))
        return state

    def _stepped(self, purpose: str, method: str, state: State, previous: State | None) -> None:
        if self._observe is not None:
            self._observe(self._tenant, purpose, method, state, previous)

    async def read_again(self, token: str) -> ReceivedToken:
        """Verify a later disclosure by a conversation's resident (identifying again, e.g. to
        read a contact form's answer) and record it against replay; its attributes are stored
        nowhere: the caller compares them and keeps only the verdict."""
        received = self._reader.read(token)
        await self._db.run(lambda conn: _mark_used(conn, received), write=True)
        return received

    # -- identification during a conversation (auth during comm, protocol §4.3) --------------

    async def ask_identification(
        self,
        conversation_id: str,
        purpose: Purpose,
        *,
        actor: str,
        values: dict[str, Any] | None = None,
    ) -> Conversation:
        """An agent asks the resident to identify for ``purpose`` (again, after a pause: the
        new attributes replace the old). The resident's page shows the question. ``values``:
        channel columns written with it (a phone call's code)."""
        now = self._clock()
        conversation = await self.annotate_checked(
            conversation_id,
            {
                "identify_purpose": purpose.tag,
                "identify_state": "asked",
                "identify_at": now,
                "slot_hash": None,
                **(values or {}),
            },
            where=conversations.c.state.in_(ASKABLE),
            event=("conversation.identify_asked", actor, {"purpose": purpose.tag}),
        )
        if conversation is None:
            raise InvalidTransitionError("Identification can only be asked during a conversation")
        return conversation

    async def identification_slot(self, conversation_id: str) -> tuple[str, str]:
        """The resident starts identifying: a fresh single-use attr_url slot for the asked
        purpose (an earlier, unused slot stops working). Returns the purpose tag and the slot."""
        slot = secrets.token_urlsafe(32)
        conversation = await self.annotate_checked(
            conversation_id,
            {"identify_state": "started", "slot_hash": slot_hash(slot)},
            where=and_(
                conversations.c.state.in_(ASKABLE),
                conversations.c.identify_state.in_(("asked", "started", "failed", "ineligible")),
            ),
        )
        if conversation is None or conversation.identify_purpose is None:
            raise InvalidTransitionError("No identification is asked in this conversation now")
        return conversation.identify_purpose, slot

    async def decline_identification(self, conversation_id: str, *, actor: str) -> None:
        """The resident would rather not identify: the agent sees that; nothing else changes."""
        conversation = await self.annotate_checked(
            conversation_id,
            {"identify_state": "declined", "slot_hash": None},
            where=conversations.c.identify_state.in_(("asked", "started", "failed", "ineligible")),
            event=("conversation.identify_declined", actor, None),
        )
        if conversation is None:
            raise InvalidTransitionError("No identification is asked in this conversation now")

    async def log_out(self, conversation_id: str, *, actor: str) -> None:
        """The resident logged out: their attributes are destroyed now; the conversation (and
        its chat) goes on unidentified, and the agent may ask again."""
        conversation = await self.get(conversation_id)
        if conversation.state not in ASKABLE or not conversation.identified:
            raise InvalidTransitionError("There is no identification to log out of")
        await self.drop_attributes(conversation_id, "logged_out", actor=actor)

    async def drop_attributes(
        self,
        conversation_id: str,
        why: str,
        *,
        actor: str,
        values: dict[str, Any] | None = None,
    ) -> Conversation | None:
        """Destroy the attributes now, keep the conversation (unidentified from here on), and
        say why in ``identify_state`` (``logged_out``, ``overflowed``); audited as
        ``conversation.<why>``."""
        await self._vault.destroy_attributes(conversation_id)
        return await self.annotate_checked(
            conversation_id,
            {
                "delivered_at": None,
                "has_session": None,
                "identify_state": why,
                "slot_hash": None,
                **(values or {}),
            },
            event=(f"conversation.{why}", actor, None),
        )

    async def _accept_during(self, row: Any, slot: str, received: ReceivedToken) -> None:
        """Attributes from an identification during the conversation: its state stays; the
        attributes (new or replacing earlier ones) are those of the asked purpose, kept no
        longer than that purpose's retention. A refused token changes nothing."""
        now = self._clock()
        purpose = self._purpose(row.identify_purpose)
        outcome, payload, subject = self._disclosed(received, purpose, now)
        purge_at = min(float(row.purge_at), now + purpose.retention_minutes * 60)
        sealed: Sealed | None = None
        fresh = False
        if payload is not None:
            sealed, fresh = await self._vault.reseal(
                row.id, payload, self.key_seconds(purge_at - now)
            )
        values: dict[str, Any] = {
            "identify_state": outcome,
            "identify_at": now,
            "slot_hash": None,
            "last_activity": now,
        }
        if sealed is not None and payload is not None:
            values.update(
                delivered_at=now,
                purpose=purpose.tag,
                purge_at=purge_at,
                has_session=1 if payload.get("session_url") else None,
            )

        def work(conn: Connection) -> None:
            _mark_used(conn, received)
            claimed = conn.execute(
                update(conversations)
                .where(
                    self._mine(row.id),
                    conversations.c.slot_hash == slot_hash(slot),
                    conversations.c.identify_state == "started",
                    conversations.c.state.in_(ASKABLE),
                )
                .values(**values)
            )
            if claimed.rowcount != 1:
                raise SlotUsedError()
            if sealed is not None:
                self._vault.replace(conn, sealed)
            audit(
                conn,
                now,
                "system",
                f"conversation.identify_{outcome}",
                row.id,
                {"purpose": purpose.tag, "attribute_names": sorted(purpose.attributes), **subject},
                tenant=self._tenant,
            )

        try:
            await self._db.run(work, write=True)
        except BaseException:
            if fresh and sealed is not None:
                await self._vault.discard(sealed)
            raise
        await self._changed(row.id)

    async def annotate_checked(
        self,
        conversation_id: str,
        values: dict[str, Any],
        *,
        where: Any = None,
        event: tuple[str, str, dict[str, object] | None] | None = None,
    ) -> Conversation | None:
        """:meth:`annotate` with an audit event in the same unit of work; the conversation as
        changed, or ``None`` when ``where`` no longer holds (then nothing changed)."""
        now = self._clock()

        def work(conn: Connection) -> Any:
            guard = [self._mine(conversation_id)] + ([where] if where is not None else [])
            changed = conn.execute(update(conversations).where(*guard).values(**values))
            if changed.rowcount != 1:
                return None
            if event is not None:
                kind, actor, detail = event
                audit(conn, now, actor, kind, conversation_id, detail, tenant=self._tenant)
            return conn.execute(select(conversations).where(self._mine(conversation_id))).one()

        row = await self._db.run(work, write=True)
        if row is None:
            return None
        conversation = _conversation(row)
        await self.publish(conversation)
        return conversation

    async def view(
        self, conversation_id: str, *, actor: str
    ) -> tuple[Conversation, dict[str, object] | None]:
        """The conversation and, while it has them, its attributes; one audited transaction."""
        now = self._clock()

        def work(conn: Connection) -> tuple[Any, Sealed | None]:
            row = conn.execute(select(conversations).where(self._mine(conversation_id))).first()
            if row is None or row.state not in HOLDS_ATTRIBUTES:
                return row, None
            conn.execute(
                update(conversations).where(self._mine(conversation_id)).values(last_activity=now)
            )
            sealed = self._vault.fetch(
                conn, conversation_id, actor=actor, at=now, tenant=self._tenant
            )
            return row, sealed

        row, sealed = await self._db.run(work, write=True)
        if row is None:
            raise NotFoundError("No such conversation")
        return _conversation(row), (await self._vault.open(sealed) if sealed else None)

    async def attributes(self, conversation_id: str, *, actor: str) -> dict[str, object] | None:
        """The stored attributes and their provenance (audited); ``None`` when gone."""
        return (await self.view(conversation_id, actor=actor))[1]

    async def end(self, conversation_id: str, *, actor: str, wrap_up: bool = False) -> State:
        """End the conversation (409 when it has ended already).

        With ``wrap_up``, a connected conversation first goes to wrap-up: the agent keeps the
        data for the tenant's ``wrap_up_seconds``, then the sweeper (or the agent) destroys it.
        Otherwise the attributes are destroyed now.
        """
        current = await self.get(conversation_id)  # this tenant's, or NotFoundError
        if wrap_up and current.state == "wrap_up":
            return current.state  # already ended, from the resident's side
        if wrap_up and current.state == "connected" and self._config.wrap_up_seconds > 0:
            until = self._clock() + self._config.wrap_up_seconds
            await self.transition(
                conversation_id, "wrap_up", actor=actor, values={"wrap_up_until": until}
            )
            return "wrap_up"
        change(current.state, "ended")
        keep = await self._kept_for_hand_over(conversation_id)
        if keep is None:
            await self._vault.destroy(conversation_id)
        await self.transition(conversation_id, "ended", actor=actor, values=keep)
        return "ended"

    async def _kept_for_hand_over(self, conversation_id: str) -> dict[str, Any] | None:
        """At the end: whether the messages (and attributes) wait for the tenant's hand-over
        (``[transcripts] keep = "hand_over"``) instead of being destroyed now; the columns that
        say so, until when."""
        policy = self._config.transcripts
        if policy.keep != "hand_over" or not await self._vault.has_messages(conversation_id):
            return None
        return {"hand_over_until": self._clock() + policy.retry_hours * 3600}

    def key_seconds(self, seconds: float) -> int:
        """How long a data key must live for data kept ``seconds``: longer by the hand-over
        window where transcripts are handed over, so a waiting hand-over never finds its keys
        expired (the deletion itself is explicit, not by expiry)."""
        policy = self._config.transcripts
        extra = policy.retry_hours * 3600 if policy.keep == "hand_over" else 0
        return int(max(60, seconds) + extra)

    async def request_callback(self, conversation_id: str, number: str, *, actor: str) -> None:
        """The waiting resident would rather be called back: the number is sealed in the
        conversation's vault (destroyed with it), and the conversation keeps its place in line
        without the resident, until its retention at the latest (never idle)."""
        conversation = await self.get(conversation_id)
        if conversation.state != "waiting" or conversation.callback_at is not None:
            raise InvalidTransitionError("A callback can be asked only once, while waiting")
        row = await self._find(_BY_ID, conversation_id)
        now = self._clock()
        if not await self._vault.has_chat(conversation_id):
            await self._vault.open_chat(conversation_id, self.key_seconds(row.purge_at - now))
        await self._vault.append_chat(conversation_id, CALLBACK, number)
        done = await self.annotate_checked(
            conversation_id,
            {"callback_at": now, "idle_seconds": int(max(row.idle_seconds, row.purge_at - now))},
            where=and_(conversations.c.state == "waiting", conversations.c.callback_at.is_(None)),
            event=("conversation.callback_requested", actor, None),
        )
        if done is None:
            raise InvalidTransitionError("A callback can be asked only once, while waiting")

    async def callback_number(self, conversation_id: str, *, actor: str) -> str | None:
        """The number to call back (the read is audited), while the conversation holds it."""
        found = await self._vault.chat_since(conversation_id, senders=(CALLBACK,))
        if not found:
            return None
        now = self._clock()

        def log(conn: Connection) -> None:
            audit(conn, now, actor, "callback.view", conversation_id, tenant=self._tenant)

        await self._db.run(log, write=True)
        return found[-1].text

    async def open_chat(self, conversation_id: str, purpose: Purpose) -> None:
        """The conversation's chat key, for as long as the conversation may last."""
        await self._vault.open_chat(
            conversation_id, self.key_seconds(purpose.retention_minutes * 60)
        )

    @property
    def clock(self) -> Clock:
        return self._clock

    def keyed(self, label: str, value: str) -> str:
        """A keyed hash of a secret or identifying value (a link code, a caller number), so a
        copy of the database reveals neither; stable per tenant."""
        message = f"{label}:{value}".encode()
        return hmac.new(self._pseudonym_secret, message, hashlib.sha256).hexdigest()

    async def annotate(
        self, conversation_id: str, values: dict[str, Any], *, where: Any = None
    ) -> bool:
        """Change details that are no lifecycle step (a call ringing, a hijack flag) and tell
        the consoles; ``False`` when ``where`` no longer holds."""
        return await self.annotate_checked(conversation_id, values, where=where) is not None

    async def touch(self, conversation_id: str) -> None:
        """The resident is still there (their waiting page is open): not idle."""
        now = self._clock()

        def work(conn: Connection) -> None:
            conn.execute(
                update(conversations).where(self._mine(conversation_id)).values(last_activity=now)
            )

        await self._db.run(work, write=True)

    async def transition(
        self,
        conversation_id: str,
        target: State,
        *,
        actor: str,
        values: dict[str, Any] | None = None,
        where: Any = None,
        detail: dict[str, object] | None = None,
        current: Conversation | None = None,
    ) -> Conversation:
        """One guarded step of the lifecycle, audited and published; 409 when it cannot happen
        now (someone else changed the conversation first), and then nothing changes.

        ``current``: the conversation as the caller just read it. The step is then guarded by
        its state without reading it again in the transaction (one round trip less on a
        resident's every page); if it changed meanwhile, that is the 409 of a race.
        """
        bind_conversation(conversation_id)
        now = self._clock()
        if current is not None and current.id != conversation_id:
            raise ValueError("current is another conversation")

        logged = event_row(
            now, actor, f"conversation.{target}", conversation_id, detail, tenant=self._tenant
        )

        def work(conn: Connection) -> Any:
            row: Any = current
            if row is None:
                row = self._own(_BY_ID.run(conn, {"key": conversation_id}).first())
            if row is None:
                raise NotFoundError("No such conversation")
            change(row.state, target)
            if where is None:
                after = (
                    _step(tuple(values or ()))
                    .run(
                        conn,
                        {
                            "b_tenant": self._tenant,
                            "b_cid": conversation_id,
                            "b_before": row.state,
                            "b_after": target,
                            "b_now": now,
                            **{f"set_{k}": v for k, v in (values or {}).items()},
                        },
                        logged,
                    )
                    .first()
                )
            else:
                guard = [self._mine(conversation_id), conversations.c.state == row.state, where]
                after = conn.execute(
                    update(conversations)
                    .where(*guard)
                    .values(state=target, last_activity=now, **(values or {}))
                    .returning(*conversations.c)
                ).first()
                if after is not None:
                    append(conn, logged)
            if after is None:
                change(target, target)  # raced, or the extra condition does not hold
            if row.state == "connected" and row.connected_at is not None and row.queue:
                self._record_handle_time(conn, row.queue, now - row.connected_at)
            return row.state, after

        # Guarded by a state just read, the step and its audit event are one statement: no
        # transaction is needed around it (unless a handle time is recorded too).
        alone = current is not None and where is None and current.state != "connected"
        previous, row = await self._db.run(work, write=True, point=alone)
        conversation = _conversation(row)
        self._stepped(conversation.purpose, conversation.comm_method, target, previous)
        await self.publish(conversation)
        return conversation

    def _record_handle_time(self, conn: Connection, queue: str, seconds: float) -> None:
        """Move the queue's average handle time (which the expected waits come from).

        One atomic statement, so agents closing at the same moment on several instances
        neither collide nor lose an update.
        """
        if not math.isfinite(seconds) or seconds < 0:
            return
        weight = HandleTime(0).weight
        key = and_(queue_stats.c.tenant == self._tenant, queue_stats.c.queue == queue)
        move = (
            update(queue_stats)
            .where(key)
            .values(
                handle_seconds=queue_stats.c.handle_seconds
                + weight * (seconds - queue_stats.c.handle_seconds),
                handled=queue_stats.c.handled + 1,
            )
        )
        if conn.execute(move).rowcount == 1:
            return
        seed = next((q.handle_seconds for q in self._config.all_queues if q.tag == queue), 300.0)
        try:
            with conn.begin_nested():  # the first one for this queue, unless someone else was
                conn.execute(
                    insert(queue_stats).values(
                        tenant=self._tenant,
                        queue=queue,
                        handle_seconds=HandleTime(seed).add(seconds).seconds,
                        handled=1,
                    )
                )
        except IntegrityError:
            conn.execute(move)

    async def _changed(self, conversation_id: str) -> None:
        if self._bus is not None:
            await self.publish(await self.get(conversation_id))

    async def publish(self, *changed: Conversation) -> None:
        """Tell consoles (ids and states) and the resident (state only) about changes."""
        if self._bus is None:
            return
        now = self._clock()
        events: list[Event] = []
        for conversation in changed:
            # Consoles list the queue and what agents hold; a conversation that never got
            # there (created, authenticated, failed) is not theirs to hear about.
            if conversation.waiting_since is not None:
                summary = conversation.summary()
                events.append(Event(self._tenant, "queue", conversation.queue or "", summary, now))
            data: dict[str, object] = {"state": conversation.state, "holder": conversation.agent_id}
            if conversation.identify_state is not None:
                data["identify"] = conversation.identify_state
            events.append(Event(self._tenant, "conversation", conversation.id, data, now))
        await self._bus.publish(*events)

    async def purge_lag(self) -> float:
        """Seconds the oldest conversation past its retention has waited for the sweeper (0
        when none has): the sweeper's lag, for the metrics."""
        now = self._clock()

        def work(conn: Connection) -> float | None:
            oldest: float | None = conn.execute(
                select(func.min(conversations.c.purge_at)).where(
                    conversations.c.tenant == self._tenant,
                    conversations.c.state != "purged",
                    conversations.c.purge_at <= now,
                    or_(
                        conversations.c.hand_over_until.is_(None),
                        conversations.c.hand_over_until <= now,
                    ),
                )
            ).scalar_one()
            return oldest

        oldest = await self._db.run(work)
        return 0.0 if oldest is None else max(0.0, now - float(oldest))

    async def purge_expired(self, limit: int = PURGE_BATCH) -> int:
        """Destroy attributes past retention or idle too long, at most ``limit`` conversations
        per call (the sweeper calls again while a call comes back full); safe on every instance.
        """
        now = self._clock()

        # The same condition selects and, again, guards each purge: a conversation that became
        # live (or active) meanwhile is left alone.
        is_due = and_(
            conversations.c.tenant == self._tenant,
            conversations.c.state != "purged",
            # A transcript waiting for its hand-over is kept until it is handed over or its
            # retry window has passed (transcripts.py).
            or_(
                conversations.c.hand_over_until.is_(None),
                conversations.c.hand_over_until <= now,
            ),
            or_(
                conversations.c.purge_at <= now,
                and_(
                    # A live connection is never idle.
                    conversations.c.state.not_in(tuple(LIVE)),
                    conversations.c.last_activity + conversations.c.idle_seconds <= now,
                ),
                conversations.c.state == "ended",
                and_(conversations.c.state == "wrap_up", conversations.c.wrap_up_until <= now),
            ),
        )

        def due(conn: Connection) -> list[Any]:
            columns = (conversations.c.id, conversations.c.state, conversations.c.hand_over_until)
            return list(conn.execute(select(*columns).where(is_due).limit(limit)))

        rows = await self._db.run(due)
        previous: dict[str, State] = {str(r.id): r.state for r in rows}
        ids: list[str] = []
        for row in rows:
            conversation_id = str(row.id)
            if row.hand_over_until is not None:
                log.error(
                    "transcript not handed over in time: destroyed anyway",
                    extra={"conversation": conversation_id},
                )
            elif row.state != "ended":
                keep = await self._kept_for_hand_over(conversation_id)
                if keep is not None:  # ends now; the hand-over comes first, then the purge
                    with contextlib.suppress(InvalidTransitionError):
                        await self.transition(
                            conversation_id, "ended", actor="sweeper", values=keep, where=is_due
                        )
                    continue
            ids.append(conversation_id)

        def mark(conn: Connection) -> list[Any]:
            # One statement for the batch; a row no longer due (or purged by someone else
            # first) is not returned, and not audited.
            marked = list(
                conn.execute(
                    update(conversations)
                    .where(conversations.c.id.in_(ids), is_due)
                    # Link codes are free again: codes are unique among live ones only.
                    .values(state="purged", slot_hash=None, link_hash=None, identify_code_hash=None)
                    .returning(*conversations.c)
                )
            )
            for r in marked:
                audit(conn, now, "sweeper", "conversation.purged", r.id, tenant=self._tenant)
            return [(r, previous[str(r.id)]) for r in marked]

        if not ids:
            purged: list[Any] = []
        else:
            purged = await self._db.run(mark, write=True)
            # Marked first, then the keys: a crash in between leaves keys that expire by their
            # own time-to-live, never readable data of a purged conversation.
            await self._vault.destroy(*(str(r.id) for r, _ in purged))
            for r, was in purged:
                self._stepped(r.purpose, r.comm_method, "purged", was)
            await self.publish(*(_conversation(r) for r, _ in purged))

        def forget_tokens(conn: Connection) -> None:
            conn.execute(delete(used_tokens).where(used_tokens.c.expires_at <= now))

        await self._db.run(forget_tokens, write=True)
        await self._vault.keys.purge_expired()
        return len(purged)


def _mark_used(conn: Connection, received: ReceivedToken) -> None:
    """Record a token as used, in the caller's unit of work; a second use is refused. A result
    handed over in process has no token (and no ``replay_key``): its slot is its one use."""
    if received.replay_key is None:
        return
    try:
        conn.execute(
            insert(used_tokens),
            # Kept past exp + any configurable leeway (≤ 120 s).
            {"replay_key": received.replay_key, "expires_at": received.expires_at + 180},
        )
    except IntegrityError:  # the whole unit of work rolls back
        raise TokenReplayError() from None


@dataclass(frozen=True)
class _NewRow:
    values: dict[str, Any]

    def insert(self, conn: Connection) -> Any:
        """Insert the row and audit it, in one statement on PostgreSQL (no transaction needed);
        returns the row as stored (its defaults filled in)."""
        logged = event_row(
            self.created_at,
            "system",
            "conversation.created",
            self.id,
            {"purpose": self.values["purpose"], "comm": self.values["comm_method"]},
            tenant=str(self.values["tenant"]),
        )
        return _creating(tuple(self.values)).run(conn, self.values, logged).one()

    @property
    def id(self) -> str:
        return str(self.values["id"])

    @property
    def created_at(self) -> float:
        return float(self.values["created_at"])

    @property
    def purge_at(self) -> float:
        return float(self.values["purge_at"])


def _conversation(row: Any) -> Conversation:
    return Conversation(
        id=row.id,
        purpose=row.purpose,
        comm_method=row.comm_method,
        state=row.state,
        created_at=row.created_at,
        delivered_at=row.delivered_at,
        queue=row.queue,
        channel=row.channel,
        waiting_since=row.waiting_since,
        agent_id=row.agent_id,
        offer_expires=row.offer_expires,
        connected_at=row.connected_at,
        wrap_up_until=row.wrap_up_until,
        last_activity=row.last_activity,
        linked_at=row.linked_at,
        link_detail=json.loads(row.link_detail) if row.link_detail else None,
        hijack_at=row.hijack_at,
        call_state=row.call_state,
        identify_purpose=row.identify_purpose,
        identify_state=row.identify_state,
        acting_for=bool(row.acting_for),
        transfer_to=row.transfer_to,
        transfer_expires=row.transfer_expires,
        callback_at=row.callback_at,
        has_session=bool(row.has_session),
    )
