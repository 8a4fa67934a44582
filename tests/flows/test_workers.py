"""``serve --workers 2``: several processes on one port and one SQLite file, every flow intact,
each new connection handed to the worker with the fewest."""

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


def _tcp(port: int) -> dict[int, tuple[str, int]]:
    """inode -> (state: "0A" listening, "01" established; the peer's port) of the server side
    of 127.0.0.1:``port``."""
    local = f"0100007F:{port:04X}"
    found = {}
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if fields[1] == local:
            found[int(fields[9])] = (fields[3], int(fields[2].split(":")[1], 16))
    return found


def _workers(parent: int) -> list[int]:
    """The parent's worker processes (not multiprocessing's resource tracker)."""
    children = Path(f"/proc/{parent}/task/{parent}/children").read_text().split()
    found = []
    for child in map(int, children):
        with contextlib.suppress(FileNotFoundError):
            if b"spawn_main" in Path(f"/proc/{child}/cmdline").read_bytes():
                found.append(child)
    return found


def _peers(pid: int, port: int) -> set[int]:
    """The client ports of the connections worker ``pid`` holds."""
    mine = _sockets(pid)
    return {peer for inode, (state, peer) in _tcp(port).items() if state == "01" and inode in mine}


def _until(condition: Callable[[], bool], what: str, seconds: float = 30.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting until {what}"
        time.sleep(0.05)


def test_connections_go_to_the_worker_with_the_fewest_and_a_dead_one_is_replaced(
    tmp_path: Path,
) -> None:
    server = two_workers(tmp_path)
    port = server.port
    parent = server.process.pid
    conns: dict[int, socket.socket] = {}

    def connect(count: int) -> None:
        for _ in range(count):
            conn = socket.create_connection(("127.0.0.1", port), timeout=10)
            conns[conn.getsockname()[1]] = conn

    def held() -> dict[int, set[int]]:
        return {pid: _peers(pid, port) & set(conns) for pid in workers}

    try:
        # The port answered only once both were ready.
        assert server.log_text().count('"worker ready"') == 2
        workers = _workers(parent)
        assert len(workers) == 2
        # Only the serving process listens; the workers are handed what it accepts.
        listening = {inode for inode, (state, _) in _tcp(port).items() if state == "0A"}
        assert len(listening) == 1 and listening <= _sockets(parent)
        assert not any(_sockets(pid) & listening for pid in workers)

        # A burst of connections, all opened before any is used, as a browser or a proxy
        # opens them, is split evenly (a hash of the addresses split 32 as 23 to 9).
        connect(16)
        _until(lambda: sum(map(len, held().values())) == 16, "the workers hold all 16")
        first, second = held().values()
        assert abs(len(first) - len(second)) <= 1, held()

        # One worker's clients leave: the next connections all go to it.
        emptied = min(workers, key=lambda pid: len(held()[pid]))
        for peer in held()[emptied]:
            conns.pop(peer).close()
        _until(lambda: not _peers(emptied, port), "the worker let its connections go")
        others = len(held()[next(p for p in workers if p != emptied)])
        connect(others)
        _until(lambda: sum(map(len, held().values())) == 2 * others, "the workers hold them")
        assert len(held()[emptied]) == others, held()
        for conn in conns.values():  # every one of them is served
            conn.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            assert conn.recv(64).startswith(b"HTTP/1.1 200"), "a connection was not served"

        # A worker that dies is replaced; its connections are gone, the port keeps answering.
        victim = workers[0]
        os.kill(victim, signal.SIGKILL)
        _until(
            lambda: len(now := _workers(parent)) == 2 and victim not in now,
            "a new worker runs in its place",
        )
        assert "U bent nummer" in one_flow(server.url)
        assert "a worker ended; starting another" in server.log_text()
        replaced = _workers(parent)
    finally:
        for conn in conns.values():
            conn.close()
        assert server.stop() == 0
    assert not [pid for pid in replaced if Path(f"/proc/{pid}").exists()]  # none left behind
