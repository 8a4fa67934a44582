"""Citizen pages: the topic list and the transparency page follow the configuration."""

from __future__ import annotations

from typing import Any

import pytest

from tests.conftest import AppFactory, Instance, demo_settings

pytestmark = pytest.mark.anyio


async def test_index_shows_data_reason_and_retention(make_app: AppFactory) -> None:
    inst: Instance = await make_app()
    page = await inst.client.get("/")
    assert page.status_code == 200
    text = page.text
    assert "Verhuizing doorgeven" in text
    assert "Naam, Burgerservicenummer (BSN)" in text
    assert "Wet BRP art. 2.38" in text and "2 uur" in text
    english = await inst.client.get("/?lang=en")
    assert 'lang="en"' in english.text and "Report a move" in english.text


async def test_transparency_page_is_generated_from_configuration(
    make_app: AppFactory, tmp_path: Any
) -> None:
    settings = demo_settings(tmp_path)
    purposes = [p.model_dump() for p in settings.purposes]
    purposes[0]["legal_basis"] = {
        "gdpr_ground": "legal_obligation",
        "law": "Testwet art. 9",
        "register_id": "REG-4711",
    }
    purposes[0]["retention_minutes"] = 45
    inst: Instance = await make_app(demo_settings(tmp_path, purposes=purposes))
    text = (await inst.client.get("/privacy")).text
    assert "Testwet art. 9" in text and "REG-4711" in text
    assert "Wettelijke plicht (AVG art. 6 lid 1 sub c)" in text
    assert "45 minuten" in text and "15 minuten" in text  # retention and idle deletion
    assert "Demo-identificatie (betrouwbaarheid substantieel)" in text
    assert "Gemeente: Arnhem, Nijmegen" in text  # the senior pass's eligibility rule
    assert "Waar ID Contact niet over gaat" in text
    english = (await inst.client.get("/privacy?lang=en")).text
    assert "Legal obligation (GDPR art. 6(1)(c))" in english and "45 minutes" in english
    assert "What ID Contact does not control" in english


async def test_pages_have_no_third_party_resources(make_app: AppFactory) -> None:
    inst: Instance = await make_app()
    for path in ("/", "/privacy"):
        response = await inst.client.get(path)
        assert "http://" not in response.text.replace('href="http://testserver', "")
        assert "https://" not in response.text
        assert "script-src 'self'" in response.headers["content-security-policy"]


async def test_accessibility_statement_per_tenant_and_language(make_app: AppFactory) -> None:
    inst: Instance = await make_app()
    page = await inst.client.get("/accessibility")
    assert page.status_code == 200
    assert "Toegankelijkheidsverklaring" in page.text and "WCAG 2.1" in page.text
    assert "nog niet onafhankelijk onderzocht" in page.text  # no claim we cannot back
    english = await inst.client.get("/accessibility?lang=en")
    assert "Accessibility statement" in english.text
    assert 'href="/accessibility?lang=nl"' in (await inst.client.get("/")).text
