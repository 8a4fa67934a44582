"""Several real ``idcontact serve`` instances on one PostgreSQL and one Redis (the multi-instance
set-up of docs/deployment.md), with the steps a resident and an agent take against them."""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import httpx
import pyotp

from idcontact.cli import DEMO_CONFIG
from tests.conftest import _reset_postgres
from tests.flows._servers import HOST, Server, _child_env, free_ports, start_server

PASSWORD = "correct horse battery staple"
START = {"purpose": "report_move", "auth_method": "demo", "comm_method": "demo"}


@dataclass
class Cluster:
    servers: list[Server]
    data_dir: Path
    env: dict[str, str]
    public_url: str
    config: Path = DEMO_CONFIG

    def stop(self) -> None:
        for server in self.servers:
            server.stop()


def cluster_env(
    postgres: str, redis: str, public_url: str, extra: Mapping[str, str] | None = None
) -> dict[str, str]:
    return {
        "IDCONTACT_DATABASE_URL": postgres,
        "IDCONTACT_REDIS_URL": redis,
        "IDCONTACT_PUBLIC_URL": public_url,
        **(extra or {}),
    }


def start_cluster(
    workdir: Path,
    *,
    postgres: str,
    redis: str,
    count: int = 2,
    public_url: str | None = None,
    extra_env: Mapping[str, str] | None = None,
    ports: list[int] | None = None,
    config: Path = DEMO_CONFIG,
) -> Cluster:
    """Reset the database, then start ``count`` instances one after another on one data
    directory (the first makes the keys and the internal secret, the others load them: in
    production the same files are deployed to every host)."""
    asyncio.run(_reset_postgres(postgres))
    ports = ports or free_ports(count)
    public = public_url or f"http://{HOST}:{ports[0]}"
    env = cluster_env(postgres, redis, public, extra_env)
    data_dir = workdir / "data"
    started: list[Server] = []
    try:
        for i, port in enumerate(ports):
            started.append(
                start_server(
                    config=config,
                    data_dir=data_dir,
                    log_path=workdir / "logs" / f"instance-{i}.log",
                    port=port,
                    env=env,
                )
            )
    except BaseException:
        for server in started:
            server.stop()
        raise
    return Cluster(started, data_dir, env, public, config)


def add_agent(cluster: Cluster, username: str) -> str:
    """``idcontact agents add``: the enrolment code."""
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "idcontact",
            "agents",
            "add",
            username,
            "--config",
            str(cluster.config),
            "--data-dir",
            str(cluster.data_dir),
        ],
        env=_child_env(cluster.env),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr + done.stdout
    code = re.search(r"/agent/enrol/(\S+)", done.stdout + done.stderr)
    assert code, done.stdout + done.stderr
    return code.group(1)


def _field(html: str, name: str) -> str:
    found = re.search(rf'name="{name}" value="([^"]*)"', html)
    assert found, f"no field {name}"
    return found.group(1)


def logged_in_agent(cluster: Cluster, base: str, username: str, **client: object) -> httpx.Client:
    """An agent's browser, enrolled and logged in at ``base``."""
    code = add_agent(cluster, username)
    browser = httpx.Client(base_url=base, timeout=20, trust_env=False, **client)  # type: ignore[arg-type]
    page = browser.get(f"/agent/enrol/{code}")
    assert page.status_code == 200, page.text
    secret = re.search(r'<code class="secret">([A-Z2-7 ]+)</code>', page.text)
    assert secret
    totp = pyotp.TOTP(secret.group(1).replace(" ", ""))
    enrolled = browser.post(
        f"/agent/enrol/{code}",
        data={
            "password": PASSWORD,
            "password_again": PASSWORD,
            "totp": totp.now(),
            "sealed": _field(page.text, "sealed"),
            "csrf": _field(page.text, "csrf"),
        },
    )
    assert enrolled.status_code == 303, enrolled.text
    login = browser.get("/agent/login")
    done = browser.post(
        "/agent/login",
        data={
            "username": username,
            "password": PASSWORD,
            "code": totp.now(),
            "csrf": _field(login.text, "csrf"),
        },
    )
    assert done.status_code == 303, done.text
    return browser


def resident_waiting(base: str, **client: object) -> str:
    """A resident identified with the demo method and waiting; returns the conversation id."""
    with httpx.Client(base_url=base, timeout=20, trust_env=False, **client) as browser:  # type: ignore[arg-type]
        started = browser.post("/start", json=START, headers={"Accept": "application/json"})
        assert started.status_code == 200, started.text
        confirm = httpx.URL(started.json()["client_url"]).raw_path.decode()
        shared = browser.post(confirm, data={"action": "share"})
        assert shared.status_code == 303, shared.text
        landing = httpx.URL(shared.headers["location"]).raw_path.decode()
        waiting = browser.get(landing)
        assert waiting.status_code == 200 and "U bent nummer" in waiting.text
        return landing.rsplit("/", 1)[1]


class Stream:
    """A console's event stream read in a thread: lines as they arrive, and when it ended."""

    def __init__(self, client: httpx.Client, path: str) -> None:
        self.lines: list[str] = []
        self.arrived: list[float] = []  # perf_counter() of each line's arrival
        self.clock: list[float] = []  # and time.time(), to compare with an event's "at"
        self.ended = threading.Event()
        self.opened = threading.Event()
        self._thread = threading.Thread(target=self._read, args=(client, path), daemon=True)
        self._thread.start()

    def _read(self, client: httpx.Client, path: str) -> None:
        try:
            with client.stream(
                "GET", path, headers={"Accept": "text/event-stream"}, timeout=None
            ) as response:
                self.status = response.status_code
                self.opened.set()
                for line in response.iter_lines():
                    at, wall = time.perf_counter(), time.time()
                    self.lines.append(line)
                    self.clock.append(wall)
                    self.arrived.append(at)  # after the line: arrived never outruns lines
        except httpx.HTTPError:
            pass
        finally:
            self.opened.set()
            self.ended.set()

    def find(self, text: str, timeout: float) -> int | None:
        """The index of the first line with ``text``; ``None`` if none arrived within
        ``timeout`` seconds or before the stream ended."""
        deadline = time.monotonic() + timeout
        seen = 0
        while True:
            ended = self.ended.is_set()  # before the scan: lines added after it are seen next
            # One count for the scan and the next start: a line that arrives between two reads
            # of the length would be skipped for good (the load bench lost 1 % of its probes).
            arrived = len(self.arrived)
            for i in range(seen, arrived):
                if text in self.lines[i]:
                    return i
            seen = arrived
            if ended or time.monotonic() >= deadline:
                return None
            time.sleep(0.001)

    def saw(self, text: str, timeout: float) -> bool:
        return self.find(text, timeout) is not None
