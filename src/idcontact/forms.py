"""The verified contact form: a written question, answered later, read after identifying again.

One storage for every channel: the question is the resident's chat message and the answer the
agent's, both in the vault under the conversation's chat key (``storage/vault.py``), so they
are destroyed with its attributes at the purpose's retention. This service adds what an
asynchronous channel needs on top:

- **submitting** joins the queue and lifts the idle limit to the retention, since the resident
  need not stay; it returns a one-time link to read the answer (only its keyed hash is stored);
- **answering** takes the conversation from ``connected`` to ``answered``: no longer the
  agent's work, its data kept until ``purge_at``; with a verified e-mail address in the
  disclosure (and SMTP configured) the resident gets a notice with a fresh link, never the
  answer itself;
- **reading** needs a new disclosure through one of the purpose's auth methods, posted to a
  single-use attr_url slot of this attempt and bound to the browser that started it. Only the
  verdict is kept: the same person (the purpose's ``subject_attribute``, or else every
  attribute disclosed the first time, must be equal) shows the answer once and gives a fresh
  link; anything else shows nothing and is audited; three failures use the link up.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal
from zoneinfo import ZoneInfo

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from sqlalchemy import Connection, and_, insert, select, update

from idcontact.conversations import Conversation, Conversations
from idcontact.domain.lifecycle import InvalidTransitionError
from idcontact.errors import BadRequestError, ConfigError, NotFoundError, SlotUsedError
from idcontact.mail import Mailer, MailError, SmtpConfig
from idcontact.queues import QueueService
from idcontact.settings import Purpose, Tenant
from idcontact.storage.audit import audit
from idcontact.storage.db import conversations as conversations_table, form_questions

MAX_FAILURES = 3
"""Failed reads (another person, a cancelled or failed identification) before a link dies."""
Verdict = Literal["pending", "match", "mismatch", "failed"]


class FormConfig(BaseModel):
    """``[plugins.comm.<tag>]`` of a ``form`` method."""

    model_config = ConfigDict(extra="forbid", frozen=True, hide_input_in_errors=True)

    max_question: int = Field(default=4000, ge=100, le=20_000)
    """The longest question, in characters."""
    max_answer: int = Field(default=10_000, ge=100, le=50_000)
    """The longest answer, in characters."""
    reidentify_minutes: int = Field(default=15, ge=1, le=60)
    """How long a reading attempt may take (identifying again in the wallet)."""
    email_attribute: str = "email"
    """The attribute tag of a verified e-mail address; when a purpose asks for it (and
    ``smtp`` is set) the resident is told by e-mail that the answer is ready."""
    smtp: SmtpConfig | None = None


def form_config(raw: Mapping[str, Any], where: str) -> FormConfig:
    """Validate a form method's settings; the error names the setting, never its value."""
    try:
        return FormConfig.model_validate(dict(raw))
    except ValidationError as exc:
        errors = exc.errors(include_input=False, include_url=False, include_context=False)
        names = ", ".join(".".join(str(p) for p in e["loc"]) for e in errors)
        raise ConfigError(f"{where}: invalid {names}") from None


