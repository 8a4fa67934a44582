"""Talk without identifying, where a topic allows it: the channel starts, no data is asked."""

from __future__ import annotations

import pytest
from sqlalchemy import text

from tests.conftest import CANARY_NAME, PUBLIC, AppFactory, Instance, path_of
from tests.flows.test_core_flows import JSON, count

pytestmark = pytest.mark.anyio


async def test_a_topic_that_allows_it_starts_only_the_channel(make_app: AppFactory) -> None:
    inst: Instance = await make_app()
    body = {"purpose": "waste_collection", "comm_method": "demo"}
    response = await inst.client.post("/start", json=body, headers=JSON)
    assert response.status_code == 200, response.text
    landing = response.json()["client_url"]
    assert landing.startswith(f"{PUBLIC}/comm/demo/c/")  # no auth plugin in between
    page = await inst.client.get(path_of(landing))
    assert "zonder u te identificeren" in page.text and CANARY_NAME not in page.text
    assert inst.services.engine is not None
    async with inst.services.engine.connect() as conn:
        state, slot = (await conn.execute(text("SELECT state, slot_hash FROM conversations"))).one()
    assert state == "waiting" and slot is None  # no attr_url slot: nothing can be delivered
    assert await count(inst, "vault_entries") == 0


async def test_the_topic_page_offers_it_as_a_form_choice(make_app: AppFactory) -> None:
    inst: Instance = await make_app()
    index = await inst.client.get("/")
    assert 'name="auth_method" value=""' in index.text
    form = {"purpose": "waste_collection", "auth_method": "", "comm_method": "demo"}
    response = await inst.client.post("/start", data=form)
    assert response.status_code == 303
    assert response.headers["location"].startswith(f"{PUBLIC}/comm/demo/c/")


async def test_a_topic_that_needs_identification_refuses_it(make_app: AppFactory) -> None:
    inst: Instance = await make_app()
    before = await count(inst, "conversations")
    body = {"purpose": "report_move", "comm_method": "demo"}
    response = await inst.client.post("/start", json=body, headers=JSON)
    assert response.status_code == 400
    assert response.json()["type"].endswith("/method-not-allowed")
    # Calling the channel directly does not get round it either.
    direct = await inst.client.post(
        "/comm/demo/start_communication", json={"purpose": "report_move", "unidentified": True}
    )
    assert direct.status_code == 400
    assert await count(inst, "conversations") == before


async def test_the_transparency_page_says_so(make_app: AppFactory) -> None:
    inst: Instance = await make_app()
    text_ = (await inst.client.get("/privacy")).text
    assert text_.count("ook zonder identificeren mogelijk") == 1
