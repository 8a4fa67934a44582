"""``serve --workers 2``: several processes on one port and one SQLite file, every flow intact,
each worker on its own listening socket."""

from __future__ import annotations

import concurrent.futures
import contextlib
import os
import re
import signal
import socket
import time
from collections.abc import Callable
from pathlib import Path

import httpx

from idcontact.cli import DEMO_CONFIG
from tests.flows._servers import Server, free_port, start_server

START = {"purpose": "report_move", "auth_method": "demo", "comm_method": "demo"}


def one_flow(base: str) -> str:
    with httpx.Client(base_url=base, timeout=20) as client:
        started = client.post("/start", json=START, headers={"Accept": "application/json"})
        assert started.status_code == 200, started.text
        confirm = started.json()["client_url"].removeprefix(base)
        shared = client.post(confirm, data={"action": "share"})
        assert shared.status_code == 303
        landing = client.get(shared.headers["location"].removeprefix(base))
        assert landing.status_code == 200
        return landing.text


def two_workers(tmp_path: Path) -> Server:
    """``serve --workers 2`` on the demo configuration and a fresh SQLite data directory."""
    port = free_port()
    return start_server(
        config=DEMO_CONFIG,
        data_dir=tmp_path / "data",
        log_path=tmp_path / "server.log",
        port=port,
        env={"IDCONTACT_PUBLIC_URL": f"http://127.0.0.1:{port}"},
        workers=2,
    )


def test_two_workers_share_one_sqlite_database(tmp_path: Path) -> None:
    server = two_workers(tmp_path)
    try:
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            pages = list(pool.map(one_flow, [server.url] * 40))
        # Every resident is in line: no delivery was lost between the workers (the waiting
        # room names the data but never shows it).
        assert all("U bent nummer" in page for page in pages)
        assert not any("Demi de Demo" in page for page in pages)
        log = server.log_text()
        assert "Traceback" not in log and '"level": "ERROR"' not in log
        # Two worker processes really served (uvicorn logs each one's start).
        assert len(re.findall(r"Started server process", log)) >= 2
    finally:
        server.stop()


def _sockets(pid: int) -> set[int]:
    """The inodes of the sockets process ``pid`` holds open."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:  # closed meanwhile
            continue
        if target.startswith("socket:["):
            inodes.add(int(target[8:-1]))
    return inodes


def _tcp(port: int) -> dict[int, str]:
    """inode -> state ("0A" listening, "01" established) of 127.0.0.1:``port``'s server side."""
    local = f"0100007F:{port:04X}"
    found = {}
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if fields[1] == local:
            found[int(fields[9])] = fields[3]
    return found


def _established(port: int) -> set[int]:
    return {inode for inode, state in _tcp(port).items() if state == "01"}


def _workers(parent: int, port: int) -> dict[int, set[int]]:
    """The parent's children that listen on ``port``, each with its listening sockets."""
    children = Path(f"/proc/{parent}/task/{parent}/children").read_text().split()
    listening = {inode for inode, state in _tcp(port).items() if state == "0A"}
    found = {}
    for child in map(int, children):
        with contextlib.suppress(FileNotFoundError):
            if mine := _sockets(child) & listening:
                found[child] = mine
    return found


def _until(condition: Callable[[], bool], what: str, seconds: float = 30.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting until {what}"
        time.sleep(0.05)


def test_each_worker_listens_on_its_own_socket_and_gets_connections(tmp_path: Path) -> None:
    server = two_workers(tmp_path)
    port = server.port
    try:
        _until(lambda: len(_workers(server.process.pid, port)) == 2, "both workers listen")
        workers = _workers(server.process.pid, port)
        first, second = workers.values()
        assert not first & second  # two sockets, not one shared (uvicorn's own supervisor)

        # A burst of connections, all opened before any is used, as a browser or a proxy
        # opens them: every worker gets some (32 on one of two: odds 2 in 4 billion).
        conns = [socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(32)]
        try:
            _until(
                lambda: sum(len(_sockets(p) & _established(port)) for p in workers) >= 32,
                "the workers accepted all 32",
            )
            per_worker = {pid: len(_sockets(pid) & _established(port)) for pid in workers}
            assert all(count > 0 for count in per_worker.values()), per_worker
        finally:
            for conn in conns:
                conn.close()

        # A worker that dies is replaced, and the port keeps answering.
        victim = next(iter(workers))
        os.kill(victim, signal.SIGKILL)
        _until(
            lambda: len(now := _workers(server.process.pid, port)) == 2 and victim not in now,
            "a new worker listens in its place",
        )
        assert "U bent nummer" in one_flow(server.url)
        assert "a worker ended; starting another" in server.log_text()
        replaced = set(_workers(server.process.pid, port))
    finally:
        assert server.stop() == 0
    assert not [pid for pid in replaced if Path(f"/proc/{pid}").exists()]  # none left behind
