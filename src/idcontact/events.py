"""Live events for agent consoles and waiting residents: ids and states, never values.

A :class:`Bus` fans events out to subscribers. :class:`LocalBus` serves one process; a bus
across instances (Redis pub/sub, PostgreSQL NOTIFY) implements the same two methods. A
subscriber that falls behind is dropped rather than allowed to grow without bound: its
stream ends, and the console reconnects and reloads its list.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import asdict, dataclass, field
from typing import Any, Literal, Protocol

from redis.asyncio import Redis

log = logging.getLogger(__name__)

Topic = Literal["queue", "conversation"]


@dataclass(frozen=True)
class Event:
    """One change. ``queue`` events go to a tenant's consoles (conversations by queue tag, an
    agent's presence as ``agent:<id>``), ``conversation`` events to that one resident."""

    tenant: str
    topic: Topic
    key: str
    """``queue``: the queue tag or ``agent:<id>``; ``conversation``: the conversation id."""
    data: dict[str, object] = field(default_factory=dict)
    """Ids, states, numbers and times only."""
    at: float = 0.0

    def as_dict(self) -> dict[str, object]:
        return asdict(self)

    @functools.cached_property
    def sse(self) -> bytes:
        """This event as one Server-Sent Event, encoded once for every console."""
        body = json.dumps({"key": self.key, "at": self.at, **self.data}, separators=(",", ":"))
        return f"event: {self.topic}\ndata: {body}\n\n".encode()


