"""Link codes: the digits that tie a phone call to the conversation whose attributes it is for.

The threat model (docs/threat-model.md) sets the rules, and every one of them is here:

- a code is random digits of a fixed length, unique among live codes, and stored only as a
  keyed hash (a copy of the database does not show which code to dial);
- it links once, only after its conversation's attributes have arrived, and only within a
  short window after that (shorter when a wallet dials it than when a page shows it);
- every failed attempt counts against a per-tenant daily budget, and against the caller's own
  hourly limit; when the budget is spent, linking stops for the tenant (calls still reach an
  agent, unidentified) and an alarm is logged;
- a second call with an already used code flags the first conversation as a possible hijack.

``Phone.hijack_chance`` turns these settings into the chance per day that guessing succeeds.
"""

from __future__ import annotations

import json
import logging
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from sqlalchemy import Connection, delete, func, insert, select, text, update
from sqlalchemy.exc import IntegrityError

from idcontact.conversations import Conversation, Conversations
from idcontact.domain.lifecycle import InvalidTransitionError
from idcontact.errors import ServiceBusyError
from idcontact.settings import Phone, Purpose
from idcontact.storage.db import conversations, link_failures

log = logging.getLogger(__name__)

Clock = Callable[[], float]
Failure = Literal["unknown", "not_ready", "expired", "reused", "malformed"]
Refusal = Literal["budget", "caller"]
LINKABLE_STATES = ("created", "authenticated")
DAY = 86_400.0
HOUR = 3_600.0


@dataclass(frozen=True)
class Linked:
    conversation: Conversation


@dataclass(frozen=True)
class NotLinked:
    reason: Failure | Refusal
    """Why, for logs and metrics (never the code): a failure counts against the budgets; a
    refusal means the budgets were spent before this attempt was even looked at."""


LinkOutcome = Linked | NotLinked


@dataclass(frozen=True)
class Caller:
    """What the phone system knows about the caller. The number is hashed with the tenant's
    key before it is stored, and kept only for the throttle's hour."""

    number: str | None
    via: Literal["pbx", "webhook", "demo", "web"] = "pbx"
    session: str | None = None
    """Another platform's call id: without a number, the per-caller limit counts per call, so
    one platform's callers do not share one count."""

    @property
    def withheld(self) -> bool:
        return not self.number or not any(c.isdigit() for c in self.number)


