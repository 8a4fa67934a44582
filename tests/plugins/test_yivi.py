"""The ``yivi`` auth plugin, the same tests against both backends: our built-in IRMA server and
the Go one (``scripts/services/yivi``). Our test wallet plays the Yivi app in the real protocol;
the resident's browser is the test client."""

from __future__ import annotations

import base64
import html
import json
import os
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

from idcontact.irma.request import DisclosureRequest
from idcontact.irma.wallet import Wallet
from idcontact.keys import generate_keypair
from tests.conftest import PUBLIC, AppFactory, Instance, demo_settings, path_of
from tests.irma.test_wallet import MIJN, ctype, name
from tests.services import yivi_requestor

pytestmark = pytest.mark.anyio

JSON = {"Accept": "application/json"}
APP = {"X-IRMA-MinProtocolVersion": "2.8", "X-IRMA-MaxProtocolVersion": "2.8"}
MAPPING = {
    "fullname": [
        ["irma-demo.MijnOverheid.fullName.firstnames", "irma-demo.MijnOverheid.fullName.familyname"]
    ],
    "bsn": ["irma-demo.MijnOverheid.singleton.BSN"],
    "postcode": ["irma-demo.RU.studentCard.studentID"],  # a stand-in: the demo scheme has none
}
YIVI = {
    "tag": "yivi",
    "name": "Yivi",
    "plugin": "yivi",
    "assurance": "substantial",
    "provides": list(MAPPING),
}
DEMO = {"tag": "demo", "name": "Demo-identificatie", "plugin": "demo", "assurance": "substantial"}
START = {"purpose": "report_move", "auth_method": "yivi", "comm_method": "demo"}


@dataclass
class Setup:
    inst: Instance
    app_client: httpx.AsyncClient
    """How the wallet reaches the IRMA server (in process, or the Go server over HTTP)."""


def settings(tmp_path: Path, backend: str) -> Any:
    return demo_settings(tmp_path, **overrides(tmp_path, backend))


def overrides(tmp_path: Path, backend: str = "builtin") -> dict[str, Any]:
    """Settings with the demo and the yivi method, the latter on ``backend``."""
    plugin: dict[str, Any] = {"attributes": MAPPING}
    if backend == "go":
        go = yivi_requestor()
        key = Path(os.environ["IDCONTACT_TEST_YIVI_DIR"]) / "result.pub.pem"
        plugin |= {
            "server": go.url,
            "token": go.token,
            "result_key": {"type": "RSA", "key_file": str(key)},
        }
    plugins = demo_settings(tmp_path).plugins
    return {
        "auth_methods": [DEMO, YIVI],
        "plugins": {**plugins, "auth": {**plugins["auth"], "yivi": plugin}},
    }


@pytest.fixture(params=["builtin", "go"])
async def setup(
    request: pytest.FixtureRequest, make_app: AppFactory, tmp_path: Path
) -> AsyncIterator[Setup]:
    inst = await make_app(settings(tmp_path, request.param))
    if request.param == "builtin":
        yield Setup(inst, inst.client)
    else:
        async with httpx.AsyncClient(timeout=10) as client:
            yield Setup(inst, client)


def wallet() -> Wallet:
    w = Wallet()
    name(w)  # irma-demo.MijnOverheid.fullName: firstnames "Demi", familyname "Demo"
    w.add(MIJN.issue(ctype("irma-demo.MijnOverheid.singleton"), {"BSN": "999990019"}, w.secret))
    return w


def pointer_of(page: str) -> dict[str, Any]:
    found = re.search(r'data-pointer="([^"]+)"', page)
    assert found, "the page shows the session (QR code)"
    result: dict[str, Any] = json.loads(html.unescape(found.group(1)))
    return result


def app_url(setup: Setup, url: str) -> str:
    return path_of(url) if url.startswith(PUBLIC) else url


async def begin(setup: Setup, start: dict[str, str] = START) -> tuple[str, str, str]:
    """The resident starts; the page shows the QR code; the app scans it and shows the pairing
    code. Returns the page's path, the app's session URL and the pairing code."""
    client = setup.inst.client
    started = await client.post("/start", json=start, headers=JSON)
    assert started.status_code == 200, started.text
    page_url = path_of(started.json()["client_url"])
    page = await client.get(page_url)
    assert page.status_code == 200
    assert "<svg" in page.text and "https://open.yivi.app/-/session#" in page.text
    url = app_url(setup, pointer_of(page.text)["u"])
    opened = await setup.app_client.get(url + "/", headers={**APP, "Authorization": "app"})
    assert opened.status_code == 200, opened.text
    options = opened.json()["options"]
    assert options["pairingMethod"] == "pin"  # always, against relay phishing
    assert "request" not in opened.json()
    return page_url, url, options["pairingCode"]


