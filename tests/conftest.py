"""Shared fixtures: an in-process app per test, on SQLite or on the real PostgreSQL."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from idcontact.app import Services, create_app, services_of
from idcontact.cli import DEMO_CONFIG
from idcontact.settings import Settings, load_settings
from tests.services import postgres_url

CANARY_NAME = "Canary-Fullname-8XQ2"
CANARY_BSN = "999990019"
PUBLIC = "http://testserver"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Keep an outer ``IDCONTACT_*`` environment (IDCONTACT_CONFIG, say) out of a test."""
    for name in list(os.environ):
        if name.upper().startswith("IDCONTACT_"):
            monkeypatch.delenv(name, raising=False)


@dataclass
class Instance:
    app: FastAPI
    client: httpx.AsyncClient
    services: Services
    settings: Settings


AppFactory = Callable[..., Any]


async def _reset_postgres(url: str) -> None:
    engine = create_async_engine(url)
    async with engine.begin() as conn:
        # Every table of every migration, present and future.
        await conn.execute(text("DROP SCHEMA public CASCADE"))
        await conn.execute(text("CREATE SCHEMA public"))
    await engine.dispose()


def demo_settings(tmp_path: Path, **overrides: Any) -> Settings:
    base: dict[str, Any] = {
        "data_dir": tmp_path / "data",
        "public_url": PUBLIC,
        "plugins": {
            "auth": {
                "demo": {
                    "attributes": {
                        "fullname": CANARY_NAME,
                        "bsn": CANARY_BSN,
                        "postcode": "6811AA",
                        "birthyear": "1980",
                        "municipality": "Arnhem",
                    }
                }
            }
        },
    }
    base.update(overrides)
    return load_settings(DEMO_CONFIG, base)


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def database(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
async def make_app(tmp_path: Path) -> AsyncIterator[AppFactory]:
    """Build and start apps; everything is closed at the end of the test."""
    async with AsyncExitStack() as stack:

        async def factory(
            settings: Settings | None = None, *, database: str = "sqlite", **kwargs: Any
        ) -> Instance:
            if settings is None:
                overrides: dict[str, Any] = {}
                if database == "postgres":
                    url = postgres_url()
                    await _reset_postgres(url)
                    overrides["database_url"] = url
                settings = demo_settings(tmp_path, **overrides)
            app = create_app(settings, **kwargs)
            await stack.enter_async_context(app.router.lifespan_context(app))
            client = httpx.AsyncClient(
                transport=httpx.ASGITransport(app=app), base_url=settings.public_url
            )
            await stack.enter_async_context(client)
            return Instance(app, client, services_of(app), settings)

        yield factory


@pytest.fixture
async def instance(make_app: AppFactory, database: str) -> Instance:
    """The embedded demo on each database."""
    result: Instance = await make_app(database=database)
    return result


async def until(check: Callable[[], Awaitable[Any]], what: str, timeout: float = 20.0) -> Any:
    """Wait for ``check()`` to return something truthy: a condition, polled every 50 ms, with
    a deadline (for state that lives in a database or another process)."""
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while True:
        value = await check()
        if value:
            return value
        if loop.time() > end:
            raise AssertionError(f"timed out waiting for: {what}")
        await asyncio.sleep(0.05)


def path_of(url: str) -> str:
    """The path and query of an absolute URL on the test server."""
    assert url.startswith(PUBLIC), "expected a URL on this instance"
    return url[len(PUBLIC) :]
