"""The in-process event bus: fan-out by tenant, topic and key; slow subscribers are dropped."""

from __future__ import annotations

import pytest

from idcontact.events import Event, LocalBus

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
        for n in range(3):
            await bus.publish(Event("a", "queue", "q", {"n": n}))
        assert slow.dropped
        assert await slow.next(0.01) is not None
        assert await slow.next(0.01) is not None
        with pytest.raises(ConnectionResetError):
            await slow.next(0.01)
