"""Real ``idcontact serve`` processes for flow tests: start, wait until healthy, stop.

Each server is a subprocess (``python -m idcontact serve``) on a free port of 127.0.0.1 with
its stdout and stderr captured to a log file, so a test can read what the process logged.
Readiness is a condition (``GET /healthz`` answers 200), polled against a deadline; the pause
between polls waits on the process itself, so a server that dies during start-up is reported
at once with its log instead of after the deadline.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import httpx

HOST = "127.0.0.1"
START_DEADLINE_S = 20.0
STOP_TIMEOUT_S = 10.0
POLL_INTERVAL_S = 0.05
LOG_TAIL_CHARS = 4000
_PROXY_VARS = {"http_proxy", "https_proxy", "all_proxy"}


class ServerStartError(RuntimeError):
    """The server did not become healthy (it exited, or the deadline passed)."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


def free_ports(count: int) -> list[int]:
    """``count`` distinct free ports (all held open together while they are picked)."""
    socks: list[socket.socket] = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            socks.append(sock)
            sock.bind((HOST, 0))
        return [int(s.getsockname()[1]) for s in socks]
    finally:
        for sock in socks:
            sock.close()


@dataclass
class Server:
    """One running ``idcontact serve`` process."""

    port: int
    roles: tuple[str, ...]
    log_path: Path
    process: subprocess.Popen[bytes]
    _log_file: IO[bytes] | None = field(default=None, repr=False)

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    @property
    def name(self) -> str:
        return "+".join(self.roles) if self.roles else "all"

    def log_text(self) -> str:
        """Everything the process wrote to stdout and stderr so far."""
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def log_tail(self, chars: int = LOG_TAIL_CHARS) -> str:
        return self.log_text()[-chars:]

    def stop(self, timeout: float = STOP_TIMEOUT_S) -> int | None:
        """Stop this process by its PID (terminate, wait, kill on timeout); return its exit code."""
        try:
            if self.process.poll() is None:
                self.process.terminate()
                try:
                    self.process.wait(timeout=timeout)
                except subprocess.TimeoutExpired:
                    self.process.kill()
                    self.process.wait(timeout=timeout)
            return self.process.returncode
        finally:
            if self._log_file is not None and not self._log_file.closed:
                self._log_file.close()


def _child_env(env: Mapping[str, str] | None) -> dict[str, str]:
    # Only the settings this test chooses: no IDCONTACT_* leaking in from the caller's shell.
    # Nor a proxy: the roles talk to each other on 127.0.0.1 and must reach each other directly.
    child = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("IDCONTACT_") and k.lower() not in _PROXY_VARS
    }
    child["PYTHONUNBUFFERED"] = "1"
    child.update(env or {})
    return child


def wait_healthy(server: Server, deadline_s: float = START_DEADLINE_S) -> None:
    """Poll ``GET /healthz`` until it answers 200; fail if the process exits or time runs out."""
    deadline = time.monotonic() + deadline_s
    last_error = "no answer yet"
    with httpx.Client(timeout=2.0, trust_env=False) as client:
        while True:
            try:
                response = client.get(f"{server.url}/healthz")
                if response.status_code == 200:
                    return
                last_error = f"status {response.status_code}"
            except httpx.TransportError as exc:
                last_error = type(exc).__name__
            if time.monotonic() >= deadline:
                raise ServerStartError(
                    f"server {server.name} on port {server.port} not healthy after "
                    f"{deadline_s:.0f} s ({last_error}); log:\n{server.log_tail()}"
                )
            # The pause between polls is a wait on the process: an early exit ends it at once.
            try:
                code = server.process.wait(timeout=POLL_INTERVAL_S)
            except subprocess.TimeoutExpired:
                continue
            raise ServerStartError(
                f"server {server.name} exited with code {code} during start-up; log:\n"
                f"{server.log_tail()}"
            )