class Subscription:
    """Events for one subscriber, in order. A subscriber that falls ``limit`` events or
    ``max_lag`` seconds behind is dropped: stale events help nobody, and a console that
    reconnects reloads its list anyway."""

    def __init__(
        self, limit: int, max_lag: float = 5.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._clock = clock
        self._items: deque[tuple[float, Event]] = deque()
        self._ready = asyncio.Event()
        self._limit = limit
        self._max_lag = max_lag
        self.dropped = False
        self.internal = False

    def offer(self, event: Event) -> None:
        if self.dropped:
            return
        now = self._clock()
        if len(self._items) >= self._limit or (
            self._items and now - self._items[0][0] > self._max_lag
        ):
            self.dropped = True
            self._items.clear()
        else:
            self._items.append((now, event))
        self._ready.set()

    def drop(self) -> None:
        """End this subscriber's stream now (the instance drains): it reconnects elsewhere."""
        self.dropped = True
        self._items.clear()
        self._ready.set()

    def wake(self) -> None:
        """Make a waiting :meth:`next` return ``None`` now: its owner has something else to see
        to (a socket whose browser left), and no task per wait is needed to race it."""
        self._ready.set()

    async def next(self, heartbeat: float | None = None) -> Event | None:
        """The next event, or ``None`` after ``heartbeat`` seconds (time for a keep-alive) or
        on :meth:`wake`."""
        if not self._items and not self.dropped:
            self._ready.clear()
            if heartbeat is None:
                await self._ready.wait()
            else:
                try:
                    async with asyncio.timeout(heartbeat):
                        await self._ready.wait()
                except TimeoutError:
                    return None
        if self.dropped:
            raise ConnectionResetError("subscriber fell behind")
        return self._items.popleft()[1] if self._items else None

    def drain(self) -> list[Event]:
        """The events already waiting, without waiting for more."""
        if self.dropped:
            raise ConnectionResetError("subscriber fell behind")
        out = [event for _, event in self._items]
        self._items.clear()
        return out


class Bus(Protocol):
    async def publish(self, *events: Event) -> None:
        """Fan these events out (several at once: one round trip for a sweeper's batch)."""
        ...

    def subscribe(
        self, tenant: str, topic: Topic, key: str | None = None, *, internal: bool = False
    ) -> contextlib.AbstractAsyncContextManager[Subscription]:
        """``internal``: the instance's own work (the dispatcher, a call), which a drain
        leaves alone; the rest are browsers' streams."""
        ...

    def has_subscribers(self, tenant: str, topic: Topic, key: str | None = None) -> bool: ...


class LocalBus:
    """In-process fan-out: publishing costs one dictionary lookup per matching subscriber."""

    def __init__(
        self,
        limit: int = 1000,
        max_lag: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
        *,
        observe: Callable[[float], None] | None = None,
    ) -> None:
        self._limit = limit
        self._max_lag = max_lag
        self._clock = clock
        self._observe = observe
        """Told each event's age (seconds since its change) on arrival: the push latency."""
        # (tenant, topic, key or None for "all keys of the topic") → subscribers
        self._subs: dict[tuple[str, Topic, str | None], set[Subscription]] = {}

    async def publish(self, *events: Event) -> None:
        for event in events:
            if self._observe is not None and event.at:
                self._observe(time.time() - event.at)
            for key in (event.key, None):
                for sub in self._subs.get((event.tenant, event.topic, key), ()):
                    sub.offer(event)

    def has_subscribers(self, tenant: str, topic: Topic, key: str | None = None) -> bool:
        """Whether anyone listens to ``key`` (any key of the topic when ``None``)."""
        if key is None:
            return any(t == tenant and tp == topic for t, tp, _ in self._subs)
        return bool(self._subs.get((tenant, topic, key)) or self._subs.get((tenant, topic, None)))

    @contextlib.asynccontextmanager
    async def subscribe(
        self, tenant: str, topic: Topic, key: str | None = None, *, internal: bool = False
    ) -> AsyncIterator[Subscription]:
        sub = Subscription(self._limit, self._max_lag, self._clock)
        sub.internal = internal
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

    def drop_all(self) -> None:
        """End every browser's stream (draining: consoles reconnect to another instance)."""
        for subs in self._subs.values():
            for sub in subs:
                if not sub.internal:
                    sub.drop()


class RedisBus:
    """Events across instances: published to one Redis pub/sub channel, and every instance
    (this one too) fans what it hears out to its own subscribers.

    Events are hints, not the record: the database is. A publish that fails is logged and
    reaches this instance's subscribers only; consoles reload their list when they reconnect,
    and the dispatcher ticks anyway.

    Without Redis the bus is *degraded*: it keeps reconnecting (with backoff) and ends its
    browsers' streams at each attempt, so consoles fall back to reloading their list every few
    seconds; when Redis is back it ends them once more, so they catch up at once.
    """

    RETRY: tuple[float, float] = (0.2, 5.0)

    def __init__(
        self,
        redis: Redis,
        channel: str = "idcontact:events",
        *,
        observe: Callable[[float], None] | None = None,
    ) -> None:
        self._redis = redis
        self._channel = channel
        self._local = LocalBus(observe=observe)
        self._reader: asyncio.Task[None] | None = None
        self._first = asyncio.Event()
        self.degraded = False

    async def start(self) -> None:
        """Subscribe; return once subscribed, or after the first failed attempt (the instance
        then starts degraded and keeps trying)."""
        self._reader = asyncio.create_task(self._read())
        await self._first.wait()

    async def _read(self) -> None:
        delay = self.RETRY[0]
        while True:
            pubsub: Any = self._redis.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(self._channel)
                if self.degraded:
                    log.info("event bus: Redis is back; consoles reload")
                    self.degraded = False
                    self._local.drop_all()  # catch up: browsers reconnect and reload
                self._first.set()
                delay = self.RETRY[0]
                async for message in pubsub.listen():
                    try:
                        await self._local.publish(Event(**json.loads(message["data"])))
                    except (TypeError, ValueError):
                        log.warning("ignored a malformed event on the bus")
            except Exception as exc:  # unreachable, refused, reset: fall back, try again
                if not self.degraded:
                    log.warning(
                        "event bus: Redis unreachable; consoles fall back to reloading",
                        extra={"error": type(exc).__name__},
                    )
                    self.degraded = True
                self._first.set()
                self._local.drop_all()
            finally:
                with contextlib.suppress(Exception):
                    await pubsub.aclose()
            await asyncio.sleep(delay)
            delay = min(delay * 2, self.RETRY[1])

    async def close(self) -> None:
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader
        await self._redis.aclose()

    async def publish(self, *events: Event) -> None:
        try:
            if len(events) == 1:
                await self._redis.publish(self._channel, json.dumps(events[0].as_dict()))
            elif events:
                async with self._redis.pipeline(transaction=False) as pipe:
                    for event in events:
                        pipe.publish(self._channel, json.dumps(event.as_dict()))
                    await pipe.execute()
        except Exception:  # the change itself is committed; see the class docstring
            log.warning("could not publish an event", exc_info=True)
            await self._local.publish(*events)  # this instance's consoles at least

    def subscribe(
        self, tenant: str, topic: Topic, key: str | None = None, *, internal: bool = False
    ) -> contextlib.AbstractAsyncContextManager[Subscription]:
        return self._local.subscribe(tenant, topic, key, internal=internal)

    def has_subscribers(self, tenant: str, topic: Topic, key: str | None = None) -> bool:
        return self._local.has_subscribers(tenant, topic, key)

    def drop_all(self) -> None:
        self._local.drop_all()

    async def ping(self) -> bool:
        """Whether Redis answers (``/readyz``)."""
        return bool(await self._redis.ping())
