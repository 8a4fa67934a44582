"""Helpers for the browser tests: the real server in a subprocess, and axe-core on a page.

The fixtures built on these are in ``conftest.py``; tests that need a server of their own (with
canary values in the demo attributes, say) can use :func:`run_server` directly.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import Page

AXE_JS = Path(__file__).parent / ".npm" / "node_modules" / "axe-core" / "axe.min.js"
AXE_TAGS = ["wcag2a", "wcag2aa", "wcag21a", "wcag21aa"]

PAGE_TIMEOUT_MS = 10_000  # pages come from this machine: a wait this long means a failure
SERVER_START_TIMEOUT_S = 30.0
SERVER_STOP_TIMEOUT_S = 10.0
POLL_INTERVAL_S = 0.05


# -- the server -----------------------------------------------------------------------------


@dataclass(frozen=True)
class LiveServer:
    """A running ``idcontact serve``: where it listens, its data and its combined output."""

    base_url: str
    pid: int
    data_dir: Path
    log_path: Path
    """stdout and stderr of the server, for tests that scan the logs (canary values, say)."""

    def url(self, path: str) -> str:
        return f"{self.base_url}{path}"

    def log_text(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _idcontact_command() -> Path:
    """The ``idcontact`` script of the environment running the tests (``.venv/bin``)."""
    command = Path(sys.executable).parent / "idcontact"
    if not command.is_file():
        pytest.fail(f"{command} not found: install the package with `bash scripts/install`")
    return command


def _tail(path: Path, lines: int = 30) -> str:
    return "\n".join(path.read_text(encoding="utf-8", errors="replace").splitlines()[-lines:])


def _wait_healthy(process: subprocess.Popen[bytes], base_url: str, log_path: Path) -> None:
    deadline = time.monotonic() + SERVER_START_TIMEOUT_S
    with httpx.Client(timeout=1.0) as client:
        while True:
            code = process.poll()
            if code is not None:
                pytest.fail(
                    f"idcontact serve exited with {code} before answering; its output:\n"
                    + _tail(log_path),
                    pytrace=False,
                )
            try:
                response = client.get(f"{base_url}/healthz")
                if response.status_code == 200 and response.json() == {"status": "ok"}:
                    return
            except (httpx.TransportError, ValueError):
                pass  # not listening yet (or, after a lost port race, someone else is)
            if time.monotonic() > deadline:
                pytest.fail(
                    f"idcontact serve did not answer /healthz within {SERVER_START_TIMEOUT_S}s; "
                    "its output:\n" + _tail(log_path),
                    pytrace=False,
                )
            time.sleep(POLL_INTERVAL_S)


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout=SERVER_STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


@contextmanager
def run_server(directory: Path, env: Mapping[str, str] | None = None) -> Iterator[LiveServer]:
    """Run the embedded demo (``idcontact serve`` without ``--config``) on a free local port.

    ``directory`` holds a fresh data directory and ``server.log``. Outer ``IDCONTACT_*``
    variables are dropped; ``env`` adds some (demo attributes with canary values, say).
    The server is stopped by its PID on exit: SIGTERM, then SIGKILL if it hangs.
    """
    port = _free_port()
    base_url = f"http://127.0.0.1:{port}"
    data_dir = directory / "data"
    log_path = directory / "server.log"
    child_env = {k: v for k, v in os.environ.items() if not k.upper().startswith("IDCONTACT_")}
    child_env["IDCONTACT_PUBLIC_URL"] = base_url  # the links and redirects browsers follow
    child_env.update(env or {})
    command = [
        str(_idcontact_command()),
        "serve",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--data-dir",
        str(data_dir),
    ]
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            command,
            cwd=directory,
            env=child_env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        _wait_healthy(process, base_url, log_path)
        yield LiveServer(base_url, process.pid, data_dir, log_path)
    finally:
        _stop(process)


# -- axe-core -------------------------------------------------------------------------------


@dataclass(frozen=True)
class AxeResult:
    violations: list[dict[str, Any]]
    passes: list[dict[str, Any]]


Axe = Callable[[Page], AxeResult]

_RUN_AXE = """async (tags) => {
    const result = await axe.run(document, {
        runOnly: {type: "tag", values: tags},
        resultTypes: ["violations"],
    });
    return {violations: result.violations, passes: result.passes};
}"""


def run_axe(page: Page, script: Path) -> AxeResult:
    """Inject axe-core (``script``) into ``page`` and run the WCAG 2.0/2.1 A and AA rules.

    The page must belong to a context with ``bypass_csp=True``: the app's policy blocks the
    inline script that ``add_script_tag`` adds.
    """
    page.add_script_tag(path=script)
    if page.evaluate("() => typeof window.axe") != "object":
        pytest.fail("axe-core did not load into the page (blocked by CSP?)", pytrace=False)
    result = page.evaluate(_RUN_AXE, AXE_TAGS)
    return AxeResult(violations=result["violations"], passes=result["passes"])


def describe(violations: list[dict[str, Any]]) -> str:
    """One line per violation and element: rule id, impact, help text and target selector."""
    lines = []
    for v in violations:
        for node in v["nodes"]:
            target = " >> ".join(str(t) for t in node["target"])
            lines.append(f"- {v['id']} ({v['impact']}): {v['help']} at {target}")
    return "\n".join(lines)
