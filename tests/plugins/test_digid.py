"""The ``digid`` auth plugin against real servers on 127.0.0.1: a pysaml2 IdP (front channel
over HTTP, artifact resolution over HTTPS with a client certificate), a BRP stub in the Haal
Centraal shape (HTTPS, client certificate), and an OpenID Connect provider as the broker.
The resident's browser is the test client (the app in process); it follows the redirects to
the IdP over the network."""

from __future__ import annotations

import base64
import html
import logging
import re
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from saml2 import BINDING_HTTP_POST

from idcontact.digid.levels import CLASSES
from idcontact.errors import ConfigError
from tests.brp_stub import CANARY_NAME
from tests.conftest import PUBLIC, AppFactory, Instance, path_of
from tests.digid_world import (
    OTHER_BSN,
    SP_ENTITY,
    START,
    World,
    at_idp,
    delivered,
    digid_settings,
    digid_world,
    make,
    plugin_config,
    refused,
    share,
    stored,
    to_idp,
)
from tests.oidc_provider import CLIENT_ID, CLIENT_SECRET
from tests.saml_idp import BSN, form_fields

pytestmark = pytest.mark.anyio


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    with digid_world(tmp_path) as w:
        yield w


@pytest.fixture
async def browser() -> AsyncIterator[httpx.AsyncClient]:
    """The resident's browser on the network (the IdP, the broker)."""
    async with httpx.AsyncClient(timeout=20) as client:
        yield client