async def disclose(setup: Setup, url: str, w: Wallet | None = None) -> Any:
    request = await setup.app_client.get(url + "/request", headers={"Authorization": "app"})
    assert request.status_code == 200, request.text
    asked = request.json()
    proofs = (w or wallet()).disclose(DisclosureRequest.parse(asked))
    sent = await setup.app_client.post(
        url + "/proofs", json=proofs, headers={"Authorization": "app"}
    )
    assert sent.json() == {"proofStatus": "VALID"}
    return asked


async def test_a_resident_discloses_with_pairing_and_the_attributes_arrive(setup: Setup) -> None:
    client = setup.inst.client
    page_url, url, code = await begin(setup)
    page = await client.get(page_url)
    assert "Typ de code uit uw Yivi-app over" in page.text  # the page follows the app
    wrong = await client.post(
        page_url + "/pair", data={"code": "0000" if code != "0000" else "1111"}
    )
    assert wrong.status_code == 200 and "Die code klopt niet" in wrong.text
    paired = await client.post(page_url + "/pair", data={"code": code})
    assert paired.status_code == 303
    asked = await disclose(setup, url)
    # What the app was asked: one disjunction per attribute, labelled in Dutch and English.
    assert asked["disclose"] == [MAPPING["fullname"], [[MAPPING["bsn"][0]]]]
    assert asked["labels"]["1"] == {
        "nl": "Burgerservicenummer (BSN)",
        "en": "Citizen service number (BSN)",
    }
    assert "clientReturnUrl" not in asked

    done = await client.get(page_url + "/done")
    assert done.status_code == 303
    landing = done.headers["location"]
    assert "result=" not in landing  # delivered out of band
    conversation = landing.split("?", 1)[0].rsplit("/", 1)[1]
    conversations = setup.inst.services.conversations
    assert conversations is not None
    stored = await conversations.attributes(conversation, actor="test")
    assert stored is not None
    assert stored["attributes"] == {"fullname": "Demi Demo", "bsn": "999990019"}
    provenance: Any = stored["provenance"]
    assert provenance["issuer"] == "irma-demo.MijnOverheid"
    assert "irma-demo.MijnOverheid.fullName (" in provenance["credential"]
    assert provenance["method_name"] == "Yivi" and provenance["assurance"] == "substantial"
    # A second visit of the page goes on, it does not deliver again.
    again = await client.get(page_url + "/done")
    assert again.status_code == 303 and again.headers["location"] == landing


async def test_cancel_in_the_app_is_a_page_with_retry_and_another_way(setup: Setup) -> None:
    client = setup.inst.client
    page_url, url, code = await begin(setup)
    await client.post(page_url + "/pair", data={"code": code})
    cancelled = await setup.app_client.delete(url, headers={"Authorization": "app"})
    assert cancelled.status_code in (200, 204)
    failed = await client.get(page_url + "/done")
    assert failed.status_code == 200
    assert "Identificeren met Yivi is niet gelukt" in failed.text
    assert "De sessie is gestopt in de Yivi-app" in failed.text
    assert f'action="{PUBLIC}{page_url}/retry"' in failed.text
    # Try again: a new session, the same request.
    retried = await client.post(page_url + "/retry")
    assert retried.status_code == 303
    fresh = await client.get(path_of(retried.headers["location"]))
    assert fresh.status_code == 200 and pointer_of(fresh.text)["u"] != url
    assert (await client.get(page_url)).status_code == 404  # the old flow is gone
    # Another way: the comm side hears "failed", the resident goes on to it.
    given_up = await client.post(path_of(retried.headers["location"]) + "/give_up")
    assert given_up.status_code == 303
    landing = await client.get(path_of(given_up.headers["location"]))
    assert "Identificeren is geannuleerd of mislukt" in landing.text


async def test_a_wrong_pairing_code_three_times_stops_the_session(setup: Setup) -> None:
    client = setup.inst.client
    page_url, url, code = await begin(setup)
    wrong = "0000" if code != "0000" else "1111"
    for _ in range(2):
        assert (
            "Die code klopt niet"
            in (await client.post(page_url + "/pair", data={"code": wrong})).text
        )
    stopped = await client.post(page_url + "/pair", data={"code": wrong})
    assert "te vaak verkeerd" in stopped.text
    request = await setup.app_client.get(url + "/request", headers={"Authorization": "app"})
    assert request.status_code >= 400  # the app never gets the request


