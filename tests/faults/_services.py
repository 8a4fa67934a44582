"""Private PostgreSQL and Redis servers that a fault test may stop, kill and restart.

The shared services of ``scripts/test`` are never touched: each server here has its own data
directory under a fresh temporary directory, a free port on 127.0.0.1, and is started and
stopped by its own PID. As root, PostgreSQL runs as the ``postgres`` system user (initdb refuses
root), in a directory that user owns.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from tests.flows._servers import free_port
from tests.services import _unavailable

HOST = "127.0.0.1"
DEADLINE_S = 30.0


def _wait_port(port: int, up: bool, deadline_s: float = DEADLINE_S) -> None:
    """Until something accepts on ``port`` (``up``) or nothing does."""
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        with socket.socket() as sock:
            sock.settimeout(0.2)
            accepting = sock.connect_ex((HOST, port)) == 0
        if accepting == up:
            return
        time.sleep(0.05)
    raise TimeoutError(f"port {port} still {'closed' if up else 'open'} after {deadline_s} s")


def _pg_bindir() -> Path:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/postgres"))
    if not found:
        _unavailable(
            "PostgreSQL server binaries not found (scripts/services/postgres installs them)"
        )
    return Path(found[-1]).parent


@dataclass
class PrivatePostgres:
    """One PostgreSQL cluster: ``start``, ``stop`` (fast, or ``immediate``: a crash), again."""

    root: Path
    port: int
    bindir: Path
    process: subprocess.Popen[bytes] | None = None
    _user: dict[str, int] = field(default_factory=dict)

    @classmethod
    def create(cls) -> PrivatePostgres:
        bindir = _pg_bindir()
        root = Path(tempfile.mkdtemp(prefix="idc-fault-pg-"))
        user: dict[str, int] = {}
        if os.geteuid() == 0:
            entry = pwd.getpwnam("postgres")
            user = {"user": entry.pw_uid, "group": entry.pw_gid}
            os.chown(root, entry.pw_uid, entry.pw_gid)
        server = cls(root, free_port(), bindir, _user=user)
        subprocess.run(
            [str(bindir / "initdb"), "-D", str(root / "data"), "-A", "trust", "-U", "idcontact"],
            check=True,
            capture_output=True,
            cwd="/",
            **user,  # type: ignore[arg-type]
        )
        return server

    @property
    def url(self) -> str:
        return f"postgresql+asyncpg://idcontact@{HOST}:{self.port}/postgres"

    def start(self) -> None:
        log = (self.root / "postgres.log").open("ab")
        self.process = subprocess.Popen(
            [
                str(self.bindir / "postgres"),
                "-D",
                str(self.root / "data"),
                "-p",
                str(self.port),
                "-k",
                str(self.root),
                "-c",
                f"listen_addresses={HOST}",
                "-c",
                "fsync=off",
            ],
            stdout=log,
            stderr=log,
            stdin=subprocess.DEVNULL,
            cwd="/",
            **self._user,  # type: ignore[arg-type]
        )
        log.close()
        _wait_port(self.port, up=True)

    def stop(self, *, immediate: bool = False) -> None:
        """SIGINT: fast shutdown (clean); SIGQUIT: immediate, as after a crash (UNLOGGED tables
        are emptied at the next start)."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGQUIT if immediate else signal.SIGINT)
        try:
            self.process.wait(timeout=DEADLINE_S)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=DEADLINE_S)
        _wait_port(self.port, up=False)

    def remove(self) -> None:
        self.stop()
        shutil.rmtree(self.root, ignore_errors=True)


@dataclass
class PrivateRedis:
    root: Path
    port: int
    process: subprocess.Popen[bytes] | None = None

    @classmethod
    def create(cls) -> PrivateRedis:
        if shutil.which("redis-server") is None:
            _unavailable("redis-server not found (scripts/services/redis installs it)")
        return cls(Path(tempfile.mkdtemp(prefix="idc-fault-redis-")), free_port())

    @property
    def url(self) -> str:
        return f"redis://{HOST}:{self.port}/0"

    def start(self) -> None:
        self.process = subprocess.Popen(
            [
                "redis-server",
                "--bind",
                HOST,
                "--port",
                str(self.port),
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.root),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            stdin=subprocess.DEVNULL,
        )
        _wait_port(self.port, up=True)

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        self.process.wait(timeout=DEADLINE_S)
        _wait_port(self.port, up=False)

    def remove(self) -> None:
        self.stop()
        shutil.rmtree(self.root, ignore_errors=True)
