"""Access to the real services (PostgreSQL, Redis) that some tests need.

``scripts/test`` starts private instances and exports their URLs in
``IDCONTACT_TEST_POSTGRES_URL`` and ``IDCONTACT_TEST_REDIS_URL``. A test that
needs one calls :func:`postgres_url` or :func:`redis_url`.

When the variable is unset or nothing answers on its host and port, the test
is skipped locally, with a hint on how to start the service. In CI
(``CI=true``) it fails instead: there, a skipped real-service test would hide
a broken setup.
"""

from __future__ import annotations

import os
import socket
from typing import NoReturn
from urllib.parse import urlsplit

import pytest

POSTGRES_ENV = "IDCONTACT_TEST_POSTGRES_URL"
REDIS_ENV = "IDCONTACT_TEST_REDIS_URL"
YIVI_ENV = "IDCONTACT_TEST_YIVI_URL"

_CONNECT_TIMEOUT_S = 1.0


def postgres_url() -> str:
    """The SQLAlchemy URL of the test PostgreSQL database (asyncpg driver)."""
    return _service_url(POSTGRES_ENV, "PostgreSQL", "postgres", default_port=5432)


def redis_url() -> str:
    """The URL of the test Redis instance."""
    return _service_url(REDIS_ENV, "Redis", "redis", default_port=6379)


def yivi_url() -> str:
    """The reference IRMA server (the Go ``yivi irma server``) with the test schemes."""
    return _service_url(YIVI_ENV, "The Go IRMA server", "yivi", default_port=48680)


def _service_url(env: str, label: str, script: str, *, default_port: int) -> str:
    how = (
        f"run `bash scripts/test`, or start it with `bash scripts/services/{script} start` "
        f'and `export {env}="$(bash scripts/services/{script} url)"`'
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


def _unavailable(reason: str) -> NoReturn:
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason} (a real-service test may not be skipped in CI)", pytrace=False)
    pytest.skip(reason)
