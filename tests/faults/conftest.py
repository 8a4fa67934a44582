"""Fixtures of the fault tests: private services each test may break."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.faults._services import PrivatePostgres, PrivateRedis


@pytest.fixture
def private_postgres() -> Iterator[PrivatePostgres]:
    server = PrivatePostgres.create()
    server.start()
    try:
        yield server
    finally:
        server.remove()


@pytest.fixture
def private_redis() -> Iterator[PrivateRedis]:
    server = PrivateRedis.create()
    server.start()
    try:
        yield server
    finally:
        server.remove()