class LinkCodes:
    """Issue and link codes for one tenant's phone line."""

    def __init__(
        self,
        conversations_: Conversations,
        settings: Phone,
        clock: Clock = time.time,
        *,
        on_failure: Callable[[str, str], None] | None = None,
    ) -> None:
        self._on_failure = on_failure
        """Told (tenant, reason) of each failed or refused attempt: the metrics."""
        self._conversations = conversations_
        self._settings = settings
        self._clock = clock
        self._tenant = conversations_.tenant.slug
        self._alarmed = False

    @property
    def settings(self) -> Phone:
        return self._settings

    def _hash(self, code: str) -> str:
        return self._conversations.keyed("link-code", code)

    def _caller_key(self, caller: Caller) -> str:
        if caller.withheld and caller.session is not None:
            return "session:" + self._conversations.keyed("session", caller.session)[:40]
        if caller.withheld:
            return "withheld"
        digits = "".join(c for c in caller.number or "" if c.isdigit())
        return "caller:" + self._conversations.keyed("caller", digits)[:40]

    def well_formed(self, code: str) -> bool:
        return len(code) == self._settings.code_length and code.isascii() and code.isdigit()

    async def issue(self, conversation_id: str, *, shown: bool) -> str:
        """A fresh code for a new phone conversation. ``shown``: the code will be shown on a
        page (typed by hand, so the longer window); otherwise a wallet dials it.

        Refused (503) while ``max_linkable_codes`` codes could still link: the bound on the
        chance of guessing one depends on it.
        """
        length = self._settings.code_length
        for _ in range(8):
            code = "".join(secrets.choice("0123456789") for _ in range(length))
            if await self._claim(conversation_id, self._hash(code), shown):
                return code
        raise ServiceBusyError("No free link code could be found; try again")  # pragma: no cover

    async def _claim(self, conversation_id: str, code_hash: str, shown: bool) -> bool:
        now = self._clock()
        longest = max(self._settings.wallet_window_seconds, self._settings.typed_window_seconds)

        def work(conn: Connection) -> bool:
            if conn.dialect.name == "postgresql":  # count and claim as one step per tenant
                conn.execute(
                    text("SELECT pg_advisory_xact_lock(hashtext(:k))"),
                    {"k": f"link-codes:{self._tenant}"},
                )
            live = conn.execute(
                select(func.count())
                .select_from(conversations)
                .where(
                    conversations.c.tenant == self._tenant,
                    conversations.c.link_hash.is_not(None),
                    conversations.c.linked_at.is_(None),
                    conversations.c.state.in_(LINKABLE_STATES),
                    # A conversation whose window has closed can no longer link.
                    func.coalesce(conversations.c.delivered_at, now) + longest >= now,
                )
            ).scalar_one()
            if live >= self._settings.max_linkable_codes:
                raise ServiceBusyError(
                    "Too many residents are identifying for a phone call right now; "
                    "try again in a few minutes"
                )
            with conn.begin_nested():
                try:
                    conn.execute(
                        update(conversations)
                        .where(
                            conversations.c.id == conversation_id,
                            conversations.c.tenant == self._tenant,
                            conversations.c.link_hash.is_(None),
                        )
                        .values(link_hash=code_hash, link_shown=int(shown))
                    )
                except IntegrityError:  # that code is live elsewhere: draw another
                    return False
            return True

        return await self._conversations.db.run(work, write=True)

    async def refusal(self, caller: Caller) -> Refusal | None:
        """Whether this caller may try a code at all (checked before each attempt)."""
        now = self._clock()
        key = self._caller_key(caller)

        def work(conn: Connection) -> tuple[int, int]:
            mine = link_failures.c.tenant == self._tenant
            tenant_day = conn.execute(
                select(func.count()).where(mine, link_failures.c.at > now - DAY)
            ).scalar_one()
            caller_hour = conn.execute(
                select(func.count()).where(
                    mine, link_failures.c.caller_key == key, link_failures.c.at > now - HOUR
                )
            ).scalar_one()
            return int(tenant_day), int(caller_hour)

        tenant_day, caller_hour = await self._conversations.db.run(work)
        if tenant_day >= self._settings.failed_link_budget:
            if not self._alarmed:
                self._alarmed = True
                log.error(
                    "ALARM phone link budget spent: linking is off until failures age out",
                    extra={"tenant": self._tenant, "budget": self._settings.failed_link_budget},
                )
            return "budget"
        self._alarmed = False
        if caller_hour >= self._settings.caller_failures_per_hour:
            return "caller"
        return None

    async def failures(self) -> tuple[int, int]:
        """Failed attempts in the last 24 hours, and the budget (for the supervisor's view)."""
        now = self._clock()

        def work(conn: Connection) -> int:
            return int(
                conn.execute(
                    select(func.count()).where(
                        link_failures.c.tenant == self._tenant, link_failures.c.at > now - DAY
                    )
                ).scalar_one()
            )

        return await self._conversations.db.run(work), self._settings.failed_link_budget

    async def link(self, code: str, caller: Caller, *, call_ref: str) -> LinkOutcome:
        """Link a call to the conversation of ``code`` and put it in the queue, exactly once.

        ``call_ref``: the phone system's id of the call (hashed before it is stored; the
        webhook's ``session_info`` finds the conversation by it).
        """
        refused = await self.refusal(caller)
        if refused is not None:
            return self._not_linked(refused)
        if not self.well_formed(code):
            return await self._failed(caller, "malformed")
        now = self._clock()
        code_hash = self._hash(code)
        row = await self._conversations.db.run(
            lambda conn: conn.execute(
                select(conversations).where(
                    conversations.c.tenant == self._tenant, conversations.c.link_hash == code_hash
                )
            ).first()
        )
        if row is None:
            return await self._failed(caller, "unknown")
        if row.linked_at is not None:
            return await self._reused(row.id, caller)
        if row.state != "authenticated" or row.delivered_at is None:
            return await self._failed(caller, "not_ready")
        window = (
            self._settings.typed_window_seconds
            if row.link_shown
            else self._settings.wallet_window_seconds
        )
        if now > row.delivered_at + window:
            return await self._failed(caller, "expired")
        detail = {
            "via": caller.via,
            "shown": bool(row.link_shown),
            "caller": "withheld" if caller.withheld else "shown",
            "seconds": round(now - row.delivered_at),
        }
        try:
            linked = await self._conversations.transition(
                row.id,
                "waiting",
                actor=f"phone:{caller.via}",
                values={
                    "waiting_since": now,
                    "linked_at": now,
                    "link_detail": json.dumps(detail),
                    "call_ref_hash": self._conversations.keyed("call", call_ref),
                    # Our PBX reports the line; another platform's calls are its own business.
                    "call_state": "waiting" if caller.via == "pbx" else None,
                },
                where=conversations.c.linked_at.is_(None),
                detail={k: v for k, v in detail.items() if k != "caller"},
            )
        except InvalidTransitionError:  # another call linked it a moment earlier
            return await self._reused(row.id, caller)
        return Linked(linked)

    async def _reused(self, conversation_id: str, caller: Caller) -> NotLinked:
        """A used code again: flag the first conversation to its agent, count the failure."""
        now = self._clock()
        await self._conversations.annotate(
            conversation_id, {"hijack_at": now}, where=conversations.c.hijack_at.is_(None)
        )
        log.warning("phone link code presented again: conversation flagged as possible hijack")
        return await self._failed(caller, "reused")

    async def _failed(self, caller: Caller, reason: Failure) -> NotLinked:
        now = self._clock()
        key = self._caller_key(caller)

        def work(conn: Connection) -> None:
            conn.execute(insert(link_failures).values(tenant=self._tenant, caller_key=key, at=now))
            # Failures older than a day count for nothing any more.
            conn.execute(
                delete(link_failures).where(
                    link_failures.c.tenant == self._tenant, link_failures.c.at <= now - DAY
                )
            )

        await self._conversations.db.run(work, write=True)
        log.info("phone link attempt failed", extra={"reason": reason, "tenant": self._tenant})
        return self._not_linked(reason)

    def _not_linked(self, reason: Failure | Refusal) -> NotLinked:
        if self._on_failure is not None:
            self._on_failure(self._tenant, reason)
        return NotLinked(reason)

    # -- identifying during a call: a code the agent reads out ------------------------------

    async def identify_code(self, conversation_id: str, purpose: Purpose, *, actor: str) -> str:
        """Ask the caller of a call to identify for ``purpose``: a fresh code for the agent to
        read out, which opens the question on the municipality's page once, for
        ``identify_code_minutes``. Only its keyed hash is stored."""
        length = self._settings.identify_code_length
        until = self._clock() + self._settings.identify_code_minutes * 60
        for _ in range(8):
            code = "".join(secrets.choice("0123456789") for _ in range(length))
            values = {
                "identify_code_hash": self._conversations.keyed("identify-code", code),
                "identify_code_expires": until,
            }
            try:
                await self._conversations.ask_identification(
                    conversation_id, purpose, actor=actor, values=values
                )
            except IntegrityError:  # that code is live for another call: another one
                continue
            return code
        raise ServiceBusyError("No free code could be found; try again")  # pragma: no cover

    async def open_identify(self, code: str, caller: Caller) -> Conversation | NotLinked:
        """The caller typed the agent's code on the page: their call's conversation, and the
        code is used up. Wrong, expired or used codes count against the same budgets as link
        codes (a guessed code would let a stranger identify into someone else's call)."""
        refused = await self.refusal(caller)
        if refused is not None:
            return self._not_linked(refused)
        code = "".join(code.split())
        if len(code) != self._settings.identify_code_length or not code.isdigit():
            return await self._failed(caller, "malformed")
        code_hash = self._conversations.keyed("identify-code", code)
        row = await self._conversations.db.run(
            lambda conn: conn.execute(
                select(conversations.c.id, conversations.c.identify_code_expires).where(
                    conversations.c.tenant == self._tenant,
                    conversations.c.identify_code_hash == code_hash,
                )
            ).first()
        )
        if row is None:
            return await self._failed(caller, "unknown")
        if row.identify_code_expires is None or row.identify_code_expires <= self._clock():
            return await self._failed(caller, "expired")
        used = await self._conversations.annotate_checked(
            row.id,
            {"identify_code_hash": None, "identify_code_expires": None},
            where=conversations.c.identify_code_hash == code_hash,
        )
        if used is None:  # another browser used it a moment earlier
            return await self._failed(caller, "reused")
        return used

    async def by_call(self, call_ref: str) -> Conversation | None:
        """The conversation a call linked to (for the webhook's ``session_info``)."""
        ref_hash = self._conversations.keyed("call", call_ref)
        row = await self._conversations.db.run(
            lambda conn: conn.execute(
                select(conversations.c.id).where(
                    conversations.c.tenant == self._tenant,
                    conversations.c.call_ref_hash == ref_hash,
                )
            ).first()
        )
        return None if row is None else await self._conversations.get(row.id)
