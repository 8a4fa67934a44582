"""``serve --workers N``: N processes on one port; each new connection goes to the worker with
the fewest open ones.

Neither way of sharing a port among processes spreads the load evenly. uvicorn's supervisor
gives every worker the same listening socket: whichever worker wakes first accepts a whole burst
of new connections, and keep-alive holds them there (in the benchmark one of two workers served
all 32 clients). One ``SO_REUSEPORT`` socket per worker lets the kernel spread connections by
their address hash, which is even only on average: 32 clients split 23 to 9 in one run, and the
busier worker, with 72 % of the load, set the latency for all.

So this supervisor listens itself and hands each accepted connection (its file descriptor,
over a Unix socket, ``SCM_RIGHTS``) to the worker that holds the fewest open connections at that
moment (as counted by the worker's own server, WebSockets included). Handing over costs the
supervisor ~55 µs of CPU per connection, not per request: keep-alive connections stay where
they are. Connections are taken once every worker is ready. A worker that dies is replaced;
while none is ready, new connections wait in the port's backlog.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import multiprocessing
import os
import selectors
import signal
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing.process import BaseProcess
from types import FrameType
from typing import Any

import uvicorn
from uvicorn.config import STARTUP_FAILURE

log = logging.getLogger("idcontact.workers")

RESTART_PAUSE = 1.0
"""Seconds between starts of one worker slot, so a worker that keeps failing does not spin."""

ALL_READY_SECONDS = 60.0
"""After this long, connections are accepted even if a worker is still starting."""

_READY, _STOPPING, _CONNECTION = b"R", b"S", b"C"

Counts = ctypes.Array[ctypes.c_int64]
"""Shared memory, one slot per worker, written by that worker only."""


def listener(host: str, port: int, backlog: int) -> socket.socket:
    """A TCP socket listening on ``host``:``port``."""
    family, kind, proto, _, address = socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(backlog)
    except BaseException:
        sock.close()
        raise
    return sock


class _Watched(set[Any]):
    """uvicorn's set of a server's open connections (WebSockets included), telling the worker
    each time it changes."""

    def __init__(self, changed: Callable[[], None]) -> None:
        super().__init__()
        self._changed = changed

    def add(self, item: Any) -> None:
        super().add(item)
        self._changed()

    def discard(self, item: Any) -> None:
        super().discard(item)
        self._changed()

    def remove(self, item: Any) -> None:
        super().remove(item)
        self._changed()


class _Adopting(uvicorn.Server):
    """A worker's server: no socket of its own; it serves the connections its supervisor hands
    it, and keeps ``closed[index]`` at how many of them have ended."""

    def __init__(
        self, config: uvicorn.Config, channel: socket.socket, closed: Counts, index: int
    ) -> None:
        super().__init__(config)
        self._channel = channel
        self._closed = closed
        self._index = index
        self._received = 0
        self._tasks: set[asyncio.Task[None]] = set()
        self.server_state.connections = _Watched(self._count)

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets=[])
        loop = asyncio.get_running_loop()
        self._channel.setblocking(False)
        loop.add_reader(self._channel.fileno(), self._receive)
        self._channel.send(_READY)

    def _protocol(self) -> asyncio.Protocol:
        # As uvicorn's own startup builds the protocol for a connection it accepted.
        return self.config.http_protocol_class(  # type: ignore[call-arg]
            config=self.config, server_state=self.server_state, app_state=self.lifespan.state
        )

    def _receive(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                message, fds, _, _ = socket.recv_fds(self._channel, 16, 16)
            except BlockingIOError:
                return
            except OSError:
                message, fds = b"", []
            if not message:  # the supervisor is gone: stop as on SIGTERM
                loop.remove_reader(self._channel.fileno())
                self.should_exit = True
                return
            for fd in fds:
                self._received += 1
                task = loop.create_task(self._adopt(socket.socket(fileno=fd)))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)

    async def _adopt(self, sock: socket.socket) -> None:
        sock.setblocking(False)
        try:
            await asyncio.get_running_loop().connect_accepted_socket(self._protocol, sock)
        except OSError:  # the client left before we could take it
            sock.close()
            self._count()

    def _count(self) -> None:
        # One received but not taken up yet counts as closed for that moment: the supervisor
        # may then hand this worker one connection more than its share, never one less.
        self._closed[self._index] = self._received - len(self.server_state.connections)

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        with contextlib.suppress(OSError):
            asyncio.get_running_loop().remove_reader(self._channel.fileno())
            self._channel.send(_STOPPING)
        await super().shutdown(sockets)


def _worker(config: uvicorn.Config, channel: socket.socket, closed: Counts, index: int) -> None:
    """One worker process: uvicorn serving what the supervisor hands it."""
    _Adopting(config, channel, closed, index).run()


@dataclass
class _Slot:
    """One worker as the supervisor sees it."""

    process: BaseProcess
    channel: socket.socket
    started: float
    ready: bool = False
    sent: int = 0
    """Connections handed to this worker; ``closed[index]`` of them have ended."""


@dataclass
class _Supervisor:
    """The serving process: its workers, its listening socket, and one selector for both."""

    config: uvicorn.Config
    sock: socket.socket
    closed: Counts
    spawn: multiprocessing.context.SpawnContext
    slots: list[_Slot] = field(default_factory=list)
    selector: selectors.BaseSelector = field(default_factory=selectors.DefaultSelector)
    listening: bool = False
    opened: bool = False
    began: float = field(default_factory=time.monotonic)

    def start(self, index: int) -> _Slot:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.closed[index] = 0
        process = self.spawn.Process(
            target=_worker, args=(self.config, theirs, self.closed, index), name="idcontact-worker"
        )
        try:
            process.start()
        finally:
            theirs.close()
        ours.setblocking(False)
        self.selector.register(ours, selectors.EVENT_READ, index)
        return _Slot(process, ours, time.monotonic())

    def stop_listening(self) -> None:
        if self.listening:
            self.selector.unregister(self.sock)
            self.listening = False

    def forget(self, slot: _Slot) -> None:
        """The worker's channel is closed or closing: nothing more goes to it."""
        slot.ready = False
        with contextlib.suppress(KeyError, ValueError):
            self.selector.unregister(slot.channel)
        slot.channel.close()

    def pump(self, timeout: float, *, accept: bool = True) -> None:
        """Wait up to ``timeout`` for workers' messages and new connections, and handle them.

        Connections are accepted once every worker is ready (or ``ALL_READY_SECONDS`` after
        the start): keep-alive would hold the first ones where they went, and a first worker
        ready alone would keep all of them. After that, while any worker is ready."""
        if not self.opened:
            self.opened = all(slot.ready for slot in self.slots) or (
                time.monotonic() - self.began > ALL_READY_SECONDS
            )
        wanted = accept and self.opened and any(slot.ready for slot in self.slots)
        if wanted and not self.listening:
            self.selector.register(self.sock, selectors.EVENT_READ, None)
            self.listening = True
        elif not wanted:
            self.stop_listening()
        for key, _ in self.selector.select(timeout):
            if key.data is None:
                self._accept()
            else:
                self._message(self.slots[key.data])

    def _message(self, slot: _Slot) -> None:
        try:
            message = slot.channel.recv(16)
        except BlockingIOError:
            return
        except OSError:
            message = b""
        if message == _READY:
            slot.ready = True
            log.info("worker ready", extra={"pid": slot.process.pid})
        elif message == _STOPPING:
            slot.ready = False
        else:  # the worker ended
            self.forget(slot)

    def _accept(self) -> None:
        for _ in range(64):
            try:
                conn, _ = self.sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError:  # e.g. too many open files: the rest wait in the backlog
                log.warning("could not accept a connection", exc_info=True)
                return
            with conn:
                self._hand_over(conn)

    def _hand_over(self, conn: socket.socket) -> None:
        ready = [(slot.sent - self.closed[i], i) for i, slot in enumerate(self.slots) if slot.ready]
        for _, index in sorted(ready):
            slot = self.slots[index]
            try:
                socket.send_fds(slot.channel, [_CONNECTION], [conn.fileno()])
            except BlockingIOError:  # this worker is far behind: try the next
                continue
            except OSError:
                self.forget(slot)
                continue
            slot.sent += 1
            return
        log.warning("no worker could take a connection; closed")