async def test_a_phone_call_goes_into_the_apps_return_url_and_the_browser_never_sees_the_code(
    setup: Setup,
) -> None:
    client = setup.inst.client
    page_url, url, code = await begin(
        setup, {"purpose": "report_move", "auth_method": "yivi", "comm_method": "phone"}
    )
    page = await client.get(page_url)
    assert "biedt uw telefoon aan ons te bellen" in page.text
    await client.post(page_url + "/pair", data={"code": code})
    asked = await disclose(setup, url)
    tel = asked["clientReturnUrl"]
    assert re.fullmatch(r"tel:\+31851234567,\d{10}", tel), tel
    assert asked.get("augmentReturnUrl") is not True  # false, or left out as the Go server does
    code_digits = tel.split(",", 1)[1]
    done = await client.get(page_url + "/done")
    assert done.status_code == 303
    phone_page = await client.get(path_of(done.headers["location"]))
    assert "Uw telefoon belt ons" in phone_page.text
    assert code_digits not in phone_page.text and code_digits not in done.text


async def test_bad_starts_and_unknown_flows_are_clear_errors(setup: Setup) -> None:
    client = setup.inst.client
    started = await client.post(
        "/auth/yivi/start_authentication",
        json={"attributes": ["shoe_size"], "continuation": f"{PUBLIC}/x"},
    )
    assert started.status_code == 400
    assert started.headers["content-type"] == "application/problem+json"
    unknown = await client.get("/auth/yivi/s/nonsense")
    assert unknown.status_code == 404
    assert unknown.headers["content-type"] == "application/problem+json"


async def test_an_unreachable_server_is_a_failure_page(
    make_app: AppFactory, tmp_path: Path
) -> None:
    _, key = generate_keypair("RSA", tmp_path, "server")
    plugin = {
        "attributes": MAPPING,
        "server": "http://127.0.0.1:9/",  # nothing listens on the discard port
        "token": "t" * 32,
        "result_key": {"type": "RSA", "key_file": str(key)},
    }
    settings = overrides(tmp_path)
    settings["plugins"]["auth"]["yivi"] = plugin
    inst = await make_app(demo_settings(tmp_path, **settings))
    started = await inst.client.post("/start", json=START, headers=JSON)
    assert started.status_code == 200
    page = await inst.client.get(path_of(started.json()["client_url"]))
    assert page.status_code == 200
    assert "Yivi is op dit moment niet bereikbaar" in page.text
    assert "Een andere manier kiezen" in page.text


def test_provides_must_be_mapped(tmp_path: Path) -> None:
    from idcontact.app import create_app
    from idcontact.errors import ConfigError

    settings = overrides(tmp_path)
    settings["auth_methods"] = [DEMO, {**YIVI, "provides": ["fullname", "shoe_size"]}]
    with pytest.raises(ConfigError, match="not mapped: shoe_size"):
        create_app(demo_settings(tmp_path, **settings))


async def test_a_municipality_host_name_goes_into_the_session_url(
    request: pytest.FixtureRequest, make_app: AppFactory, tmp_path: Path
) -> None:
    """Each tenant's requestor host (registered with Yivi) is what the app sees."""
    for backend in ("builtin", "go"):
        settings = overrides(tmp_path / backend, backend)
        settings["plugins"]["auth"]["yivi"]["host"] = "irma.gemeente.test"
        inst = await make_app(demo_settings(tmp_path / backend, **settings))
        started = await inst.client.post("/start", json=START, headers=JSON)
        page = await inst.client.get(path_of(started.json()["client_url"]))
        assert "Yivi is op dit moment niet bereikbaar" not in page.text, backend
        u = urlsplit(pointer_of(page.text)["u"])
        assert u.netloc == "irma.gemeente.test", backend


