"""Short garbage-collector pauses while thousands of conversations stay open.

CPython 3.11's collector stops the whole process for a full walk of every object it tracks,
and starts one each time a quarter more objects have survived into its oldest generation.
An open chat holds ~440 tracked objects (two sockets); at 2,000 open chats a walk took
~0.7 s, and every message that arrived meanwhile waited (bench/README.md, chat).

:class:`HeapKeeper` moves what survived into the frozen generation, which no collection walks,
every ``freeze_every`` seconds (a freeze costs the same for ten objects as for a million), after
a collection of everything not yet frozen (only what survived since the last round: a few ms)
so that nothing already dead is frozen. A young collection would not do: a request's objects
reach the oldest generation while it runs, and under load 6 objects per flow died in a cycle
there and were frozen. Objects that die in a cycle while
frozen wait for the walk of everything, ``full_every`` seconds apart, which also thaws what is
still alive back into the collector's reach first. Objects freed by their reference count, as
a closed chat is, never wait for anything.
"""

from __future__ import annotations

import asyncio
import gc
import time
from collections.abc import Callable


class HeapKeeper:
    """The serving process's collector policy (``[ops] gc_freeze_seconds``, ``gc_full_minutes``;
    docs/operations.md). Constructed by ``idcontact serve``, run by the app's lifespan."""

    def __init__(
        self,
        freeze_every: float,
        full_every: float,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.freeze_every = freeze_every
        self.full_every = full_every
        self._clock = clock
        self._last_full = clock()
        self.last_full_seconds = 0.0
        """How long the last walk of everything took (``idcontact_gc_full_walk_seconds``)."""

    def settle(self) -> None:
        """Once, before serving: everything built so far (modules, routes, models, settings:
        ~180,000 objects) lives as long as the process; no walk needs to see it again."""
        gc.collect()
        gc.freeze()
        self._last_full = self._clock()

    def step(self) -> None:
        """One round: collect what is not frozen and freeze what survived, or, once
        ``full_every`` has passed, thaw everything, walk it all and freeze what is left."""
        if self._clock() - self._last_full >= self.full_every:
            started = time.perf_counter()
            gc.unfreeze()
            gc.collect()
            gc.freeze()
            self.last_full_seconds = time.perf_counter() - started
            self._last_full = self._clock()
        else:
            gc.collect()
            gc.freeze()

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.freeze_every)
            self.step()
