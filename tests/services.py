"""Access to the real services (PostgreSQL, Redis) that some tests need.

``scripts/test`` starts private instances and exports their URLs in
``IDCONTACT_TEST_POSTGRES_URL`` and ``IDCONTACT_TEST_REDIS_URL``. A test that
needs one calls :func:`postgres_url` or :func:`redis_url` (:func:`turn_server` for the
coturn of the video tests).

When the variable is unset or nothing answers on its host and port, the test
is skipped locally, with a hint on how to start the service. In CI
(``CI=true``) it fails instead: there, a skipped real-service test would hide
a broken setup.
"""

from __future__ import annotations

import base64
import os
import re
import shutil
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn
from urllib.parse import urlsplit

import pytest
from joserfc.jwk import OctKey, RSAKey

POSTGRES_ENV = "IDCONTACT_TEST_POSTGRES_URL"
REDIS_ENV = "IDCONTACT_TEST_REDIS_URL"
YIVI_ENV = "IDCONTACT_TEST_YIVI_URL"
YIVI_DIR_ENV = "IDCONTACT_TEST_YIVI_DIR"
TURN_ENV = "IDCONTACT_TEST_TURN_URL"
TURN_SECRET_ENV = "IDCONTACT_TEST_TURN_SECRET_FILE"

_CONNECT_TIMEOUT_S = 1.0


def postgres_url() -> str:
    """The SQLAlchemy URL of the test PostgreSQL database (asyncpg driver)."""
    return _service_url(POSTGRES_ENV, "PostgreSQL", "postgres", default_port=5432)


def redis_url() -> str:
    """The URL of the test Redis instance."""
    return _service_url(REDIS_ENV, "Redis", "redis", default_port=6379)


def yivi_url() -> str:
    """The reference IRMA server (the Go ``yivi irma server``) with the test schemes."""
    return _service_url(
        YIVI_ENV,
        "The Go IRMA server",
        "yivi",
        default_port=48680,
        export="export $(bash scripts/services/yivi env | xargs)",
    )


@dataclass(frozen=True)
class Requestor:
    """How to reach an IRMA server as a requestor: each of its requestors' credentials (token,
    HS256 key, RS256 private key) and the public key of its result JWTs."""

    url: str
    token: str
    hmac: OctKey
    rs: RSAKey
    result_key: RSAKey


def yivi_requestor() -> Requestor:
    """The Go server of ``scripts/services/yivi``, with the secrets it made at its start."""
    url = yivi_url()
    directory = Path(os.environ.get(YIVI_DIR_ENV, ""))
    if not (directory / "requestor-token").is_file():
        _unavailable(f"The Go IRMA server's secrets: {YIVI_DIR_ENV} is not set or empty")
    return Requestor(
        url,
        (directory / "requestor-token").read_text().strip(),
        OctKey.import_key(base64.b64decode((directory / "requestor-hmac").read_text())),
        RSAKey.import_key((directory / "rs-requestor.key.pem").read_text()),
        RSAKey.import_key((directory / "result.pub.pem").read_text()),
    )


@dataclass(frozen=True)
class Turn:
    """The TURN server of ``scripts/services/coturn`` (REST credentials, ``use-auth-secret``)."""

    url: str
    """``turn:127.0.0.1:<port>``"""
    host: str
    port: int
    secret_file: Path

    @property
    def secret(self) -> str:
        return self.secret_file.read_text().strip()


def turn_server() -> Turn:
    """The coturn the video tests relay through, with its secret."""
    how = (
        "run `bash scripts/test`, or start it with `bash scripts/services/coturn start` and "
        "`export $(bash scripts/services/coturn env | xargs)`"
    )
    url = os.environ.get(TURN_ENV, "").strip()
    if not url:
        _unavailable(f"The TURN server not configured: {TURN_ENV} is not set; {how}")
    found = re.fullmatch(r"turn:([0-9.]+):([0-9]{1,5})", url)
    if found is None:
        _unavailable(f"The TURN server: {TURN_ENV}={url!r} is not turn:<ip>:<port>; {how}")
    host, port = found.group(1), int(found.group(2))
    if not _reachable(host, port):
        _unavailable(f"The TURN server not reachable at {host}:{port} ({TURN_ENV}); {how}")
    secret_file = Path(os.environ.get(TURN_SECRET_ENV, ""))
    if not secret_file.is_file():
        _unavailable(f"The TURN server's secret: {TURN_SECRET_ENV} is not set or no file; {how}")
    return Turn(url, host, port, secret_file)


def xmlsec1() -> str:
    """The ``xmlsec1`` binary that pysaml2 signs and verifies SAML with (Debian ``xmlsec1``)."""
    found = shutil.which("xmlsec1")
    if found is None:
        _unavailable(
            "xmlsec1 is not installed: run `bash scripts/test` (it installs the Debian package) "
            "or `apt-get install xmlsec1`"
        )
    return found


@dataclass(frozen=True)
class NodeHolder:
    """The independent SD-JWT VC holder of ``tests/openid4vp/node`` (npm ``@sd-jwt/sd-jwt-vc``)."""

    node: str
    script: Path


def node_holder() -> NodeHolder:
    """Node and the holder's npm packages, installed by ``bash scripts/holder``."""
    directory = Path(__file__).parent / "openid4vp" / "node"
    node = shutil.which("node")
    if node is None:
        _unavailable("node is not installed; run `bash scripts/holder`")
    if not (directory / "node_modules" / "@sd-jwt" / "sd-jwt-vc").is_dir():
        _unavailable("@sd-jwt/sd-jwt-vc is not installed; run `bash scripts/holder`")
    return NodeHolder(node, directory / "holder.mjs")


def _service_url(
    env: str, label: str, script: str, *, default_port: int, export: str | None = None
) -> str:
    export = export or f'export {env}="$(bash scripts/services/{script} url)"'
    how = (
        f"run `bash scripts/test`, or start it with `bash scripts/services/{script} start` "
        f"and `{export}`"
    )
    url = os.environ.get(env, "").strip()
    if not url:
        _unavailable(f"{label} not configured: {env} is not set; {how}")
    parts = urlsplit(url)
    host = parts.hostname
    try:
        port = parts.port or default_port
    except ValueError:
        _unavailable(f"{label}: {env}={url!r} has an invalid port; {how}")
    if not host:
        _unavailable(f"{label}: {env}={url!r} has no host; {how}")
    if not _reachable(host, port):
        _unavailable(f"{label} not reachable at {host}:{port} ({env}); {how}")
    return url


def _reachable(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=_CONNECT_TIMEOUT_S):
            return True
    except OSError:
        return False


NGINX_ENV = "IDCONTACT_TEST_NGINX"


def nginx_binary() -> str:
    """The nginx binary of ``scripts/services/nginx`` (each test runs its own nginx)."""
    path = os.environ.get(NGINX_ENV, "").strip() or "/usr/sbin/nginx"
    if not Path(path).is_file() or not os.access(path, os.X_OK):
        _unavailable(
            f"nginx not installed ({NGINX_ENV}); run `bash scripts/services/nginx install` and "
            "`export $(bash scripts/services/nginx env)`"
        )
    return path


def _unavailable(reason: str) -> NoReturn:
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason} (a real-service test may not be skipped in CI)", pytrace=False)
    pytest.skip(reason)
