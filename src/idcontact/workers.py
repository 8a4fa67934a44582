"""``serve --workers N``: N processes on one port, each with its own listening socket.

uvicorn's supervisor gives every worker the same listening socket. Whichever worker wakes
first accepts a whole burst of new connections (asyncio accepts up to the backlog per
wake-up), and keep-alive holds them there: in the benchmark one of two workers served all 32
clients while the other idled. Here each worker listens on its own ``SO_REUSEPORT`` socket and
the kernel spreads new connections over the workers by their address hash. A worker that dies
takes its socket with it, so no connection waits on a socket nobody accepts from, and this
supervisor starts another in its place.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import socket
import threading
import time
from multiprocessing.process import BaseProcess
from types import FrameType

import uvicorn
from uvicorn.config import STARTUP_FAILURE

log = logging.getLogger("idcontact.workers")

RESTART_PAUSE = 1.0
"""Seconds between starts of one worker slot, so a worker that keeps failing does not spin."""


def listener(host: str, port: int, backlog: int, *, listen: bool = True) -> socket.socket:
    """A TCP socket bound with ``SO_REUSEPORT`` (other sockets of this user may bind too)."""
    family, kind, proto, _, address = socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(address)
        if listen:
            sock.listen(backlog)
    except BaseException:
        sock.close()
        raise
    return sock


def _worker(config: uvicorn.Config) -> None:
    """One worker process: its own socket, then uvicorn as usual."""
    sock = listener(config.host, config.port, config.backlog)
    uvicorn.Server(config).run(sockets=[sock])


def serve(config: uvicorn.Config, workers: int, *, stop_seconds: float) -> int:
    """Run ``workers`` processes until SIGTERM or SIGINT; returns the exit status.

    The port is held here (bound, not listening) for as long as this runs: taken by another
    program, it fails at once with a clear error; and ``--port 0`` means one port for all.
    Workers stop on SIGTERM and drain as a single server does; after ``stop_seconds`` the
    ones still running are killed.
    """
    guard = listener(config.host, config.port, config.backlog, listen=False)
    config.port = guard.getsockname()[1]
    stopping = threading.Event()

    def stop(signum: int, _frame: FrameType | None) -> None:
        stopping.set()

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    spawn = multiprocessing.get_context("spawn")

    def start() -> tuple[BaseProcess, float]:
        process = spawn.Process(target=_worker, args=(config,), name="idcontact-worker")
        process.start()
        return process, time.monotonic()

    slots = [start() for _ in range(workers)]
    status = 0
    try:
        while not stopping.wait(0.2):
            for index, (process, started) in enumerate(slots):
                if process.exitcode is None:
                    continue
                if process.exitcode == STARTUP_FAILURE:
                    log.error("a worker could not start; stopping", extra={"pid": process.pid})
                    status = STARTUP_FAILURE
                    stopping.set()
                    break
                if time.monotonic() - started < RESTART_PAUSE:
                    continue
                log.warning(
                    "a worker ended; starting another",
                    extra={"pid": process.pid, "exit_code": process.exitcode},
                )
                slots[index] = start()
    finally:
        for process, _ in slots:
            if process.exitcode is None and process.pid is not None:
                os.kill(process.pid, signal.SIGTERM)
        deadline = time.monotonic() + stop_seconds
        for process, _ in slots:
            process.join(max(0.0, deadline - time.monotonic()))
            if process.exitcode is None:
                log.warning("a worker did not stop in time; killed", extra={"pid": process.pid})
                process.kill()
                process.join()
        guard.close()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return status