def serve(config: uvicorn.Config, workers: int, *, stop_seconds: float) -> int:
    """Run ``workers`` processes until SIGTERM or SIGINT; returns the exit status.

    The port is held here from the start: taken by another program, it fails at once with a
    clear error; and ``--port 0`` means one port for all. Workers stop on SIGTERM and drain as
    a single server does, still handed new connections (which they refuse with 503 while they
    drain); after ``stop_seconds`` the ones still running are killed.
    """
    sock = listener(config.host, config.port, config.backlog)
    sock.setblocking(False)
    config.port = sock.getsockname()[1]
    stopping = threading.Event()

    def stop(signum: int, _frame: FrameType | None) -> None:
        stopping.set()

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    spawn = multiprocessing.get_context("spawn")
    here = _Supervisor(config, sock, spawn.RawArray(ctypes.c_int64, workers), spawn)
    status = 0
    try:
        here.slots = [here.start(index) for index in range(workers)]
        while not stopping.is_set():
            here.pump(0.2)
            for index, slot in enumerate(here.slots):
                if slot.process.exitcode is None:
                    continue
                if slot.process.exitcode == STARTUP_FAILURE:
                    log.error("a worker could not start; stopping", extra={"pid": slot.process.pid})
                    status = STARTUP_FAILURE
                    stopping.set()
                    break
                if time.monotonic() - slot.started < RESTART_PAUSE:
                    continue
                log.warning(
                    "a worker ended; starting another",
                    extra={"pid": slot.process.pid, "exit_code": slot.process.exitcode},
                )
                here.forget(slot)
                here.slots[index] = here.start(index)
    finally:
        for slot in here.slots:
            if slot.process.exitcode is None and slot.process.pid is not None:
                os.kill(slot.process.pid, signal.SIGTERM)
        deadline = time.monotonic() + stop_seconds
        while any(s.process.exitcode is None for s in here.slots) and time.monotonic() < deadline:
            here.pump(0.1, accept=status == 0)
        for slot in here.slots:
            if slot.process.exitcode is None:
                log.warning(
                    "a worker did not stop in time; killed", extra={"pid": slot.process.pid}
                )
                slot.process.kill()
            slot.process.join()
            here.forget(slot)
        here.stop_listening()
        here.selector.close()
        sock.close()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return status
