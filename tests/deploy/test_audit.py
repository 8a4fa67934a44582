"""scripts/audit_pypi.py, scripts/audit's second source: against a local index serving PyPI's
project pages, it fails on a known vulnerability, and never calls a package it could not check
clean."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from tests.flows._servers import free_ports

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "audit_pypi.py"

LOCK = """\
# a comment
alpha==1.2.0 \\
    --hash=sha256:0000000000000000000000000000000000000000000000000000000000000000
beta==2.0 ; python_version >= "3.11" \\
    --hash=sha256:1111111111111111111111111111111111111111111111111111111111111111
gamma==0.9
"""


def vuln(ident: str, withdrawn: str | None = None) -> dict[str, Any]:
    return {"id": ident, "fixed_in": [], "withdrawn": withdrawn, "aliases": []}


@pytest.fixture
def index() -> Iterator[tuple[str, dict[str, dict[str, Any]]]]:
    """A project-page index on 127.0.0.1; the test fills in the pages."""
    pages: dict[str, dict[str, Any]] = {}

    class Pages(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            parts = self.path.strip("/").split("/")  # pypi/<name>/json
            page = pages.get(parts[1]) if len(parts) == 3 and parts[2] == "json" else None
            body = json.dumps(page).encode() if page else b"not found"
            self.send_response(200 if page else 404)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Pages)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/pypi", pages
    finally:
        server.shutdown()
        server.server_close()


def audit(tmp_path: Path, index: str) -> subprocess.CompletedProcess[str]:
    lock = tmp_path / "requirements.lock"
    lock.write_text(LOCK, encoding="utf-8")
    return subprocess.run(
        [sys.executable, str(SCRIPT), str(lock), "--index", index],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy")},
    )


def page(latest: str, *vulns: dict[str, Any]) -> dict[str, Any]:
    return {"info": {"version": latest}, "vulnerabilities": list(vulns)}


def test_every_package_at_its_latest_release_and_clean_passes(
    tmp_path: Path, index: tuple[str, dict[str, dict[str, Any]]]
) -> None:
    url, pages = index
    pages.update(alpha=page("1.2.0"), beta=page("2.0"), gamma=page("0.9"))
    done = audit(tmp_path, url)
    assert done.returncode == 0, done.stderr
    assert "3 of 3 locked packages checked" in done.stderr and "not checked" not in done.stderr


def test_a_known_vulnerability_fails_and_a_withdrawn_one_does_not(
    tmp_path: Path, index: tuple[str, dict[str, dict[str, Any]]]
) -> None:
    url, pages = index
    pages.update(
        alpha=page("1.2.0", vuln("PYSEC-0000-1"), vuln("GHSA-xxxx-yyyy-zzzz")),
        beta=page("2.0", vuln("PYSEC-0000-2", withdrawn="2026-01-01T00:00:00")),
        gamma=page("0.9"),
    )
    done = audit(tmp_path, url)
    assert done.returncode == 1
    assert "alpha 1.2.0: PYSEC-0000-1, GHSA-xxxx-yyyy-zzzz" in done.stderr
    assert "PYSEC-0000-2" not in done.stderr and "FAILED: 1 locked package" in done.stderr


def test_an_older_pin_or_a_missing_page_is_not_checked_never_clean(
    tmp_path: Path, index: tuple[str, dict[str, dict[str, Any]]]
) -> None:
    """The page of a newer release says nothing about the pinned one, even when it lists no
    vulnerability, or one: both would be a guess."""
    url, pages = index
    pages.update(alpha=page("1.3.0", vuln("PYSEC-0000-3")), beta=page("2.0"))
    done = audit(tmp_path, url)
    assert done.returncode == 3, done.stderr
    assert "1 of 3 locked packages checked" in done.stderr
    assert "not checked: alpha 1.2.0 (the page covers only 1.3.0)" in done.stderr
    assert "not checked: gamma 0.9 (HTTPError" in done.stderr
    assert "PYSEC-0000-3" not in done.stderr


def test_an_unreachable_index_checks_nothing(tmp_path: Path) -> None:
    (port,) = free_ports(1)  # nothing listens there
    done = audit(tmp_path, f"http://127.0.0.1:{port}/pypi")
    assert done.returncode == 4
    assert "SKIPPED" in done.stderr and "checked against" not in done.stderr
