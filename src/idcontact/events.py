"""Live events for agent consoles and waiting residents: ids and states, never values.

A :class:`Bus` fans events out to subscribers. :class:`LocalBus` serves one process; a bus
across instances (Redis pub/sub, PostgreSQL NOTIFY) implements the same two methods. A
subscriber that falls behind is dropped rather than allowed to grow without bound: its
stream ends, and the console reconnects and reloads its list.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import asdict, dataclass, field
from typing import Literal, Protocol

Topic = Literal["queue", "conversation", "agent"]


@dataclass(frozen=True)
class Event:
    """One change. ``queue`` events go to a tenant's consoles, ``conversation`` events to
    the resident of that one conversation, ``agent`` events (presence) to consoles too."""

    tenant: str
    topic: Topic
    key: str
    """``queue``: the queue tag; ``conversation``: the conversation id; ``agent``: its id."""
    data: dict[str, object] = field(default_factory=dict)
    """Ids, states, numbers and times only."""
    at: float = 0.0

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


class Subscription:
    """An async iterator of events; closed when it falls ``limit`` events behind."""

    def __init__(self, limit: int) -> None:
        self._queue: asyncio.Queue[Event | None] = asyncio.Queue(limit)
        self.dropped = False

    def offer(self, event: Event) -> None:
        try:
            self._queue.put_nowait(event)
        except asyncio.QueueFull:
            self.dropped = True

    async def next(self, heartbeat: float) -> Event | None:
        """The next event, or ``None`` after ``heartbeat`` seconds (time for a keep-alive)."""
        if self.dropped and self._queue.empty():
            raise ConnectionResetError("subscriber fell behind")
        try:
            async with asyncio.timeout(heartbeat):
                return await self._queue.get()
        except TimeoutError:
            return None


class Bus(Protocol):
    async def publish(self, event: Event) -> None: ...

    def subscribe(
        self, tenant: str, topic: Topic, key: str | None = None
    ) -> contextlib.AbstractAsyncContextManager[Subscription]: ...

    def has_subscribers(self, tenant: str, topic: Topic, key: str) -> bool: ...


class LocalBus:
    """In-process fan-out: publishing costs one dictionary lookup per matching subscriber."""

    def __init__(self, limit: int = 1000) -> None:
        self._limit = limit
        # (tenant, topic, key or None for "all keys of the topic") → subscribers
        self._subs: dict[tuple[str, Topic, str | None], set[Subscription]] = {}

    async def publish(self, event: Event) -> None:
        for key in (event.key, None):
            for sub in self._subs.get((event.tenant, event.topic, key), ()):
                sub.offer(event)

    def has_subscribers(self, tenant: str, topic: Topic, key: str) -> bool:
        return bool(self._subs.get((tenant, topic, key)) or self._subs.get((tenant, topic, None)))

    @contextlib.asynccontextmanager
    async def subscribe(
        self, tenant: str, topic: Topic, key: str | None = None
    ) -> AsyncIterator[Subscription]:
        sub = Subscription(self._limit)
        subs = self._subs.setdefault((tenant, topic, key), set())
        subs.add(sub)
        try:
            yield sub
        finally:
            subs.discard(sub)
            if not subs:
                self._subs.pop((tenant, topic, key), None)

    @property
    def subscriber_count(self) -> int:
        return sum(len(s) for s in self._subs.values())