async def test_artifact_login_confirm_pass_on_and_single_logout(
    world: World, make_app: AppFactory, browser: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    inst = await make(make_app, world)
    url = await to_idp(inst)
    assert url.startswith(world.idp.base + "/sso?SAMLRequest=")
    assert "Signature=" in url and "SigAlg=" in url  # a signed AuthnRequest (Redirect)
    back = await at_idp(inst, browser, url)
    # What the IdP was asked: the minimum level, and the answer by artifact.
    request = world.idp.requests[-1]
    context = request.requested_authn_context
    assert context.comparison == "minimum"
    assert [c.text for c in context.authn_context_class_ref] == [
        CLASSES + "MobileTwoFactorContract"
    ]
    assert request.protocol_binding.endswith("HTTP-Artifact")
    assert world.idp.resolves == 1  # resolved over the mutual-TLS back channel
    assert back.status_code == 303 and back.headers["location"] == f"{PUBLIC}/auth/digid/confirm"
    # The BRP was asked exactly the purpose's other attribute, for the BSN of the login.
    assert world.brp.requests == [
        {
            "type": "RaadpleegMetBurgerservicenummer",
            "burgerservicenummer": [BSN],
            "fields": ["naam.volledigeNaam"],
        }
    ]
    page = await inst.client.get("/auth/digid/confirm")
    assert page.status_code == 200
    assert "Deze gegevens geven we door aan de medewerker" in page.text
    assert CANARY_NAME in page.text and BSN in page.text and "niveau Midden" in page.text
    assert await stored(inst) == 0  # nothing passed on before the resident says yes
    result = await share(inst, browser)
    assert result["attributes"] == {"fullname": CANARY_NAME, "bsn": BSN}
    provenance = result["provenance"]
    assert provenance["assurance"] == "substantial"
    assert provenance["credential"] == "DigiD Midden (MobileTwoFactorContract)"
    assert provenance["issuer"] == world.idp.entity_id
    assert world.idp.logouts == 1 and world.idp.logout_name_ids == [f"s00000000:{BSN}"]
    # The confirmation is gone: a second "pass on" does nothing.
    again = await inst.client.post("/auth/digid/confirm", data={"action": "share"})
    refused(again, "no-flow")
    logged = caplog.text
    assert CANARY_NAME not in logged and BSN not in logged and "SAMLart" not in logged


@pytest.mark.parametrize(
    ("level", "assurance", "purpose", "class_ref", "label"),
    [
        ("basis", "low", "waste_collection", "PasswordProtectedTransport", "Basis"),
        ("midden", "substantial", "report_move", "MobileTwoFactorContract", "Midden"),
        ("substantieel", "substantial", "report_move", "Smartcard", "Substantieel"),
        ("hoog", "high", "report_move", "SmartcardPKI", "Hoog"),
    ],
)
async def test_each_level_logs_in_and_is_reported(
    world: World,
    make_app: AppFactory,
    browser: httpx.AsyncClient,
    level: str,
    assurance: str,
    purpose: str,
    class_ref: str,
    label: str,
) -> None:
    inst = await make(make_app, world, level=level, assurance=assurance)
    world.idp.class_ref = CLASSES + class_ref
    back = await at_idp(inst, browser, await to_idp(inst, {**START, "purpose": purpose}))
    assert back.status_code == 303, back.text
    context = world.idp.requests[-1].requested_authn_context
    assert context.authn_context_class_ref[0].text == CLASSES + class_ref
    result = await share(inst, browser)
    assert result["provenance"]["credential"] == f"DigiD {label} ({class_ref})"
    assert result["provenance"]["assurance"] == assurance


async def test_a_login_below_the_minimum_level_is_refused(
    world: World, make_app: AppFactory, browser: httpx.AsyncClient
) -> None:
    inst = await make(make_app, world, level="substantieel")
    world.idp.class_ref = CLASSES + "MobileTwoFactorContract"  # Midden < Substantieel
    page = await at_idp(inst, browser, await to_idp(inst))
    refused(page, "level")
    assert "sterkere DigiD-inlog" in page.text
    assert world.brp.requests == [] and await stored(inst) == 0


@pytest.mark.parametrize(
    ("knob", "value", "reason"),
    [
        ("rogue_signature", True, "signature"),
        ("audience", "https://someone-else.example/sp", "audience"),
        ("age_seconds", 900, "expired"),
    ],
)
async def test_bad_assertions_are_refused_and_nothing_is_stored(
    world: World,
    make_app: AppFactory,
    browser: httpx.AsyncClient,
    knob: str,
    value: Any,
    reason: str,
) -> None:
    inst = await make(make_app, world)
    setattr(world.idp, knob, value)
    page = await at_idp(inst, browser, await to_idp(inst))
    refused(page, reason)
    assert world.brp.requests == [] and await stored(inst) == 0
    # Try again (the same start), or choose another way: the channel hears "failed".
    again = re.search(r'class="button" href="([^"]+)"', page.text)
    assert again is not None and "/auth/digid/login/" in again.group(1)
    state = re.search(r'name="state" value="([^"]+)"', page.text)
    assert state is not None
    given_up = await inst.client.post("/auth/digid/give_up", data={"state": state.group(1)})
    assert given_up.status_code == 303
    landing = await inst.client.get(path_of(given_up.headers["location"]))
    assert "Identificeren is geannuleerd of mislukt" in landing.text


async def test_an_artifact_works_once_even_when_the_idp_would_answer_again(
    world: World, make_app: AppFactory, browser: httpx.AsyncClient
) -> None:
    inst = await make(make_app, world)
    world.idp.keep_artifacts = True
    url = await to_idp(inst)
    login_cookie = dict(inst.client.cookies)
    answer = await browser.get(url)
    back = answer.headers["location"]
    first = await inst.client.get(path_of(back))
    assert first.status_code == 303
    inst.client.cookies.clear()
    inst.client.cookies.update(login_cookie)  # the same browser state, replayed
    second = await inst.client.get(path_of(back))
    refused(second, "replay")
    assert world.idp.resolves == 1  # never sent to the IdP again


async def test_post_binding_with_metadata_from_a_url_and_a_replayed_assertion(
    world: World, make_app: AppFactory, browser: httpx.AsyncClient
) -> None:
    inst = await make(
        make_app,
        world,
        saml={
            "binding": "post",
            "idp_metadata_file": None,
            "idp_metadata_url": f"{world.idp.base}/metadata",
        },
    )
    world.idp.binding = BINDING_HTTP_POST
    url = await to_idp(inst)
    assert world.idp.requests == []
    login_cookie = dict(inst.client.cookies)
    form = form_fields((await browser.get(url)).text)
    assert world.idp.requests[-1].protocol_binding.endswith("HTTP-POST")
    first = await inst.client.post("/auth/digid/acs", data=form)
    assert first.status_code == 303, first.text
    inst.client.cookies.clear()
    inst.client.cookies.update(login_cookie)
    second = await inst.client.post("/auth/digid/acs", data=form)
    refused(second, "replay")
    # A tampered NameID breaks the signature.
    inst.client.cookies.clear()
    inst.client.cookies.update(login_cookie)
    xml = base64.b64decode(form["SAMLResponse"]).decode()
    tampered = xml.replace(f"s00000000:{BSN}", f"s00000000:{OTHER_BSN}")
    assert tampered != xml
    forged = await inst.client.post(
        "/auth/digid/acs",
        data={**form, "SAMLResponse": base64.b64encode(tampered.encode()).decode()},
    )
    refused(forged, "signature")


BOMB = """<?xml version="1.0"?>
<!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
<!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">]>
<samlp:Response xmlns:samlp="urn:oasis:names:tc:SAML:2.0:protocol">&lol3;</samlp:Response>"""
XXE = """<?xml version="1.0"?>
<!DOCTYPE r [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>
<samlp:Response xmlns:samlp="urn:oasis:names:tc:SAML:2.0:protocol">&xxe;</samlp:Response>"""


@pytest.mark.parametrize(
    "payload",
    [
        base64.b64encode(BOMB.encode()).decode(),
        base64.b64encode(XXE.encode()).decode(),
        base64.b64encode(XXE.encode("utf-16")).decode(),
        base64.b64encode(b"<samlp:Response><unclosed>").decode(),
        "not base64 at all!",
        base64.b64encode(b"<a>" + b"x" * 400_000 + b"</a>").decode(),
    ],
    ids=["billion-laughs", "external-entity", "utf16-entity", "not-xml", "not-base64", "huge"],
)
async def test_malformed_xml_and_xml_bombs_are_refused_before_parsing(
    world: World, make_app: AppFactory, browser: httpx.AsyncClient, payload: str
) -> None:
    inst = await make(make_app, world, saml={"binding": "post"})
    world.idp.binding = BINDING_HTTP_POST
    url = await to_idp(inst)
    relay = parse_qs(urlsplit(url).query)["RelayState"][0]
    page = await inst.client.post(
        "/auth/digid/acs", data={"SAMLResponse": payload, "RelayState": relay}
    )
    assert page.status_code in (400, 413)
    if page.status_code == 413:  # stopped by the body limit before the plugin saw it
        assert page.headers["content-type"] == "application/problem+json"
    else:  # refused by our guard ("malformed"), before pysaml2 parsed anything
        refused(page, "malformed")
    assert "root:" not in page.text and await stored(inst) == 0


async def test_cancel_at_the_idp_and_on_the_confirmation_page_are_failed_results(
    world: World, make_app: AppFactory, browser: httpx.AsyncClient
) -> None:
    inst = await make(make_app, world)
    world.idp.cancel = True
    page = await at_idp(inst, browser, await to_idp(inst))
    assert page.status_code == 200
    assert "Inloggen met DigiD is geannuleerd" in page.text
    assert "Er zijn geen gegevens van u doorgegeven" in page.text
    link = re.search(r'class="button" href="([^"]+)"', page.text)
    assert link is not None
    landing = await inst.client.get(path_of(html.unescape(link.group(1))))
    assert "Identificeren is geannuleerd of mislukt" in landing.text
    # Logged in, but the resident says no on our page.
    world.idp.cancel = False
    back = await at_idp(inst, browser, await to_idp(inst))
    assert back.status_code == 303
    cancelled = await inst.client.post("/auth/digid/confirm", data={"action": "cancel"})
    assert cancelled.status_code == 303  # to the IdP: its session is ended all the same
    logout = await browser.get(cancelled.headers["location"])
    assert world.idp.logouts == 1
    page = await inst.client.get(path_of(logout.headers["location"]))
    assert "U heeft geannuleerd" in page.text
    assert await stored(inst) == 0


async def test_sp_metadata_and_bad_starts(world: World, make_app: AppFactory) -> None:
    inst = await make(make_app, world)
    metadata = await inst.client.get("/auth/digid/metadata")
    assert metadata.headers["content-type"].startswith("application/samlmetadata+xml")
    xml = metadata.text
    assert f'entityID="{SP_ENTITY}"' in xml
    assert f'Location="{PUBLIC}/auth/digid/acs"' in xml and "HTTP-Artifact" in xml
    assert 'AuthnRequestsSigned="true"' in xml and 'WantAssertionsSigned="true"' in xml
    assert "SignatureValue" in xml  # the metadata itself is signed
    unknown = await inst.client.post(
        "/auth/digid/start_authentication",
        json={"attributes": ["shoe_size"], "continuation": f"{PUBLIC}/x"},
    )
    assert unknown.status_code == 400
    assert unknown.headers["content-type"] == "application/problem+json"
    stray = await inst.client.get("/auth/digid/acs?SAMLart=AAQAAA&RelayState=x")
    refused(stray, "no-flow")  # no login started in this browser


async def test_a_test_bsn_is_mapped_for_the_brp_and_the_agent(
    world: World, make_app: AppFactory, browser: httpx.AsyncClient
) -> None:
    inst = await make(make_app, world, test_bsns={BSN: OTHER_BSN})
    back = await at_idp(inst, browser, await to_idp(inst))
    assert back.status_code == 303
    assert world.brp.requests[-1]["burgerservicenummer"] == [OTHER_BSN]
    result = await share(inst, browser)
    assert result["attributes"] == {"fullname": "Other Person", "bsn": OTHER_BSN}


async def test_an_unknown_person_at_the_brp_is_a_clear_page(
    world: World, make_app: AppFactory, browser: httpx.AsyncClient
) -> None:
    world.brp.persons.clear()
    inst = await make(make_app, world)
    page = await at_idp(inst, browser, await to_idp(inst))
    refused(page, "brp")
    assert "Basisregistratie Personen" in page.text and await stored(inst) == 0


def oidc_changes(world: World, **oidc: Any) -> dict[str, Any]:
    return {
        "protocol": "oidc",
        "oidc": {
            "issuer": world.oidc_url,
            "client_id": CLIENT_ID,
            "client_secret": CLIENT_SECRET,
            "allow_http": True,
            **oidc,
        },
    }


async def test_oidc_broker_login_with_level_check(
    world: World, make_app: AppFactory, browser: httpx.AsyncClient
) -> None:
    inst = await make(make_app, world, **oidc_changes(world))
    world.oidc.redirect_uris.add(f"{PUBLIC}/auth/digid/oidc")
    world.oidc.user = {
        "sub": "pseudonym-1",
        "bsn": f"s00000000:{BSN}",
        "acr": CLASSES + "Smartcard",
    }
    url = await to_idp(inst)
    assert url.startswith(world.oidc_url + "/authorize?")
    # The minimum level is asked for (acr_values), and checked on the ID token.
    assert parse_qs(urlsplit(url).query)["acr_values"] == [CLASSES + "MobileTwoFactorContract"]
    answer = await browser.get(url)
    back = await inst.client.get(path_of(answer.headers["location"]))
    assert back.status_code == 303, back.text
    result = await share_without_logout(inst)
    assert result["attributes"] == {"fullname": CANARY_NAME, "bsn": BSN}
    assert result["provenance"]["credential"] == "DigiD Substantieel (Smartcard)"
    # Too low a level at the broker: refused.
    world.oidc.user = {"sub": "p", "bsn": BSN, "acr": CLASSES + "PasswordProtectedTransport"}
    answer = await browser.get(await to_idp(inst))
    page = await inst.client.get(path_of(answer.headers["location"]))
    refused(page, "level")
    # Cancel at the broker: a failed result.
    world.oidc.deny = "access_denied"
    answer = await browser.get(await to_idp(inst))
    page = await inst.client.get(path_of(answer.headers["location"]))
    assert "Inloggen met DigiD is geannuleerd" in page.text


async def share_without_logout(inst: Instance) -> dict[str, Any]:
    shared = await inst.client.post("/auth/digid/confirm", data={"action": "share"})
    assert shared.status_code == 303
    return await delivered(inst, shared.headers["location"])


@pytest.mark.parametrize(
    ("changes", "assurance", "message"),
    [
        ({"level": "basis"}, "substantial", "more than DigiD level Basis"),
        ({"brp": None}, "substantial", "not mapped: birthyear, fullname, municipality"),
        ({"protocol": "oidc"}, "substantial", "oidc: needed with protocol"),
        ({"saml": {"idp_metadata_url": "https://x.example/m"}}, "substantial", "exactly one"),
        ({"saml": {"idp_metadata_file": "/nonexistent.xml"}}, "substantial", "cannot be read"),
    ],
)
async def test_bad_configuration_stops_start_up_naming_the_setting(
    world: World, make_app: AppFactory, changes: dict[str, Any], assurance: str, message: str
) -> None:
    with pytest.raises(ConfigError) as error:
        await make_app(digid_settings(world, assurance=assurance, **changes))
    assert message in str(error.value)
    assert "BEGIN" not in str(error.value)  # never a key or certificate


async def test_each_municipality_has_its_own_sp_and_flows_stay_apart(
    world: World, make_app: AppFactory, browser: httpx.AsyncClient
) -> None:
    base = digid_settings(world)
    own = plugin_config(world)
    own["saml"] |= {
        "entity_id": "https://nijmegen.example/digid",
        "certificate_file": str(world.pki.sp2.cert),
        "key_file": str(world.pki.sp2.key),
    }
    method = base.auth_methods[1].model_dump(mode="json")
    nijmegen = {
        "slug": "nijmegen",
        "name": "Gemeente Nijmegen",
        "auth_methods": [method],
        "comm_methods": [{"tag": "demo", "name": "Demokanaal", "plugin": "demo"}],
        "attribute_labels": {"bsn": {"nl": "BSN"}},
        "purposes": [
            {
                "tag": "question",
                "label": {"nl": "Vraag"},
                "attributes": ["bsn"],
                "allowed_auth": ["*"],
                "allowed_comm": ["*"],
            }
        ],
        "plugins": {"auth": {"digid": own}},
    }
    inst: Instance = await make_app(digid_settings(world, top={"tenants": [nijmegen]}))
    ours = (await inst.client.get("/auth/digid/metadata")).text
    theirs = (await inst.client.get("/t/nijmegen/auth/digid/metadata")).text
    assert 'entityID="https://nijmegen.example/digid"' in theirs
    assert f'Location="{PUBLIC}/t/nijmegen/auth/digid/acs"' in theirs
    assert SP_ENTITY not in theirs and "nijmegen" not in ours
    world.idp.trust(ours, theirs)
    start = {"purpose": "question", "auth_method": "digid", "comm_method": "demo"}
    url = await to_idp(inst, start, prefix="/t/nijmegen")
    assert world.idp.requests == []
    answer = await browser.get(url)
    assert world.idp.requests[-1].issuer.text == "https://nijmegen.example/digid"
    back = answer.headers["location"]
    assert back.startswith(f"{PUBLIC}/t/nijmegen/auth/digid/acs?")
    # Nijmegen's answer at the default municipality's ACS: no login of this browser there.
    stray = await inst.client.get(path_of(back).replace("/t/nijmegen", "", 1))
    refused(stray, "no-flow")
    page = await inst.client.get(path_of(back))
    assert page.status_code == 303
    assert page.headers["location"] == f"{PUBLIC}/t/nijmegen/auth/digid/confirm"