def start_server(
    *,
    config: Path,
    data_dir: Path,
    log_path: Path,
    port: int | None = None,
    roles: Sequence[str] = (),
    env: Mapping[str, str] | None = None,
    deadline_s: float = START_DEADLINE_S,
    workers: int = 1,
) -> Server:
    """Start ``idcontact serve`` and return once it is healthy (stopped again if it is not)."""
    port = free_port() if port is None else port
    args = [
        sys.executable,
        "-m",
        "idcontact",
        "serve",
        "--config",
        str(config),
        "--data-dir",
        str(data_dir),
        "--host",
        HOST,
        "--port",
        str(port),
        "--workers",
        str(workers),
    ]
    for role in roles:
        args += ["--role", role]
    log_path.parent.mkdir(parents=True, exist_ok=True)
    log_file = log_path.open("wb")
    try:
        process = subprocess.Popen(
            args,
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            env=_child_env(env),
            cwd=data_dir.parent,
        )
    except BaseException:
        log_file.close()
        raise
    server = Server(
        port=port, roles=tuple(roles), log_path=log_path, process=process, _log_file=log_file
    )
    try:
        wait_healthy(server, deadline_s)
    except BaseException:
        server.stop()
        raise
    return server


# -- the split deployment: core, auth and comm in three processes -------------------------------

CANARY_NAME = "Canary-Split-7Q"
CANARY_BSN = "999990019"
PURPOSE = "report_move"
ROLE_ORDER = ("core", "auth", "comm")

_SPLIT_CONFIG = """\
[attribute_labels]
fullname = {{ nl = "Naam", en = "Full name" }}
bsn = {{ nl = "Burgerservicenummer (BSN)", en = "Citizen service number (BSN)" }}

[[auth_methods]]
tag = "demo"
name = "Demo-identificatie"
image_path = "/static/demo.svg"
plugin = "demo"
start = "{auth_url}/auth/demo"
assurance = "substantial"

[[comm_methods]]
tag = "demo"
name = "Demokanaal"
image_path = "/static/demo.svg"
plugin = "demo"
start = "{comm_url}/comm/demo"

[[purposes]]
tag = "{purpose}"
label = {{ nl = "Verhuizing doorgeven", en = "Report a move" }}
attributes = ["fullname", "bsn"]
allowed_auth = ["demo"]
allowed_comm = ["demo"]
min_assurance = "substantial"

[plugins.auth.demo.attributes]
fullname = "{canary_name}"
bsn = "{canary_bsn}"
"""


def split_config(*, auth_url: str, comm_url: str) -> str:
    """The TOML shared by all three roles: demo auth, demo comm and one purpose."""
    return _SPLIT_CONFIG.format(
        auth_url=auth_url,
        comm_url=comm_url,
        purpose=PURPOSE,
        canary_name=CANARY_NAME,
        canary_bsn=CANARY_BSN,
    )


@dataclass
class SplitRoles:
    """Three processes sharing one configuration file and one data directory."""

    core: Server
    auth: Server
    comm: Server
    config: Path
    data_dir: Path

    @property
    def servers(self) -> tuple[Server, Server, Server]:
        return (self.core, self.auth, self.comm)

    def internal_secret(self) -> str:
        """The secret the first process generated into the shared data directory."""
        return (self.data_dir / "internal_secret").read_text(encoding="utf-8").strip()

    def stop(self) -> None:
        for server in reversed(self.servers):
            server.stop()


def start_split_roles(workdir: Path) -> SplitRoles:
    """Start core, auth and comm one after another (each healthy before the next starts).

    Starting them in turn means the first one alone generates the demo keys and the internal
    secret into the shared data directory; the others load them.
    """
    ports = dict(zip(ROLE_ORDER, free_ports(len(ROLE_ORDER)), strict=True))
    urls = {role: f"http://{HOST}:{port}" for role, port in ports.items()}
    config = workdir / "idcontact.toml"
    config.write_text(split_config(auth_url=urls["auth"], comm_url=urls["comm"]), encoding="utf-8")
    data_dir = workdir / "data"
    started: list[Server] = []
    try:
        for role, port in ports.items():
            started.append(
                start_server(
                    config=config,
                    data_dir=data_dir,
                    log_path=workdir / "logs" / f"{role}.log",
                    port=port,
                    roles=(role,),
                    # Where the other roles reach this one: the comm role builds attr_url from it.
                    env={"IDCONTACT_INTERNAL_URL": urls[role]},
                )
            )
    except BaseException:
        for server in reversed(started):
            server.stop()
        raise
    core, auth, comm = started
    return SplitRoles(core=core, auth=auth, comm=comm, config=config, data_dir=data_dir)
