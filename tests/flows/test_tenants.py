"""Several municipalities in one deployment: each has its own URLs, purposes, keys and data."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import text

from idcontact.errors import ConfigError
from idcontact.settings import load_settings
from tests.conftest import CANARY_NAME, PUBLIC, AppFactory, Instance, demo_settings, path_of
from tests.flows.test_core_flows import JSON, START, consent, issue

pytestmark = pytest.mark.anyio

NIJMEGEN_CANARY = "Canary-Nijmegen-5RT"


def two_tenants(tmp_path: Any) -> Any:
    return demo_settings(
        tmp_path,
        tenants=[
            {
                "slug": "nijmegen",
                "name": "Gemeente Nijmegen",
                "design": {"primary_color": "#006c3f"},
                "auth_methods": [
                    {"tag": "demo", "name": "Demo", "plugin": "demo", "assurance": "substantial"}
                ],
                "comm_methods": [{"tag": "demo", "name": "Demokanaal", "plugin": "demo"}],
                "purposes": [
                    {
                        "tag": "parking_permit",
                        "label": {"nl": "Parkeervergunning"},
                        "attributes": ["fullname"],
                        "allowed_auth": ["*"],
                        "allowed_comm": ["*"],
                    }
                ],
                "plugins": {"auth": {"demo": {"attributes": {"fullname": NIJMEGEN_CANARY}}}},
            }
        ],
    )


async def flow(instance: Instance, prefix: str, purpose: str) -> str:
    body = {"purpose": purpose, "auth_method": "demo", "comm_method": "demo"}
    started = await instance.client.post(f"{prefix}/start", json=body, headers=JSON)
    assert started.status_code == 200, started.text
    client_url = started.json()["client_url"]
    assert client_url.startswith(f"{PUBLIC}{prefix}/auth/demo/confirm/")
    redirect = await consent(instance.client, client_url)
    return str(redirect.headers["location"])


async def test_each_tenant_has_its_own_purposes_and_pages(
    make_app: AppFactory, tmp_path: Any
) -> None:
    inst: Instance = await make_app(two_tenants(tmp_path))
    root = (await inst.client.get("/session_options")).json()
    nijmegen = (await inst.client.get("/t/nijmegen/session_options")).json()
    assert "report_move" in root and "parking_permit" not in root
    assert list(nijmegen) == ["parking_permit"]
    wrong = await inst.client.post(
        "/t/nijmegen/start", json={**START, "purpose": "report_move"}, headers=JSON
    )
    assert wrong.status_code == 400  # the default tenant's purpose is not Nijmegen's
    page = await inst.client.get("/t/nijmegen/")
    assert "Gemeente Nijmegen" in page.text and "Parkeervergunning" in page.text
    assert 'action="/t/nijmegen/start"' in page.text
    assert "Verhuizing doorgeven" not in page.text
    theme = await inst.client.get("/t/nijmegen/theme.css")
    assert "--primary: #006c3f" in theme.text
    assert "--primary: #154273" in (await inst.client.get("/theme.css")).text


async def test_flows_stay_within_their_tenant(make_app: AppFactory, tmp_path: Any) -> None:
    inst: Instance = await make_app(two_tenants(tmp_path))
    landing = await flow(inst, "/t/nijmegen", "parking_permit")
    assert landing.startswith(f"{PUBLIC}/t/nijmegen/comm/demo/c/")
    page = await inst.client.get(path_of(landing))
    # Nijmegen's own waiting room: the attribute named (no label configured: its tag), not its
    # value; first in Nijmegen's line.
    assert "U bent nummer 1 in de rij." in page.text and "<li>fullname</li>" in page.text
    assert NIJMEGEN_CANARY not in page.text
    conversation_id = landing.rsplit("/", 1)[1]
    # Through the default tenant's URLs the conversation does not exist at all.
    foreign = await inst.client.get(f"/comm/demo/c/{conversation_id}")
    assert foreign.status_code == 404 and NIJMEGEN_CANARY not in foreign.text
    ended = await inst.client.post(f"/comm/demo/c/{conversation_id}/end")
    assert ended.status_code == 404
    assert (await inst.client.get(f"/comm/demo/c/{conversation_id}/events")).status_code == 404
    still = (await inst.client.get(path_of(landing))).text
    assert "U bent nummer 1 in de rij." in still  # still there, still waiting
    # The default tenant's flow works beside it, with its own line: first there too.
    root_landing = await flow(inst, "", "report_move")
    root_page = (await inst.client.get(path_of(root_landing))).text
    assert "U bent nummer 1 in de rij." in root_page and CANARY_NAME not in root_page
    assert inst.services.conversations is not None
    data = await inst.services.conversations.attributes(
        root_landing.rsplit("/", 1)[1], actor="test"
    )
    assert data is not None and data["attributes"]["fullname"] == CANARY_NAME  # its own data
    assert inst.services.engine is not None
    async with inst.services.engine.connect() as conn:
        rows = (await conn.execute(text("SELECT id, tenant FROM conversations"))).all()
    assert {r.tenant for r in rows} == {"default", "nijmegen"}


async def test_each_tenant_trusts_only_its_own_keys(make_app: AppFactory, tmp_path: Any) -> None:
    inst: Instance = await make_app(two_tenants(tmp_path))
    assert inst.services.tenants["nijmegen"].keys.signing_kid != inst.services.keys.signing_kid
    assert (tmp_path / "data" / "keys" / "nijmegen" / "attr-signing.key.pem").exists()
    token = issue(inst)  # signed and encrypted with the default tenant's keys
    body = {"purpose": "parking_permit", "auth_result": token, "comm_method": "demo"}
    refused = await inst.client.post("/t/nijmegen/start", json=body, headers=JSON)
    assert refused.status_code == 400
    assert refused.json()["type"].endswith("/invalid-token")


def test_tenant_slugs_are_checked(tmp_path: Any) -> None:
    base = two_tenants(tmp_path).model_dump(mode="json", exclude={"tenants"})
    tenant = two_tenants(tmp_path).tenants[0].model_dump(mode="json")
    for bad in (
        [tenant, tenant],  # duplicate
        [{**tenant, "slug": "default"}],  # reserved
        [{**tenant, "slug": "Bad Slug"}],
        [{**tenant, "design": {"primary_color": "red;}body{display:none"}}],
        [{**tenant, "logo": "https://cdn.example.org/logo.svg"}],  # third-party host
    ):
        with pytest.raises(ConfigError) as caught:
            load_settings(None, {**base, "data_dir": str(tmp_path), "tenants": bad})
        assert "tenants" in caught.value.detail