@pytest.mark.parametrize("method", ["hmac", "jwt"])
async def test_the_plugin_authenticates_to_the_go_server_with_a_jwt_too(
    make_app: AppFactory, tmp_path: Path, method: str
) -> None:
    """Token auth runs in every test above; here the HS256 and RS256 requestors of the Go
    server, through to the attributes (its results verified against its key)."""
    go = yivi_requestor()
    directory = Path(os.environ["IDCONTACT_TEST_YIVI_DIR"])
    settings = overrides(tmp_path, "go")
    plugin = settings["plugins"]["auth"]["yivi"]
    del plugin["token"]
    if method == "hmac":
        plugin |= {"requestor": "hs", "hmac_key": (directory / "requestor-hmac").read_text()}
    else:
        key = {"type": "RSA", "key_file": str(directory / "rs-requestor.key.pem")}
        plugin |= {"requestor": "rs", "jwt_key": key}
    inst = await make_app(demo_settings(tmp_path, **settings))
    async with httpx.AsyncClient(timeout=10) as app_client:
        setup = Setup(inst, app_client)
        page_url, url, code = await begin(setup)
        assert go.url in url
        await inst.client.post(page_url + "/pair", data={"code": code})
        await disclose(setup, url)
        done = await inst.client.get(page_url + "/done")
        assert done.status_code == 303 and "/comm/demo/" in done.headers["location"]


async def test_a_proof_that_does_not_verify_is_the_failure_page(setup: Setup) -> None:
    client = setup.inst.client
    page_url, url, code = await begin(setup)
    await client.post(page_url + "/pair", data={"code": code})
    asked = await setup.app_client.get(url + "/request", headers={"Authorization": "app"})
    proofs = wallet().disclose(DisclosureRequest.parse(asked.json()))
    proofs["proofs"][0]["c"] = base64.b64encode(b"not the challenge").decode()
    sent = await setup.app_client.post(
        url + "/proofs", json=proofs, headers={"Authorization": "app"}
    )
    assert sent.json() == {"proofStatus": "INVALID"}
    failed = await client.get(page_url + "/done")
    assert failed.status_code == 200
    assert "Identificeren met Yivi is niet gelukt" in failed.text
    assert "Uw gegevens konden niet worden gecontroleerd" in failed.text


async def test_a_session_nobody_finishes_times_out_to_the_failure_page(
    make_app: AppFactory, tmp_path: Path
) -> None:
    inst = await make_app(settings(tmp_path, "builtin"))
    setup = Setup(inst, inst.client)
    started = await inst.client.post("/start", json=START, headers=JSON)
    page_url = path_of(started.json()["client_url"])
    sessions = inst.services.irma
    assert sessions is not None
    [session] = list(sessions._by_requestor.values())
    session.created -= 1000  # as if the app never came for 1000 s
    failed = await inst.client.get(page_url + "/done")
    assert "Het duurde te lang" in failed.text
    assert setup.inst is inst


def test_each_outcome_of_a_session_has_its_page() -> None:
    from idcontact.plugins.auth.yivi import _outcome

    cases = {
        ("DONE", "VALID"): "valid",
        ("CANCELLED", None): "cancelled",
        ("TIMEOUT", None): "timeout",
        ("DONE", "MISSING_ATTRIBUTES"): "missing",
        ("DONE", "UNMATCHED_REQUEST"): "missing",
        ("DONE", "EXPIRED"): "expired",
        ("DONE", "INVALID"): "invalid",
        ("DONE", "INVALID_TIMESTAMP"): "invalid",
        ("CONNECTED", None): "invalid",
    }
    for (status, proof), outcome in cases.items():
        assert _outcome({"status": status, "proofStatus": proof}) == outcome


async def test_no_attribute_value_reaches_the_log(
    setup: Setup, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("DEBUG")
    client = setup.inst.client
    page_url, url, code = await begin(setup)
    await client.post(page_url + "/pair", data={"code": code})
    await disclose(setup, url)
    assert (await client.get(page_url + "/done")).status_code == 303
    for value in ("999990019", "Demi", "Demo"):
        assert value not in caplog.text


async def test_the_pages_speak_english_when_asked(make_app: AppFactory, tmp_path: Path) -> None:
    inst = await make_app(settings(tmp_path, "builtin"))
    started = await inst.client.post("/start", json=START, headers=JSON)
    page_url = path_of(started.json()["client_url"])
    page = await inst.client.get(page_url + "?lang=en")
    assert "Identify with Yivi" in page.text and '<html lang="en">' in page.text
    assert "<li>Citizen service number (BSN)</li>" in page.text
    await inst.client.post(page_url + "/pair", data={"code": "x"})
    await inst.client.post(page_url + "/pair", data={"code": "x"})
    stopped = await inst.client.post(page_url + "/pair", data={"code": "x"})
    assert "The code was typed wrongly too often" in stopped.text
    assert "Try again" in stopped.text and "Choose another way" in stopped.text
