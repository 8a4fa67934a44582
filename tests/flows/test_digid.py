"""End to end over real sockets: a resident starts a conversation, logs in with DigiD (a
pysaml2 IdP; the artifact resolved over mutual TLS; the name from the BRP stub), sees and
confirms what is passed on, the IdP session is ended, and the demo channel has the data; on
SQLite and on PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from idcontact.app import create_app
from tests.brp_stub import CANARY_NAME
from tests.conftest import _reset_postgres
from tests.digid_world import START, World, digid_settings, digid_world
from tests.live import serve
from tests.saml_idp import BSN
from tests.services import postgres_url

pytestmark = pytest.mark.anyio


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    with digid_world(tmp_path) as w:
        yield w


@pytest.mark.parametrize(
    "database", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]
)
async def test_start_digid_confirm_and_the_channel_has_the_data(
    world: World, database: str
) -> None:
    overrides: dict[str, str] = {}
    if database == "postgres":
        overrides["database_url"] = postgres_url()
        await _reset_postgres(overrides["database_url"])
    with serve(
        lambda base: create_app(digid_settings(world, public_url=base, top=overrides))
    ) as base:
        async with httpx.AsyncClient(timeout=30, follow_redirects=True) as browser:
            world.idp.trust((await browser.get(f"{base}/auth/digid/metadata")).text)
            started = await browser.post(
                f"{base}/start", json=START, headers={"Accept": "application/json"}
            )
            assert started.status_code == 200, started.text
            # To DigiD and back: the artifact is resolved, the BRP asked, then our page.
            confirm = await browser.get(started.json()["client_url"])
            assert confirm.status_code == 200, confirm.text
            assert str(confirm.url) == f"{base}/auth/digid/confirm"
            assert CANARY_NAME in confirm.text and BSN in confirm.text
            assert world.idp.resolves == 1 and len(world.brp.requests) == 1
            # Pass on: through the IdP's single logout to the demo channel.
            landing = await browser.post(confirm.url, data={"action": "share"})
            assert landing.status_code == 200, landing.text
            assert world.idp.logouts == 1
            assert "/comm/demo/" in str(landing.url)
            assert "De medewerker ziet deze gegevens van u" in landing.text
            assert "Naam" in landing.text and "Burgerservicenummer (BSN)" in landing.text
            assert CANARY_NAME not in landing.text  # the page names them, never shows them
            assert "result=" not in str(landing.url)  # delivered out of band (attr_url)
