"""The in-process event bus: fan-out by tenant, topic and key; slow subscribers are dropped."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from idcontact.events import Event, LocalBus
from tests.conftest import AppFactory, Instance, _reset_postgres, demo_settings
from tests.flows.test_console import waiting_conversation
from tests.services import postgres_url, redis_url

pytestmark = pytest.mark.anyio


async def test_events_reach_only_matching_subscribers() -> None:
    bus = LocalBus()
    async with (
        bus.subscribe("a", "queue") as every_queue,
        bus.subscribe("a", "conversation", "c1") as one,
        bus.subscribe("b", "queue") as other_tenant,
    ):
        assert bus.has_subscribers("a", "conversation", "c1")
        assert not bus.has_subscribers("a", "conversation", "c2")
        await bus.publish(Event("a", "queue", "general", {"state": "waiting"}))
        await bus.publish(Event("a", "conversation", "c2", {"state": "ended"}))
        await bus.publish(Event("a", "conversation", "c1", {"state": "offered"}))
        got = await every_queue.next(0.1)
        assert got is not None and got.key == "general"
        mine = await one.next(0.1)
        assert mine is not None and mine.data == {"state": "offered"}  # not c2's
        assert await other_tenant.next(0.01) is None  # tenant b hears nothing of a
    assert bus.subscriber_count == 0


async def test_a_subscriber_that_falls_behind_is_dropped() -> None:
    bus = LocalBus(limit=2)
    async with bus.subscribe("a", "queue") as slow:
        await bus.publish(Event("a", "queue", "q", {"n": 0}))
        assert (await slow.next(0.01)) is not None  # keeping up
        for n in range(3):
            await bus.publish(Event("a", "queue", "q", {"n": n}))
        assert slow.dropped
        with pytest.raises(ConnectionResetError):  # stale events are not handed out
            await slow.next(0.01)


async def test_a_subscriber_that_lags_in_time_is_dropped() -> None:
    now = [1000.0]
    bus = LocalBus(max_lag=5.0, clock=lambda: now[0])
    async with bus.subscribe("a", "queue") as slow:
        await bus.publish(Event("a", "queue", "q"))
        now[0] += 6  # the oldest undelivered event is now older than 5 s
        await bus.publish(Event("a", "queue", "q"))
        assert slow.dropped


async def test_a_wait_without_heartbeat_ends_on_an_event_or_a_wake() -> None:
    """A chat socket waits on the bus with no timer and no task per wait; its reader wakes it
    when the browser leaves."""
    bus = LocalBus()
    async with bus.subscribe("a", "conversation", "c1") as sub:
        waiting = asyncio.create_task(sub.next())
        await asyncio.sleep(0)
        assert not waiting.done()  # no timeout: it waits for as long as nothing happens
        await bus.publish(Event("a", "conversation", "c1", {"chat": 1}))
        got = await asyncio.wait_for(waiting, 1.0)
        assert got is not None and got.data == {"chat": 1}
        waiting = asyncio.create_task(sub.next())
        await asyncio.sleep(0)
        sub.wake()
        assert await asyncio.wait_for(waiting, 1.0) is None  # woken, no event to hand out
        await bus.publish(Event("a", "conversation", "c1", {"chat": 2}))
        sub.wake()  # a wake does not lose an event that is already there
        got = await sub.next()
        assert got is not None and got.data == {"chat": 2}


async def test_events_are_encoded_once_for_every_console() -> None:
    event = Event("a", "queue", "general", {"id": "c1", "state": "waiting"}, at=1.5)
    assert event.sse == (
        b'event: queue\ndata: {"key":"general","at":1.5,"id":"c1","state":"waiting"}\n\n'
    )
    assert event.sse is event.sse


@pytest.mark.postgres
@pytest.mark.redis
async def test_a_change_on_one_instance_reaches_consoles_on_another(
    make_app: AppFactory, tmp_path: Path
) -> None:
    url = postgres_url()
    await _reset_postgres(url)
    settings = demo_settings(tmp_path, database_url=url, redis_url=redis_url())
    first: Instance = await make_app(settings)
    second: Instance = await make_app(settings)
    async with second.services.bus.subscribe("default", "queue") as console:
        conversation_id = await waiting_conversation(first)  # created and queued on `first`
        seen: list[object] = []
        while "waiting" not in seen:
            event = await console.next(5.0)
            assert event is not None, "no event reached the other instance within 5 s"
            if event.data.get("id") == conversation_id:
                seen.append(event.data.get("state"))
    assert seen[-1] == "waiting"


@pytest.mark.redis
async def test_a_batch_of_events_crosses_redis_in_order() -> None:
    """The sweeper publishes a batch at once (one pipelined round trip): every event of it
    reaches the other instance, in order."""
    from redis.asyncio import Redis

    from idcontact.events import RedisBus

    channel = "idcontact:test-batch"
    sender = RedisBus(Redis.from_url(redis_url()), channel)
    receiver = RedisBus(Redis.from_url(redis_url()), channel)
    await sender.start()
    await receiver.start()
    try:
        async with receiver.subscribe("a", "conversation") as other_instance:
            batch = [Event("a", "conversation", f"c{n}", {"n": n}) for n in range(50)]
            await sender.publish(*batch)
            got = [await other_instance.next(5.0) for _ in batch]
        assert [e.data["n"] for e in got if e is not None] == list(range(50))
    finally:
        await sender.close()
        await receiver.close()