def _sha(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


@dataclass(frozen=True, repr=False)
class Thread:
    """A form's question and answer (texts: ``repr`` leaves them out)."""

    question: str | None
    answer: str | None
    answered_at: float | None

    def __repr__(self) -> str:
        return f"Thread(answered={self.answer is not None})"


@dataclass(frozen=True)
class Opened:
    """What a one-time link points at: the conversation, when it still can be read."""

    conversation: Conversation
    purpose: Purpose
    readable: bool


@dataclass(frozen=True, repr=False)
class Attempt:
    """The secrets of one reading attempt: the attr_url slot, the return path, the browser's
    cookie. Never stored; only their hashes are."""

    slot: str
    ret: str
    browser: str


@dataclass(frozen=True)
class Outcome:
    verdict: Verdict
    conversation_id: str
    thread: Thread | None = None
    link: str | None = None
    """A fresh one-time link, after a successful read."""


class Forms:
    """The contact form of one tenant's form method."""

    def __init__(
        self,
        conversations: Conversations,
        queues: QueueService | None,
        config: FormConfig,
        *,
        comm_method: str,
        link_base: str,
        clock: Callable[[], float] = time.time,
        mailer: Mailer | None = None,
    ) -> None:
        self._conversations = conversations
        self._queues = queues
        self._config = config
        self._method = comm_method
        self._link_base = link_base
        self._clock = clock
        self._tenant: Tenant = conversations.tenant
        self._mailer = mailer if mailer is not None else _mailer(config)

    @property
    def config(self) -> FormConfig:
        return self._config

    def link_url(self, link: str) -> str:
        return f"{self._link_base}/a/{link}"

    def deleted_by(self, conversation: Conversation, purpose: Purpose) -> str:
        """When the sweeper deletes it all (``purge_at``), in the queue's time zone."""
        at = conversation.created_at + purpose.retention_minutes * 60
        zone = ZoneInfo(self._tenant.queue_of(purpose).time_zone)
        return datetime.fromtimestamp(at, zone).strftime("%d-%m-%Y %H:%M")

    def _link_hash(self, link: str) -> str:
        return self._conversations.keyed("form-link", link)

    def _mine(self, *where: Any) -> Any:
        return and_(form_questions.c.tenant == self._tenant.slug, *where)

    def _purpose(self, tag: str) -> Purpose:
        purpose = self._tenant.purpose(tag)
        if purpose is None:
            raise NotFoundError("This question's topic is no longer offered")
        return purpose

    async def _run(self, work: Callable[[Connection], Any], *, write: bool = False) -> Any:
        return await self._conversations.db.run(work, write=write)

    # -- the resident asks ------------------------------------------------------------------

    async def submit(self, conversation_id: str, question: str, *, actor: str) -> str:
        """Store the question, join the queue; return the one-time link (shown once)."""
        text = question.strip()
        if not text:
            raise BadRequestError("The question is empty")
        if len(text) > self._config.max_question:
            raise BadRequestError(
                f"The question is longer than {self._config.max_question} characters"
            )
        conversation = await self._conversations.get(conversation_id)
        if conversation.state != "authenticated":
            raise InvalidTransitionError("This conversation takes no question now")
        purpose = self._purpose(conversation.purpose)
        now = self._clock()
        # The resident need not stay: idle never comes before the retention now.
        await self._conversations.transition(
            conversation_id,
            "waiting",
            actor=actor,
            values={"waiting_since": now, "idle_seconds": purpose.retention_minutes * 60},
        )
        await self._conversations.vault.append_chat(conversation_id, "resident", text)
        link = secrets.token_urlsafe(32)

        def work(conn: Connection) -> None:
            conn.execute(
                insert(form_questions).values(
                    conversation_id=conversation_id,
                    tenant=self._tenant.slug,
                    submitted_at=now,
                    link_hash=self._link_hash(link),
                    failures=0,
                )
            )

        await self._run(work, write=True)
        if self._queues is not None:
            self._queues.poke()
        return link

    async def thread(self, conversation_id: str) -> Thread:
        """The question and the answer, while the conversation holds them."""
        messages = await self._conversations.vault.chat_since(conversation_id)
        question = next((m.text for m in messages if m.sender == "resident"), None)
        answers = [m for m in messages if m.sender == "agent"]
        return Thread(
            question,
            answers[-1].text if answers else None,
            answers[-1].at if answers else None,
        )

    # -- the agent answers -------------------------------------------------------------------

    async def answer(self, conversation_id: str, agent_id: str, text: str) -> bool:
        """Answer a question the agent holds; ``True`` when the resident was e-mailed."""
        body = text.strip()
        if not body:
            raise BadRequestError("The answer is empty")
        if len(body) > self._config.max_answer:
            raise BadRequestError(f"The answer is longer than {self._config.max_answer} characters")
        if self._queues is None:
            raise NotFoundError("No such conversation")
        conversation = await self._queues.held(conversation_id, agent_id)
        if conversation.state != "connected":
            raise InvalidTransitionError("Only a question you have taken can be answered")
        now = self._clock()
        await self._conversations.transition(
            conversation_id,
            "answered",
            actor=f"agent:{agent_id}",
            where=conversations_table.c.agent_id == agent_id,
        )
        await self._conversations.vault.append_chat(conversation_id, "agent", body)

        def work(conn: Connection) -> None:
            conn.execute(
                update(form_questions)
                .where(self._mine(form_questions.c.conversation_id == conversation_id))
                .values(answered_at=now)
            )

        await self._run(work, write=True)
        self._queues.poke()
        return await self._notify(conversation_id)

    async def _notify(self, conversation_id: str) -> bool:
        """E-mail the verified address, if the purpose asked for one: a notice with a fresh
        one-time link (the answer itself is not e-mailed: mail is not confidential)."""
        if self._mailer is None:
            return False
        conversation = await self._conversations.get(conversation_id)
        purpose = self._purpose(conversation.purpose)
        if self._config.email_attribute not in purpose.attributes:
            return False
        data = await self._conversations.attributes(conversation_id, actor="comm:form:notify")
        attrs = data.get("attributes") if data else None
        address = attrs.get(self._config.email_attribute) if isinstance(attrs, dict) else None
        if not isinstance(address, str) or "@" not in address:
            return False
        link = secrets.token_urlsafe(32)  # replaces the first link once the mail went out
        label = purpose.label.nl if purpose.label else purpose.tag
        body = (
            f"Uw vraag over '{label}' is beantwoord.\n\n"
            "U leest het antwoord via deze link, nadat u zich opnieuw heeft geïdentificeerd:\n"
            f"{self.link_url(link)}\n\n"
            "De link werkt één keer en vervangt de link die u eerder kreeg. Uw vraag en het "
            f"antwoord worden uiterlijk {self.deleted_by(conversation, purpose)} gewist.\n\n"
            f"Your question about '{purpose.label.get('en') if purpose.label else purpose.tag}' "
            "has been answered. Open the link above and identify again to read it.\n"
        )
        try:
            await self._mailer.send(address, "Uw vraag is beantwoord / Your answer is ready", body)
        except MailError:
            await self._audit(conversation_id, "system", "form.mail_failed")
            return False
        now = self._clock()

        def work(conn: Connection) -> None:
            conn.execute(
                update(form_questions)
                .where(self._mine(form_questions.c.conversation_id == conversation_id))
                .values(link_hash=self._link_hash(link), failures=0)
            )
            audit(conn, now, "system", "form.mailed", conversation_id, tenant=self._tenant.slug)

        await self._run(work, write=True)
        return True

    async def _audit(
        self, conversation_id: str, actor: str, action: str, detail: dict[str, object] | None = None
    ) -> None:
        now = self._clock()
        await self._run(
            lambda conn: audit(
                conn, now, actor, action, conversation_id, detail, tenant=self._tenant.slug
            ),
            write=True,
        )

    # -- the resident reads -------------------------------------------------------------------

    async def opened(self, link: str) -> Opened | None:
        """What a one-time link points at; ``None`` when unknown or used up."""

        def work(conn: Connection) -> Any:
            return conn.execute(
                select(form_questions).where(
                    self._mine(form_questions.c.link_hash == self._link_hash(link))
                )
            ).first()

        row = await self._run(work)
        if row is None or row.failures >= MAX_FAILURES:
            return None
        conversation = await self._conversations.get(row.conversation_id)
        purpose = self._purpose(conversation.purpose)
        readable = conversation.state in ("waiting", "offered", "connected", "answered")
        return Opened(conversation, purpose, readable)

    async def begin(self, link: str) -> tuple[Attempt, Opened]:
        """Start a reading attempt for a live link (a new one replaces a pending one)."""
        opened = await self.opened(link)
        if opened is None or not opened.readable:
            raise NotFoundError("This link is used up or has expired")
        attempt = Attempt(
            secrets.token_urlsafe(32), secrets.token_urlsafe(32), secrets.token_urlsafe(32)
        )
        expires = self._clock() + self._config.reidentify_minutes * 60

        def work(conn: Connection) -> int:
            return int(
                conn.execute(
                    update(form_questions)
                    .where(
                        self._mine(
                            form_questions.c.link_hash == self._link_hash(link),
                            form_questions.c.failures < MAX_FAILURES,
                        )
                    )
                    .values(
                        slot_hash=_sha(attempt.slot),
                        return_hash=_sha(attempt.ret),
                        browser_hash=_sha(attempt.browser),
                        attempt_expires=expires,
                        verdict="pending",
                    )
                ).rowcount
            )

        if await self._run(work, write=True) != 1:
            raise NotFoundError("This link is used up or has expired")
        return attempt, opened

    async def settle(self, token: str, *, slot: str | None = None, ret: str | None = None) -> str:
        """Judge a new disclosure (out-of-band at ``slot``, or in-band at ``ret``): verified
        and replay-checked once; only the verdict is kept. Returns the verdict."""
        column = form_questions.c.slot_hash if slot is not None else form_questions.c.return_hash
        key = _sha(slot if slot is not None else ret or "")
        now = self._clock()

        def find(conn: Connection) -> Any:
            return conn.execute(select(form_questions).where(self._mine(column == key))).first()

        row = await self._run(find)
        if row is None or (row.attempt_expires or 0) <= now:
            raise NotFoundError("No such attribute slot")
        if row.verdict != "pending":
            raise SlotUsedError()
        received = await self._conversations.read_again(token)
        verdict: Verdict = "failed"
        result = received.result
        if result.status == "success":
            conversation, data = await self._conversations.view(
                row.conversation_id, actor="comm:form:reidentify"
            )
            before = data.get("attributes") if data else None
            if isinstance(before, dict):  # else deleted meanwhile: nothing to compare with
                same = _same_person(
                    self._purpose(conversation.purpose), before, dict(result.attributes or {})
                )
                verdict = "match" if same else "mismatch"
        failed = verdict != "match"

        def judge(conn: Connection) -> bool:
            changed = conn.execute(
                update(form_questions)
                .where(self._mine(column == key, form_questions.c.verdict == "pending"))
                .values(
                    verdict=verdict,
                    slot_hash=None,
                    failures=form_questions.c.failures + (1 if failed else 0),
                )
            )
            if changed.rowcount != 1:
                return False
            audit(
                conn,
                now,
                "comm:form:resident",
                "form.reidentified",
                row.conversation_id,
                {"verdict": verdict},
                tenant=self._tenant.slug,
            )
            return True

        if not await self._run(judge, write=True):
            raise SlotUsedError()
        return verdict

    async def outcome(self, ret: str, browser: str) -> Outcome | None:
        """The result of an attempt, for the browser that started it (``None`` otherwise).
        A match shows the thread once and replaces the link with a fresh one."""

        def find(conn: Connection) -> Any:
            return conn.execute(
                select(form_questions).where(self._mine(form_questions.c.return_hash == _sha(ret)))
            ).first()

        row = await self._run(find)
        if row is None or not hmac.compare_digest(row.browser_hash or "", _sha(browser)):
            return None
        verdict: Verdict = row.verdict or "pending"
        if verdict == "pending":
            return Outcome("pending", row.conversation_id)
        link = secrets.token_urlsafe(32) if verdict == "match" else None

        def close(conn: Connection) -> bool:
            values: dict[str, object] = {"return_hash": None, "browser_hash": None}
            if link is not None:
                values.update(link_hash=self._link_hash(link), failures=0)
            changed = conn.execute(
                update(form_questions)
                .where(
                    self._mine(
                        form_questions.c.return_hash == _sha(ret),
                        form_questions.c.verdict == verdict,
                    )
                )
                .values(**values)
            )
            return bool(changed.rowcount == 1)

        if not await self._run(close, write=True):
            return None  # shown already, by a reload racing this one
        if verdict != "match":
            return Outcome(verdict, row.conversation_id)
        thread = await self.thread(row.conversation_id)
        await self._audit(row.conversation_id, "comm:form:resident", "form.read")
        return Outcome("match", row.conversation_id, thread, link)


def _same_person(purpose: Purpose, before: Mapping[str, object], after: Mapping[str, str]) -> bool:
    """The purpose's ``subject_attribute`` when it has one, else every attribute disclosed the
    first time, must be equal (compared in constant time)."""
    names = (
        (purpose.subject_attribute,)
        if purpose.subject_attribute
        else tuple(a for a in purpose.attributes if a in before)
    )
    if not names:
        return False
    return all(
        a in before
        and a in after
        and hmac.compare_digest(str(before[a]).encode(), after[a].encode())
        for a in names
    )


def _mailer(config: FormConfig) -> Mailer | None:
    return Mailer(config.smtp) if config.smtp is not None else None


def forms_for(
    public_url: str, comm_method: str, conversations: Conversations, queues: QueueService | None
) -> Forms:
    """The contact form of a tenant's ``form`` method, from its ``[plugins.comm.<tag>]``
    settings: for the plugin (the resident's side) and the console (the agent's)."""
    tenant = conversations.tenant
    raw = tenant.plugins.get("comm", {}).get(comm_method, {})
    config = form_config(
        {k: v for k, v in raw.items() if k != "use_attr_url"}, f"plugins.comm.{comm_method}"
    )
    return Forms(
        conversations,
        queues,
        config,
        comm_method=comm_method,
        link_base=f"{public_url}{tenant.prefix}/comm/{comm_method}",
    )
