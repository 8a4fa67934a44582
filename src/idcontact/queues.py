"""The queue and agent model of one tenant, shared by every channel.

Channels only call :meth:`QueueService.enqueue` when the resident is really there (the page
is open, the call is linked); from then on this service offers the conversation to agents by
the rules of :mod:`idcontact.domain.queueing`, and pushes positions and expected waits to the
waiting residents. Every change is a guarded update in the database, so several instances
may run :meth:`QueueService.tick` at once and an offer still goes to one agent only.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, cast

from sqlalchemy import (
    Connection,
    and_,
    bindparam,
    func,
    literal_column,
    or_,
    select,
    text,
    true,
    update,
)

from idcontact.conversations import Conversation, Conversations, _conversation
from idcontact.domain.lifecycle import InvalidTransitionError
from idcontact.domain.queueing import (
    Agent,
    AgentState,
    Waiting,
    announce_long_wait,
    expected_wait,
    next_offer,
)
from idcontact.errors import BadRequestError, NotFoundError
from idcontact.events import Bus, Event
from idcontact.settings import Queue, Tenant
from idcontact.storage.audit import audit
from idcontact.storage.db import (
    Prebuilt,
    agent_memberships,
    agents,
    conversations,
    one_of,
    queue_stats,
)

log = logging.getLogger(__name__)

ACTIVE = ("waiting", "offered", "connected", "wrap_up")
TRANSFER_OFFERS = 4
"""A warm transfer stays on offer this many times a queue's ``offer_seconds``."""
RACED = object()
"""A dispatcher's update found the conversation changed by another one."""
"""The states a console lists."""


AHEAD_LIMIT = 500
"""A resident's place is counted up to this many ahead. The count costs time per row ahead,
on every waiting page; past a few hundred, "more than 500 ahead of you" tells as much."""

# Built once, run with parameters: the reads of every resident's place and every tick.
_HANDLE_OF = select(queue_stats.c.handle_seconds).where(
    queue_stats.c.tenant == bindparam("tenant"), queue_stats.c.queue == bindparam("queue")
)
_HANDLE = Prebuilt(_HANDLE_OF)
_STAFFED = (
    select(agent_memberships.c.queues)
    .join(agents, agents.c.id == agent_memberships.c.agent_id)
    .where(
        agent_memberships.c.tenant == bindparam("tenant"),
        agents.c.disabled == 0,
        agents.c.presence == "available",
    )
    .subquery("staffed")
)
"""The queues of the tenant's agents who are not paused: those an expected wait counts."""
_PLACE = Prebuilt(
    select(
        select(func.count())
        .select_from(
            select(conversations.c.id)
            .where(
                conversations.c.tenant == bindparam("tenant"),
                conversations.c.queue == bindparam("queue"),
                one_of(conversations.c.state, ("waiting", "offered")),
                or_(
                    conversations.c.waiting_since < bindparam("since"),
                    and_(
                        conversations.c.waiting_since == bindparam("since"),
                        conversations.c.id < bindparam("cid"),
                    ),
                ),
            )
            .limit(AHEAD_LIMIT)
            .subquery()
        )
        .scalar_subquery()
        .label("ahead"),
        _HANDLE_OF.scalar_subquery().label("handle"),
        _STAFFED.c.queues,
    ).select_from(
        select(literal_column("1").label("one")).subquery("one").outerjoin(_STAFFED, true())
    )
)
"""How many are ahead of one resident in a queue's line, the queue's handle time and the
queues of each agent not paused (``NULL`` when there is none): one statement, one round trip,
for every waiting page."""
_MEMBERS = Prebuilt(
    select(agents.c.id, agents.c.presence, agents.c.presence_since, agent_memberships.c.queues)
    .join(agent_memberships, agent_memberships.c.agent_id == agents.c.id)
    .where(agent_memberships.c.tenant == bindparam("tenant"), agents.c.disabled == 0)
)
_LOAD = (
    select(conversations.c.agent_id, conversations.c.channel, conversations.c.state, func.count())
    .where(
        conversations.c.agent_id.in_(bindparam("ids", expanding=True)),
        conversations.c.state.in_(("offered", "connected", "wrap_up")),
    )
    .group_by(conversations.c.agent_id, conversations.c.channel, conversations.c.state)
)
"""What each of these agents holds, by channel and state."""
_EXPIRED = Prebuilt(
    select(conversations.c.id, conversations.c.agent_id).where(
        conversations.c.tenant == bindparam("tenant"),
        conversations.c.state == "offered",
        conversations.c.offer_expires <= bindparam("now"),
    )
)
_ANYONE = Prebuilt(
    select(conversations.c.id)
    .where(
        conversations.c.tenant == bindparam("tenant"),
        conversations.c.queue == bindparam("queue"),
        conversations.c.state == "waiting",
    )
    .limit(1)
)


