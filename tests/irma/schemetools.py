"""Test helpers for IRMA schemes: the test data, publishing a changed scheme version, and a
real HTTP server on 127.0.0.1 that publishes ``irma-demo`` (and can misbehave).

The test schemes ship their signing key (``sk.pem``, public test data), so a test can make a
new, validly signed version of a scheme just as its publisher would.
"""

from __future__ import annotations

import hashlib
import shutil
import sys
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

CONFIGURATION = Path(__file__).parent / "testdata" / "irma_configuration"
PREFIX = "/irma_configuration/irma-demo/"


def signing_key(scheme: Path) -> ec.EllipticCurvePrivateKey:
    key = serialization.load_pem_private_key((scheme / "sk.pem").read_bytes(), password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    return key


def sign(scheme: Path, key: ec.EllipticCurvePrivateKey | None = None) -> None:
    """Sign the scheme's current ``index`` (with its own ``sk.pem`` unless given a key)."""
    key = key or signing_key(scheme)
    signature = key.sign((scheme / "index").read_bytes(), ec.ECDSA(hashes.SHA256()))
    (scheme / "index.sig").write_bytes(signature)


def write_index(scheme: Path, paths: Iterable[str]) -> None:
    """An index of the given files (relative to the scheme), hashed as they are now; signed."""
    lines = [
        f"{hashlib.sha256((scheme / p).read_bytes()).hexdigest()} {scheme.name}/{p}\n"
        for p in paths
    ]
    (scheme / "index").write_text("".join(lines))
    sign(scheme)


def listed(scheme: Path) -> list[str]:
    """The files the scheme's index lists, relative to the scheme."""
    return [
        line.split(" ", 1)[1].split("/", 1)[1]
        for line in (scheme / "index").read_text().splitlines()
        if line.strip()
    ]


def publish(scheme: Path, *, timestamp: int | None = None, add: Iterable[str] = ()) -> int:
    """A new version: re-hash every listed file that still exists (plus ``add``), set the
    timestamp (default: one second later) and re-sign. Returns the new timestamp."""
    stamp = scheme / "timestamp"
    timestamp = timestamp if timestamp is not None else int(stamp.read_text()) + 1
    stamp.write_text(f"{timestamp}\n")
    paths = [p for p in listed(scheme) if (scheme / p).is_file()]
    write_index(scheme, paths + [p for p in add if p not in paths])
    return timestamp


@dataclass
class Behaviour:
    """How the test server misbehaves; paths are relative to the scheme URL."""

    requests: list[str] = field(default_factory=list)
    die_at: str | None = None
    """Send half of this file, then drop every connection, as a crashed server would."""
    dead: bool = False
    slow: set[str] = field(default_factory=set)
    release: threading.Event = field(default_factory=threading.Event)
    redirect_to: str | None = None
    """Answer every scheme request with a redirect to this origin."""


class _Server(ThreadingHTTPServer):
    behaviour: Behaviour

    def handle_error(self, request: Any, client_address: Any) -> None:
        if not isinstance(sys.exc_info()[1], ConnectionError):  # the client gave up: fine
            super().handle_error(request, client_address)


class _Handler(SimpleHTTPRequestHandler):
    server: _Server

    def do_GET(self) -> None:
        b = self.server.behaviour
        path = urlsplit(self.path).path
        if path.startswith("/moved/"):  # a redirect within the same host
            self.send_response(301)
            self.send_header("Location", path.replace("/moved/", "/irma_configuration/", 1))
            self.end_headers()
            return
        relative = path.removeprefix(PREFIX)
        b.requests.append(relative)
        if b.dead:
            self.close_connection = True  # no answer at all
            return
        if b.redirect_to is not None:
            self.send_response(302)
            self.send_header("Location", b.redirect_to + path)
            self.end_headers()
            return
        if relative in b.slow:
            b.release.wait(10)
        if relative == b.die_at:
            data = Path(self.translate_path(self.path)).read_bytes()
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data[: len(data) // 2])
            self.close_connection = True
            b.dead = True
            return
        super().do_GET()

    def log_message(self, format: str, *args: Any) -> None:
        pass


@dataclass
class Served:
    url: str
    scheme: Path
    """The server's copy of irma-demo: change it, then :func:`publish` a new version."""
    behaviour: Behaviour
    port: int


@contextmanager
def scheme_server(root: Path) -> Iterator[Served]:
    """Publish a copy of irma-demo under ``root`` at ``http://127.0.0.1:<port>/irma_configuration/
    irma-demo``; stopped on exit."""
    scheme = root / "irma_configuration" / "irma-demo"
    shutil.copytree(CONFIGURATION / "irma-demo", scheme)
    behaviour = Behaviour()
    server = _Server(("127.0.0.1", 0), partial(_Handler, directory=str(root)))
    server.behaviour = behaviour
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
    )
    thread.start()
    port = server.server_address[1]
    try:
        yield Served(f"http://127.0.0.1:{port}{PREFIX}".rstrip("/"), scheme, behaviour, port)
    finally:
        behaviour.release.set()
        server.shutdown()
        server.server_close()
        thread.join(10)
