"""The demo wallet of the embedded mode: the Yivi app's part in a browser tab, speaking the real
app protocol to the built-in IRMA server."""

from __future__ import annotations

import html
import re

import pytest

from tests.conftest import PUBLIC, Instance, path_of

pytestmark = pytest.mark.anyio

JSON = {"Accept": "application/json"}
START = {"purpose": "report_move", "auth_method": "yivi", "comm_method": "demo"}


async def yivi_page(inst: Instance) -> tuple[str, str]:
    """The resident's Yivi page and its link to the demo wallet."""
    started = await inst.client.post("/start", json=START, headers=JSON)
    assert started.status_code == 200, started.text
    page_url = path_of(started.json()["client_url"])
    page = await inst.client.get(page_url)
    found = re.search(r'id="demo-wallet" href="([^"]+)"', page.text)
    assert found, "the demo's Yivi page links to the demo wallet"
    return page_url, html.unescape(found.group(1))


async def test_a_resident_without_a_phone_identifies_with_the_demo_wallet(
    instance: Instance,
) -> None:
    client = instance.client
    page_url, wallet_link = await yivi_page(instance)
    opened = await client.get(wallet_link)
    assert opened.status_code == 303
    session = opened.headers["location"]
    shown = await client.get(session)
    code = re.search(r'id="pairing-code">(\d{4})<', shown.text)
    assert code, "the wallet shows the pairing code, as the app does"
    assert "Niets hier is echt" in shown.text
    assert (await client.post(page_url + "/pair", data={"code": code.group(1)})).status_code == 303

    asked = await client.get(session)
    assert "Deze gegevens delen?" in asked.text
    assert "<li>Naam</li>" in asked.text and "<li>Burgerservicenummer (BSN)</li>" in asked.text
    assert "Deze wallet heeft deze gegevens niet" in asked.text  # empty until demo data
    issued = await client.post("/demo-wallet/issue", data={"next": session})
    assert issued.status_code == 303 and issued.headers["location"] == session
    ready = await client.get(session)
    assert 'value="share"' in ready.text
    shared = await client.post(session, data={"action": "share"})
    assert "Gedeeld" in shared.text

    done = await client.get(page_url + "/done")
    assert done.status_code == 303
    conversation = done.headers["location"].split("?", 1)[0].rsplit("/", 1)[1]
    conversations = instance.services.conversations
    assert conversations is not None
    stored = await conversations.attributes(conversation, actor="test")
    assert stored is not None
    assert stored["attributes"] == {"fullname": "Demi de Demo", "bsn": "999990019"}
    provenance = stored["provenance"]
    assert isinstance(provenance, dict) and provenance["issuer"] == "irma-demo.gemeente"
    # The wallet shows what it holds: made-up data, clearly so.
    home = await client.get("/demo-wallet")
    assert "Demi de Demo" in home.text and "Demo Persoonsgegevens" in home.text


async def test_refusing_in_the_demo_wallet_is_the_failure_page(instance: Instance) -> None:
    client = instance.client
    page_url, wallet_link = await yivi_page(instance)
    session = (await client.get(wallet_link)).headers["location"]
    code = re.search(r'id="pairing-code">(\d{4})<', (await client.get(session)).text)
    assert code
    await client.post(page_url + "/pair", data={"code": code.group(1)})
    refused = await client.post(session, data={"action": "cancel"})
    assert "Er is niets gedeeld" in refused.text
    failed = await client.get(page_url + "/done")
    assert "Identificeren met Yivi is niet gelukt" in failed.text


async def test_the_demo_wallet_opens_only_this_servers_sessions(instance: Instance) -> None:
    client = instance.client
    for u in ("https://evil.example/yivi/irma/session/x", f"{PUBLIC}/yivi/irma/session/a/b"):
        refused = await client.get("/demo-wallet/open", params={"u": u})
        assert refused.status_code == 400
        assert refused.headers["content-type"] == "application/problem+json"
    unknown = await client.get("/demo-wallet/open", params={"u": f"{PUBLIC}/yivi/irma/session/x"})
    assert unknown.status_code == 404
    assert (await client.get("/demo-wallet/s/nothing")).status_code == 404