@dataclass(frozen=True)
class Estimate:
    """What a resident is told before and while waiting, for one queue."""

    queue: str
    is_open: bool
    opens_at: float | None
    waiting: int
    available_agents: int
    handle_seconds: float
    expected_seconds: float | None
    """For someone joining now; ``None`` when no agent is available."""
    long_wait: bool


@dataclass(frozen=True)
class Place:
    """One waiting resident's place in line."""

    position: int
    expected_seconds: float | None
    long_wait: bool
    is_open: bool
    offered: bool = False
    """Offered to an agent: still in line until accepted, but no longer waiting."""
    beyond: bool = False
    """More than :data:`AHEAD_LIMIT` are ahead: ``position`` (and the expected wait) is the
    least it can be."""


def member_queues(raw: str) -> tuple[str, ...]:
    """The queue tags of a membership row (``["*"]`` means every queue)."""
    parsed = json.loads(raw or '["*"]')
    return tuple(str(q) for q in parsed) if isinstance(parsed, list) else ("*",)


def serves(queues: Sequence[str], queue: str | None) -> bool:
    return "*" in queues or (queue is not None and queue in queues)


class QueueService:
    def __init__(
        self,
        conversations: Conversations,
        bus: Bus,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._conversations = conversations
        self._tenant: Tenant = conversations.tenant
        self._db = conversations.db
        self._bus = bus
        self._clock = clock
        self._queues = {q.tag: q for q in self._tenant.all_queues}
        self._dirty = asyncio.Event()

    @property
    def tenant(self) -> Tenant:
        return self._tenant

    @property
    def conversations(self) -> Conversations:
        return self._conversations

    @property
    def bus(self) -> Bus:
        return self._bus

    def queue(self, tag: str | None) -> Queue:
        return self._queues.get(tag or "") or self._tenant.all_queues[0]

    def is_open(self, queue: Queue) -> bool:
        if not queue.opening_hours:  # always open: nothing to parse (asked on every page)
            return True
        return queue.hours().is_open(datetime.fromtimestamp(self._clock(), UTC))

    # -- residents -------------------------------------------------------------------------

    async def enqueue(
        self, conversation_id: str, *, actor: str, current: Conversation | None = None
    ) -> Conversation:
        """The resident is present: join the queue (idempotent once waiting or further).
        ``current``: the conversation as the caller just read it (a read less)."""
        if current is None or current.id != conversation_id:
            current = await self._conversations.get(conversation_id)
        if current.state != "authenticated":
            return current
        try:
            moved = await self._conversations.transition(
                conversation_id,
                "waiting",
                actor=actor,
                values={"waiting_since": self._clock()},
                current=current,
            )
        except InvalidTransitionError:  # joined meanwhile, through another request
            return await self._conversations.get(conversation_id)
        moved = await self.overflow(moved)
        self.poke()
        return moved

    async def overflow(self, conversation: Conversation) -> Conversation:
        """A resident who just joined a queue that is closed or full goes to its
        ``overflow_to`` queue instead, helped without their data: the attributes are deleted
        first, so no agent of that queue ever gets them."""
        queue = self.queue(conversation.queue)
        if conversation.state != "waiting" or queue.overflow_to is None:
            return conversation
        full = False
        if queue.max_waiting:

            def waiting(conn: Connection) -> int:
                return int(
                    conn.execute(
                        select(func.count()).where(
                            conversations.c.tenant == self._tenant.slug,
                            conversations.c.queue == queue.tag,
                            conversations.c.state == "waiting",
                            conversations.c.id != conversation.id,
                        )
                    ).scalar_one()
                )

            full = await self._db.run(waiting) >= queue.max_waiting
        if self.is_open(queue) and not full:
            return conversation
        moved = await self._conversations.drop_attributes(
            conversation.id,
            "overflowed",
            actor="queue",
            values={"queue": queue.overflow_to},
        )
        return moved or conversation

    async def estimate(self, tag: str | None) -> Estimate:
        queue = self.queue(tag)

        def work(conn: Connection) -> tuple[int, float | None, list[Member]]:
            waiting = conn.execute(
                select(func.count())
                .select_from(conversations)
                .where(
                    conversations.c.tenant == self._tenant.slug,
                    conversations.c.queue == queue.tag,
                    conversations.c.state == "waiting",
                )
            ).scalar_one()
            return int(waiting), self._handle(conn, queue), self._agents(conn, queue.tag)

        waiting, handle, pool = await self._db.run(work)
        handle_seconds = handle or queue.handle_seconds
        available = sum(1 for a in pool if _staffed(a))
        expected = expected_wait(waiting + 1, handle_seconds, available)
        is_open = self.is_open(queue)
        opens = None if is_open else queue.hours().next_opening(self._now())
        return Estimate(
            queue=queue.tag,
            is_open=is_open,
            opens_at=opens.timestamp() if opens else None,
            waiting=waiting,
            available_agents=available,
            handle_seconds=handle_seconds,
            expected_seconds=expected,
            long_wait=announce_long_wait(expected, queue.long_wait_seconds),
        )

    async def place(self, conversation: Conversation) -> Place | None:
        """One resident's place in line, counted in the database (no full read of the line)."""
        if conversation.state not in ("waiting", "offered") or conversation.waiting_since is None:
            return None
        queue = self.queue(conversation.queue)
        since = conversation.waiting_since

        def work(conn: Connection) -> list[Any]:
            params = {
                "tenant": self._tenant.slug,
                "queue": queue.tag,
                "since": since,
                "cid": conversation.id,
            }
            return _PLACE.run(conn, params).all()

        # A point read: the count stops at AHEAD_LIMIT index entries (tens of µs), less than
        # the hop to a worker thread and back; every waiting page and refresh asks it.
        rows = await self._db.run(work, point=True)
        ahead, handle = int(rows[0].ahead), rows[0].handle
        staffed = sum(
            1 for r in rows if r.queues is not None and serves(member_queues(r.queues), queue.tag)
        )
        expected = expected_wait(ahead + 1, handle or queue.handle_seconds, staffed)
        return Place(
            ahead + 1,
            expected,
            announce_long_wait(expected, queue.long_wait_seconds),
            self.is_open(queue),
            offered=conversation.state == "offered",
            beyond=ahead >= AHEAD_LIMIT,
        )

    async def places(self) -> dict[str, Place]:
        """Every waiting conversation's place in line, in one read."""

        def work(conn: Connection) -> tuple[list[Any], dict[str, float], list[Member]]:
            rows = conn.execute(
                select(
                    conversations.c.id,
                    conversations.c.queue,
                    conversations.c.channel,
                    conversations.c.waiting_since,
                    conversations.c.state,
                ).where(
                    conversations.c.tenant == self._tenant.slug,
                    conversations.c.state.in_(("waiting", "offered")),
                )
            ).all()
            if not rows:  # nobody in line (the queue tick asks every second)
                return [], {}, []
            return list(rows), self._handles(conn), self._agents(conn, None)

        rows, handles, pool = await self._db.run(work)
        lines: dict[str, list[Any]] = {}
        for row in rows:
            lines.setdefault(row.queue or "", []).append(row)
        result: dict[str, Place] = {}
        for tag, line in lines.items():
            queue = self.queue(tag)
            is_open = self.is_open(queue)
            line.sort(key=lambda r: (r.waiting_since or 0.0, r.id))
            available = sum(1 for a in pool if serves(a.queues, tag) and _staffed(a))
            for index, row in enumerate(line, start=1):
                beyond = index > AHEAD_LIMIT  # as place() tells it
                position = AHEAD_LIMIT + 1 if beyond else index
                expected = expected_wait(
                    position, handles.get(tag, queue.handle_seconds), available
                )
                result[row.id] = Place(
                    position,
                    expected,
                    announce_long_wait(expected, queue.long_wait_seconds),
                    is_open,
                    offered=row.state == "offered",
                    beyond=beyond,
                )
        return result

    # -- agents ----------------------------------------------------------------------------

    async def set_presence(self, agent_id: str, presence: str) -> None:
        """``available`` or ``paused``, as the agent chooses."""
        if presence not in ("available", "paused"):
            raise ValueError("presence must be available or paused")
        now = self._clock()

        def work(conn: Connection) -> None:
            conn.execute(
                update(agents)
                .where(agents.c.id == agent_id)
                .values(presence=presence, presence_since=now)
            )
            audit(
                conn,
                now,
                f"agent:{agent_id}",
                f"agent.{presence}",
                None,
                tenant=self._tenant.slug,
            )

        await self._db.run(work, write=True)
        await self._bus.publish(
            Event(self._tenant.slug, "queue", f"agent:{agent_id}", {"presence": presence}, now)
        )
        self.poke()

    async def accept(self, conversation_id: str, agent_id: str) -> Conversation:
        """The offered agent takes the conversation (409 when the offer is gone)."""
        conversation = await self._conversations.transition(
            conversation_id,
            "connected",
            actor=f"agent:{agent_id}",
            values={"connected_at": self._clock(), "offer_expires": None},
            where=and_(
                conversations.c.agent_id == agent_id,
                conversations.c.offer_expires > self._clock(),
            ),
        )
        self.poke()
        return conversation

    async def decline(self, conversation_id: str, agent_id: str) -> None:
        """Back to the head of the queue; the agent is paused until they say otherwise."""
        await self._return_offer(conversation_id, agent_id, actor=f"agent:{agent_id}")

    async def _return_offer(self, conversation_id: str, agent_id: str, *, actor: str) -> None:
        # Paused first, so the dispatcher cannot offer the conversation straight back.
        await self.set_presence(agent_id, "paused")
        await self._conversations.transition(
            conversation_id,
            "waiting",
            actor=actor,
            values={"agent_id": None, "offer_expires": None},
            where=conversations.c.agent_id == agent_id,
        )

    async def finish(self, conversation_id: str, agent_id: str) -> Conversation:
        """ "End conversation": wrap-up, or at once "ended" when wrap-up is configured off."""
        conversation = await self.held(conversation_id, agent_id)
        await self._conversations.end(conversation.id, actor=f"agent:{agent_id}", wrap_up=True)
        self.poke()
        return await self._conversations.get(conversation_id)

    async def close(self, conversation_id: str, agent_id: str) -> None:
        """ "Delete data now": end the conversation (or its wrap-up) and destroy the data."""
        await self.held(conversation_id, agent_id)
        await self._conversations.end(conversation_id, actor=f"agent:{agent_id}")
        await self._freed(agent_id)

    # -- transfers -----------------------------------------------------------------------

    async def transfer_to_queue(self, conversation_id: str, agent_id: str, queue: str) -> None:
        """Cold transfer: the conversation goes back in line, in ``queue``, ahead of those who
        came later (its first ``waiting_since`` counts); the agent loses it at once, and the
        next agent who accepts gets the attributes with it."""
        held = await self.held(conversation_id, agent_id)
        if queue not in self._queues:
            raise BadRequestError("No such queue")
        if held.state != "connected":
            raise InvalidTransitionError("Only a conversation you are in can be transferred")
        await self._conversations.transition(
            conversation_id,
            "waiting",
            actor=f"agent:{agent_id}",
            values={
                "agent_id": None,
                "queue": queue,
                "connected_at": None,
                "transfer_to": None,
                "transfer_expires": None,
                "call_state": "waiting" if held.call_state else None,
            },
            where=conversations.c.agent_id == agent_id,
            detail={"to_queue": queue},
        )
        await self._freed(agent_id)

    async def offer_transfer(self, conversation_id: str, agent_id: str, to_agent: str) -> None:
        """Warm transfer: offer the conversation to a colleague who serves its queue; the
        agent keeps it (and the resident keeps talking to them) until the colleague accepts."""
        held = await self.held(conversation_id, agent_id)
        if held.state != "connected":
            raise InvalidTransitionError("Only a conversation you are in can be transferred")
        colleagues = {a[0] for a in await self.colleagues(held, agent_id)}
        if to_agent not in colleagues:
            raise BadRequestError("That colleague cannot take this conversation")
        until = self._clock() + self.queue(held.queue).offer_seconds * TRANSFER_OFFERS
        offered = await self._conversations.annotate_checked(
            conversation_id,
            {"transfer_to": to_agent, "transfer_expires": until},
            where=and_(conversations.c.agent_id == agent_id, conversations.c.state == "connected"),
            event=("conversation.transfer_offered", f"agent:{agent_id}", {"to_agent": to_agent}),
        )
        if offered is None:
            raise InvalidTransitionError("The conversation changed meanwhile")

    async def answer_transfer(self, conversation_id: str, agent_id: str, *, accept: bool) -> None:
        """The colleague takes the offered conversation (from now on only they see its data),
        or declines it; the holder cancels it the same way (``accept=False``)."""
        conversation = await self._conversations.get(conversation_id)
        if agent_id not in (conversation.transfer_to, conversation.agent_id):
            raise NotFoundError("No such conversation")
        now = self._clock()
        if not accept:
            await self._conversations.annotate_checked(
                conversation_id,
                {"transfer_to": None, "transfer_expires": None},
                where=conversations.c.transfer_to.is_not(None),
                event=("conversation.transfer_declined", f"agent:{agent_id}", None),
            )
            return
        old = conversation.agent_id
        taken = await self._conversations.annotate_checked(
            conversation_id,
            {
                "agent_id": agent_id,
                "transfer_to": None,
                "transfer_expires": None,
                "connected_at": now,
            },
            where=and_(
                conversations.c.transfer_to == agent_id,
                conversations.c.transfer_expires > now,
                conversations.c.agent_id == old,
                conversations.c.state == "connected",
            ),
            event=("conversation.transferred", f"agent:{agent_id}", {"from_agent": old}),
        )
        if taken is None:
            raise InvalidTransitionError("This transfer is no longer on offer")
        if old is not None:
            await self._freed(old)

    async def colleagues(
        self, conversation: Conversation, agent_id: str
    ) -> list[tuple[str, str, str]]:
        """Who may get this conversation by a warm transfer: the other agents of its queue
        (available, busy or paused: they decide), as (id, name, state)."""

        def work(conn: Connection) -> list[tuple[str, str, str]]:
            pool = {a.agent_id: a.state for a in self._agents(conn, conversation.queue)}
            pool.pop(agent_id, None)
            if not pool:
                return []
            names = conn.execute(
                select(agents.c.id, agents.c.display_name).where(agents.c.id.in_(list(pool)))
            ).all()
            return sorted(((r.id, r.display_name, pool[r.id]) for r in names), key=lambda a: a[1])

        return await self._db.run(work)

    async def _freed(self, agent_id: str) -> None:
        """An agent's load went down: they count as idle from now, and the line moves."""
        now = self._clock()

        def idle_again(conn: Connection) -> None:
            conn.execute(update(agents).where(agents.c.id == agent_id).values(presence_since=now))

        await self._db.run(idle_again, write=True)
        self.poke()

    async def held(self, conversation_id: str, agent_id: str) -> Conversation:
        """The conversation, when this agent holds it; 404 otherwise (no existence oracle)."""
        conversation = await self._conversations.get(conversation_id)
        if conversation.agent_id != agent_id:
            raise NotFoundError("No such conversation")
        return conversation

    async def board(self, queues: Sequence[str]) -> list[dict[str, object]]:
        """The conversations a console lists: ids, states and times of the given queues."""

        def work(conn: Connection) -> list[Any]:
            return list(
                conn.execute(
                    select(conversations)
                    .where(
                        conversations.c.tenant == self._tenant.slug,
                        conversations.c.state.in_(ACTIVE),
                    )
                    .order_by(conversations.c.waiting_since, conversations.c.created_at)
                ).all()
            )

        rows = await self._db.run(work)
        return [_conversation(r).summary() for r in rows if serves(queues, r.queue)]

    async def stats(self) -> list[dict[str, object]]:
        """Per queue: counts, the longest wait and agent states; no personal data."""
        now = self._clock()

        def work(conn: Connection) -> tuple[list[Any], dict[str, float], list[Member]]:
            rows = conn.execute(
                select(
                    conversations.c.queue,
                    conversations.c.state,
                    func.count(),
                    func.min(conversations.c.waiting_since),
                )
                .where(
                    conversations.c.tenant == self._tenant.slug,
                    conversations.c.state.in_(ACTIVE),
                )
                .group_by(conversations.c.queue, conversations.c.state)
            ).all()
            handles = self._handles(conn)
            return list(rows), handles, self._agents(conn, None)

        rows, handles, pool = await self._db.run(work)
        out = []
        for queue in self._tenant.all_queues:
            counts = {state: 0 for state in ACTIVE}
            longest = 0.0
            for tag, state, count, since in rows:
                if tag == queue.tag:
                    counts[state] = count
                    if state == "waiting" and since is not None:
                        longest = max(longest, now - since)
            members = [a for a in pool if serves(a.queues, queue.tag)]
            agent_states: dict[str, int] = {}
            for a in members:
                agent_states[a.state] = agent_states.get(a.state, 0) + 1
            out.append(
                {
                    "queue": queue.tag,
                    "name": queue.name.nl,
                    "name_en": queue.name.get("en"),
                    "open": self.is_open(queue),
                    **counts,
                    "longest_wait_seconds": round(longest),
                    "handle_seconds": round(handles.get(queue.tag, queue.handle_seconds)),
                    "agents": agent_states,
                }
            )
        return out

    # -- the dispatcher --------------------------------------------------------------------

    def poke(self) -> None:
        """Something changed: run :meth:`tick` soon."""
        self._dirty.set()

    async def tick(self) -> int:
        """Return expired offers, make new offers, push places; returns the offers made."""
        await self._expire_offers()
        offers = await self._dispatch()
        await self._push_places()
        return offers

    async def run(self, interval: float = 1.0, gap: float = 0.05) -> None:
        """Tick when poked, and at least every ``interval`` (offers expire, queues open).

        Ticks are ``gap`` apart at least: under load every resident who joins pokes, and
        the pokes that come within ``gap`` of the last tick share the next one (a tick reads
        a few statements) instead of one tick each. A poke after a quiet moment ticks at once.
        """
        loop = asyncio.get_running_loop()
        last = -gap
        async with self._bus.subscribe(self._tenant.slug, "queue", internal=True) as sub:
            watcher = asyncio.create_task(self._watch(sub))
            try:
                while True:
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(interval):
                            await self._dirty.wait()
                    if (wait := last + gap - loop.time()) > 0:
                        await asyncio.sleep(wait)  # the pokes meanwhile join this tick
                    last = loop.time()
                    self._dirty.clear()
                    try:
                        await self.tick()
                    except Exception:
                        log.exception("queue tick failed", extra={"tenant": self._tenant.slug})
            finally:
                watcher.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await watcher

    async def _watch(self, sub: Any) -> None:
        while True:
            event = await sub.next(60.0)
            if event is not None:
                self._dirty.set()

    async def _expire_offers(self) -> None:
        now = self._clock()

        def work(conn: Connection) -> list[tuple[str, str]]:
            rows = _EXPIRED.run(conn, {"tenant": self._tenant.slug, "now": now}).all()
            return [(r.id, r.agent_id) for r in rows]

        # A point read: offered rows are few (agents x chats each), found by (tenant, state).
        for conversation_id, agent_id in await self._db.run(work, point=True):
            with contextlib.suppress(InvalidTransitionError, NotFoundError):
                await self._return_offer(conversation_id, agent_id, actor="queue:timeout")

    async def _dispatch(self) -> int:
        made = 0
        for queue in self._tenant.all_queues:
            if not self.is_open(queue):
                continue
            while (offered := await self._offer_one(queue)) is not None:
                made += int(offered)
        return made

    async def _offer_one(self, queue: Queue) -> bool | None:
        """``True``: an offer was made; ``False``: another dispatcher changed the line first,
        try again; ``None``: nothing (more) to offer."""

        def anyone(conn: Connection) -> bool:
            waiting = _ANYONE.run(conn, {"tenant": self._tenant.slug, "queue": queue.tag}).first()
            # The agents' load is read only when someone waits (every tick asks this).
            return waiting is not None and any(
                a.state == "available" for a in self._agents(conn, queue.tag)
            )

        # A point read (every tick asks): one waiting row, and the agents only if there is one.
        if not await self._db.run(anyone, point=True):
            return None  # nothing to offer or nobody to take it: no write lock
        now = self._clock()

        def work(conn: Connection) -> Any:
            if conn.dialect.name == "postgresql":
                # One dispatcher per queue at a time across instances, so an agent's load is
                # read and raised in one step (SQLite has one writer anyway).
                conn.execute(
                    text("SELECT pg_advisory_xact_lock(hashtext(:k))"),
                    {"k": f"dispatch:{self._tenant.slug}:{queue.tag}"},
                )
            rows = conn.execute(
                select(
                    conversations.c.id, conversations.c.channel, conversations.c.waiting_since
                ).where(
                    conversations.c.tenant == self._tenant.slug,
                    conversations.c.queue == queue.tag,
                    conversations.c.state == "waiting",
                )
            ).all()
            if not rows:
                return None
            line = [Waiting(r.id, r.channel or "chat", r.waiting_since or 0.0) for r in rows]
            pool = self._agents(conn, queue.tag)
            match = next_offer(line, pool, max_chats=queue.max_chats)
            if match is None:
                return None
            waiting, agent = match
            offered = conn.execute(
                update(conversations)
                .where(
                    conversations.c.id == waiting.conversation_id,
                    conversations.c.tenant == self._tenant.slug,
                    conversations.c.state == "waiting",
                )
                .values(
                    state="offered",
                    agent_id=agent.agent_id,
                    offer_expires=now + queue.offer_seconds,
                    last_activity=now,
                )
            )
            if offered.rowcount != 1:
                return RACED  # another instance changed it first
            audit(
                conn,
                now,
                "queue",
                "conversation.offered",
                waiting.conversation_id,
                {"agent": agent.agent_id},
                tenant=self._tenant.slug,
            )
            return conn.execute(
                select(conversations).where(conversations.c.id == waiting.conversation_id)
            ).one()

        row = await self._db.run(work, write=True)
        if row is None:
            return None
        if row is RACED:
            return False
        await self._conversations.publish(_conversation(row))
        return True

    async def _push_places(self) -> None:
        """Each waiting resident who is watching gets their position and expected wait.

        Not an offered one: "waiting" would undo the "offered" (or, once the agent accepted
        meanwhile, even the "connected") the resident was already told."""
        slug = self._tenant.slug
        if not self._bus.has_subscribers(slug, "conversation"):
            return  # nobody is watching a waiting page on this instance
        places = await self.places()
        now = self._clock()
        for conversation_id, place in places.items():
            if not place.offered and self._bus.has_subscribers(
                slug, "conversation", conversation_id
            ):
                await self._bus.publish(
                    Event(
                        slug,
                        "conversation",
                        conversation_id,
                        {
                            "state": "waiting",
                            "position": place.position,
                            "beyond": place.beyond,
                            "expected_seconds": place.expected_seconds,
                            "long_wait": place.long_wait,
                            "open": place.is_open,
                        },
                        now,
                    )
                )

    # -- helpers ---------------------------------------------------------------------------

    def _now(self) -> datetime:
        return datetime.fromtimestamp(self._clock(), UTC)

    def _handles(self, conn: Connection) -> dict[str, float]:
        """The moving average handle time of each queue that has finished conversations."""
        rows = conn.execute(select(queue_stats).where(queue_stats.c.tenant == self._tenant.slug))
        return {r.queue: r.handle_seconds for r in rows}

    def _handle(self, conn: Connection, queue: Queue) -> float | None:
        params = {"tenant": self._tenant.slug, "queue": queue.tag}
        return cast(float | None, _HANDLE.run(conn, params).scalar_one_or_none())

    def _agents(self, conn: Connection, queue: str | None) -> list[Member]:
        """The tenant's agents (of ``queue`` when given) with their load across tenants."""
        rows = _MEMBERS.run(conn, {"tenant": self._tenant.slug}).all()
        members = [r for r in rows if queue is None or serves(member_queues(r.queues), queue)]
        if not members:
            return []
        load = conn.execute(_LOAD, {"ids": [r.id for r in members]}).all()
        counts: dict[str, dict[str, int]] = {}
        for agent_id, channel, conv_state, count in load:
            c = counts.setdefault(agent_id, {})
            key = "wrap_up" if conv_state == "wrap_up" else (channel or "chat")
            c[key] = c.get(key, 0) + count
        out = []
        for r in members:
            c = counts.get(r.id, {})
            state: AgentState = "paused" if r.presence != "available" else "available"
            if state == "available" and c.get("wrap_up"):
                state = "wrap_up"
            elif state == "available" and (c.get("phone") or c.get("video")):
                state = "busy"
            out.append(
                Member(
                    agent_id=r.id,
                    state=state,
                    calls=c.get("phone", 0),
                    chats=c.get("chat", 0),
                    videos=c.get("video", 0),
                    idle_since=r.presence_since,
                    queues=member_queues(r.queues),
                )
            )
        return out


@dataclass(frozen=True)
class Member(Agent):
    """An agent with the queues of their membership in this tenant."""

    queues: tuple[str, ...] = ("*",)


def _staffed(agent: Agent) -> bool:
    """Counts for the expected wait: not paused. A busy agent will be free again; counting
    only idle ones would make every wait "unknown" exactly when all agents are busy."""
    return agent.state != "paused"
