"""The serving process's collector policy, with the real collector: what lives is frozen, what
died before is collected first, and what dies in a cycle while frozen waits for the full walk."""

from __future__ import annotations

import asyncio
import gc
import time
import weakref
from collections.abc import Iterator

import pytest

from idcontact.heap import HeapKeeper
from tests.conftest import AppFactory
from tests.test_ops import sample


class Node:
    """A container that can be in a cycle and be watched through a weak reference."""

    def __init__(self) -> None:
        self.other: object = None


def frozen(obj: object) -> bool:
    """Tracked by the collector, yet in none of the generations it walks."""
    return gc.is_tracked(obj) and not any(
        any(o is obj for o in gc.get_objects(generation)) for generation in range(3)
    )


def live_cycle() -> tuple[Node, Node, weakref.ref[Node]]:
    """Two nodes that hold each other, and a weak reference that tells when they are gone."""
    a, b = Node(), Node()
    a.other, b.other = b, a
    return a, b, weakref.ref(a)


def cycle() -> weakref.ref[Node]:
    """A cycle that is dead on return: only a collection frees it."""
    return live_cycle()[2]


@pytest.fixture
def now() -> Iterator[list[float]]:
    yield [1000.0]
    gc.unfreeze()  # leave the test process's collector as it was


def test_settle_freezes_what_the_process_built(now: list[float]) -> None:
    kept = [[i] for i in range(1000)]  # containers that outlive the call, as the app's do
    before = gc.get_freeze_count()
    HeapKeeper(10, 3600, clock=lambda: now[0]).settle()
    assert gc.get_freeze_count() >= before + len(kept)
    assert frozen(kept[0])


def test_a_step_freezes_survivors_but_collects_the_dead_first(now: list[float]) -> None:
    keeper = HeapKeeper(10, 3600, clock=lambda: now[0])
    gc.disable()  # no automatic collection may do the step's work
    try:
        dead = cycle()
        alive = Node()
        assert dead() is not None and not frozen(alive)
        keeper.step()
        assert dead() is None  # a dead cycle is never frozen
        assert frozen(alive)
    finally:
        gc.enable()


def test_a_step_collects_a_dead_cycle_that_reached_the_oldest_generation(
    now: list[float],
) -> None:
    """A request's objects can outlive two of Python's own young collections (the request was
    still running) and die in a cycle after: a young collection at the step would not see
    them, and the freeze would keep them for an hour (under load, ~6 objects per flow)."""
    keeper = HeapKeeper(10, 3600, clock=lambda: now[0])
    gc.disable()
    try:
        a, b, died = live_cycle()
        gc.collect(1)  # what Python does by itself while the request runs: into generation 2
        assert any(o is a for o in gc.get_objects(2))
        del a, b  # the request ends: a dead cycle, unfrozen, in the oldest generation
        keeper.step()
        assert died() is None
    finally:
        gc.enable()


def test_a_cycle_that_dies_frozen_waits_for_the_full_walk(now: list[float]) -> None:
    keeper = HeapKeeper(10, 3600, clock=lambda: now[0])
    gc.disable()
    try:
        a, b, died = live_cycle()
        keeper.step()
        del a, b  # dies in a cycle, frozen
        now[0] += 3599
        keeper.step()
        gc.collect()  # even a full collection does not walk the frozen generation
        assert died() is not None
        now[0] += 1
        keeper.step()  # the hour is up: thaw, walk everything, freeze the rest
        assert died() is None
        assert keeper.last_full_seconds > 0
    finally:
        gc.enable()


@pytest.mark.anyio
async def test_the_app_runs_the_keeper_and_reports_it(
    now: list[float], make_app: AppFactory
) -> None:
    keeper = HeapKeeper(0.01, 3600)
    instance = await make_app(heap=keeper)
    alive = Node()
    deadline = time.monotonic() + 10
    while not frozen(alive) and time.monotonic() < deadline:
        await asyncio.sleep(0.02)  # the keeper's task runs on this loop
    assert frozen(alive)
    keeper.last_full_seconds = 0.25
    page = (await instance.client.get("/metrics")).text
    frozen_count = sample(page, "idcontact_gc_frozen_objects")
    assert frozen_count is not None and frozen_count >= 1
    assert sample(page, "idcontact_gc_full_walk_seconds") == 0.25
