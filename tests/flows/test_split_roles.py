"""Full flows over real HTTP with core, auth and comm each in their own ``idcontact serve``.

The three processes share one TOML file and one data directory. The core reaches the plugins
at their ``start`` URLs; the auth process delivers the attribute token server-side to the comm
process's ``attr_url`` (built from its ``IDCONTACT_INTERNAL_URL``) and sends the browser on to
the comm landing page, the waiting room. The canary attribute values show up on the consent
page only: the waiting room names the data the agent will see, never the values, and no
process logs them.
"""

from __future__ import annotations

import html
import re
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest

from idcontact.keyring import load_keyring
from idcontact.settings import load_settings
from idcontact.tokens import AuthResult, TokenIssuer
from tests.flows._servers import (
    CANARY_BSN,
    CANARY_NAME,
    PURPOSE,
    SplitRoles,
    start_split_roles,
)

START_BODY = {"purpose": PURPOSE, "auth_method": "demo", "comm_method": "demo"}
JSON = {"Accept": "application/json"}
PROBLEM_JSON = "application/problem+json"

WAITING_TEXT = "U bent nummer"
LABELS = ("<li>Naam</li>", "<li>Burgerservicenummer (BSN)</li>")
FAILED_TEXT = "Identificeren is geannuleerd of mislukt."
ENDED_TEXT = "Dit gesprek is beëindigd; uw gegevens zijn gewist."

# A compact JWE: five base64url parts separated by dots (the second may be empty, with ECDH-ES).
JWE_PATTERN = re.compile(
    r"[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]*\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+"
)
FORM_ACTION = re.compile(r'<form method="post" action="([^"]+)"')


@pytest.fixture(scope="module")
def roles(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SplitRoles]:
    started = start_split_roles(tmp_path_factory.mktemp("split_roles"))
    try:
        yield started
    finally:
        started.stop()


@pytest.fixture
def client() -> Iterator[httpx.Client]:
    # A browser-like client that we drive by hand: every redirect is checked, not followed.
    with httpx.Client(follow_redirects=False, trust_env=False, timeout=10.0) as c:
        yield c


@dataclass
class Landing:
    url: str
    page: str


def _form_action(page: str) -> str:
    match = FORM_ACTION.search(page)
    assert match is not None, "expected a POST form on the page"
    return html.unescape(match.group(1))


def _start_json(client: httpx.Client, roles: SplitRoles) -> str:
    response = client.post(f"{roles.core.url}/start", json=START_BODY, headers=JSON)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("application/json")
    client_url = response.json()["client_url"]
    assert isinstance(client_url, str)
    return client_url


def _confirm_and_decide(
    client: httpx.Client, roles: SplitRoles, client_url: str, action: str
) -> Landing:
    """On the auth process: see the consent page, decide, land on the comm process."""
    assert client_url.startswith(f"{roles.auth.url}/auth/demo/confirm/"), client_url
    confirm = client.get(client_url)
    assert confirm.status_code == 200, confirm.text
    assert confirm.headers["content-type"].startswith("text/html")
    assert CANARY_NAME in confirm.text
    assert CANARY_BSN in confirm.text
    assert _form_action(confirm.text) == client_url

    decided = client.post(client_url, data={"action": action})
    assert decided.status_code == 303, decided.text
    landing_url = decided.headers["location"]
    # Out-of-band delivery (attr_url): the browser never carries the token.
    assert landing_url.startswith(f"{roles.comm.url}/comm/demo/c/"), landing_url
    assert "result=" not in landing_url

    landing = client.get(landing_url)
    assert landing.status_code == 200, landing.text
    assert landing.headers["content-type"].startswith("text/html")
    return Landing(url=landing_url, page=landing.text)


def _mint_token(roles: SplitRoles) -> str:
    """An attribute token as the demo auth role would make it, from the shared demo keys."""
    settings = load_settings(roles.config, {"data_dir": roles.data_dir})
    keys = load_keyring(settings)
    issuer = TokenIssuer(keys.signing, kid=keys.signing_kid)
    result = AuthResult(status="success", attributes={"fullname": CANARY_NAME, "bsn": CANARY_BSN})
    return issuer.issue(result, keys.encryption_public)


def _assert_waiting(page: str) -> None:
    """Delivered: the resident is in line; the data is named, its values are not shown."""
    assert WAITING_TEXT in page
    assert all(label in page for label in LABELS)
    assert CANARY_NAME not in page
    assert CANARY_BSN not in page


def _share_flow(client: httpx.Client, roles: SplitRoles) -> Landing:
    landing = _confirm_and_decide(client, roles, _start_json(client, roles), "share")
    _assert_waiting(landing.page)
    return landing


def test_processes_serve_only_their_role(roles: SplitRoles, client: httpx.Client) -> None:
    for server in roles.servers:
        assert client.get(f"{server.url}/healthz").status_code == 200
    assert client.get(f"{roles.core.url}/session_options/{PURPOSE}").status_code == 200
    # No role serves another role's routes.
    assert (
        client.post(f"{roles.core.url}/auth/demo/start_authentication", json={}).status_code == 404
    )
    assert (
        client.post(f"{roles.core.url}/comm/demo/start_communication", json={}).status_code == 404
    )
    assert client.post(f"{roles.auth.url}/start", json=START_BODY).status_code == 404
    assert client.post(f"{roles.comm.url}/start", json=START_BODY).status_code == 404
    assert client.get(f"{roles.auth.url}/comm/demo/c/x").status_code == 404


def test_session_options(roles: SplitRoles, client: httpx.Client) -> None:
    response = client.get(f"{roles.core.url}/session_options/{PURPOSE}")
    assert response.status_code == 200
    options = response.json()
    assert [m["tag"] for m in options["auth_methods"]] == ["demo"]
    assert [m["tag"] for m in options["comm_methods"]] == ["demo"]


def test_share_flow_json(roles: SplitRoles, client: httpx.Client) -> None:
    _share_flow(client, roles)


def test_cancel_flow_shows_failed(roles: SplitRoles, client: httpx.Client) -> None:
    landing = _confirm_and_decide(client, roles, _start_json(client, roles), "cancel")
    assert FAILED_TEXT in landing.page
    assert CANARY_NAME not in landing.page
    assert CANARY_BSN not in landing.page
    assert WAITING_TEXT not in landing.page


@pytest.mark.parametrize("encoding", ["json", "form"])
def test_share_flow_303_without_accept_json(
    roles: SplitRoles, client: httpx.Client, encoding: str
) -> None:
    if encoding == "json":
        response = client.post(f"{roles.core.url}/start", json=START_BODY)
    else:
        response = client.post(f"{roles.core.url}/start", data=START_BODY)
    assert response.status_code == 303, response.text
    client_url = response.headers["location"]
    landing = _confirm_and_decide(client, roles, client_url, "share")
    _assert_waiting(landing.page)


def test_end_conversation_deletes_data(roles: SplitRoles, client: httpx.Client) -> None:
    landing = _share_flow(client, roles)
    end_url = next(
        html.unescape(a) for a in FORM_ACTION.findall(landing.page) if a.endswith("/end")
    )
    assert end_url == f"{landing.url}/end"

    ended = client.post(end_url)
    assert ended.status_code == 303, ended.text
    assert ended.headers["location"] == landing.url

    after = client.get(landing.url)
    assert after.status_code == 200, after.text
    assert ENDED_TEXT in after.text
    assert CANARY_NAME not in after.text
    assert CANARY_BSN not in after.text
    assert "<form" not in after.text

    # Ending twice is refused (the lifecycle allows it once), and still shows nothing.
    again = client.post(end_url)
    assert again.status_code == 409
    assert again.headers["content-type"].startswith(PROBLEM_JSON)
    assert CANARY_NAME not in again.text


@pytest.mark.parametrize(
    "body",
    [
        {"purpose": "no_such_purpose", "auth_method": "demo", "comm_method": "demo"},
        {"purpose": "no_such_purpose", "auth_result": "a.b.c.d.e", "comm_method": "demo"},
    ],
    ids=["full", "comm_only"],
)
def test_core_refuses_unknown_purpose(
    roles: SplitRoles, client: httpx.Client, body: dict[str, str]
) -> None:
    response = client.post(f"{roles.core.url}/start", json=body, headers=JSON)
    assert response.status_code == 400
    assert response.headers["content-type"].startswith(PROBLEM_JSON)
    problem = response.json()
    assert problem["status"] == 400
    assert problem["type"].endswith("/unknown-purpose")

    options = client.get(f"{roles.core.url}/session_options/no_such_purpose")
    assert options.status_code == 400
    assert options.headers["content-type"].startswith(PROBLEM_JSON)


def test_comm_only_flow_with_auth_result(roles: SplitRoles, client: httpx.Client) -> None:
    """Comm-only start (§4.2): the attributes arrive with the start request itself."""
    body = {"purpose": PURPOSE, "auth_result": _mint_token(roles), "comm_method": "demo"}
    response = client.post(f"{roles.core.url}/start", json=body, headers=JSON)
    assert response.status_code == 200, response.text
    client_url = response.json()["client_url"]
    assert client_url.startswith(f"{roles.comm.url}/comm/demo/c/"), client_url
    assert "result=" not in client_url
    landing = client.get(client_url)
    assert landing.status_code == 200, landing.text
    _assert_waiting(landing.text)


@pytest.mark.parametrize("token", ["replayed", "garbage"])
def test_comm_only_start_with_a_bad_auth_result_is_a_client_error(
    roles: SplitRoles, client: httpx.Client, token: str
) -> None:
    """A token the comm role refuses is the caller's fault: 4xx, not a 5xx plugin error."""
    if token == "replayed":
        auth_result = _mint_token(roles)
        body = {"purpose": PURPOSE, "auth_result": auth_result, "comm_method": "demo"}
        first = client.post(f"{roles.core.url}/start", json=body, headers=JSON)
        assert first.status_code == 200, first.text
    else:
        auth_result = "not-a-token"
    body = {"purpose": PURPOSE, "auth_result": auth_result, "comm_method": "demo"}
    # The comm role itself refuses it as a bad request...
    direct = client.post(
        f"{roles.comm.url}/comm/demo/start_communication",
        json={"purpose": PURPOSE, "auth_result": auth_result},
    )
    assert direct.status_code == 400, direct.text
    # ...and so must the core that forwarded it.
    response = client.post(f"{roles.core.url}/start", json=body, headers=JSON)
    assert response.headers["content-type"].startswith(PROBLEM_JSON)
    assert 400 <= response.status_code < 500, response.text


def test_jwe_pattern_matches_a_real_attribute_token(roles: SplitRoles) -> None:
    """The log check below looks for this pattern; make sure it finds a real token."""
    token = _mint_token(roles)
    match = JWE_PATTERN.search(f'{{"msg": "x", "value": "{token}"}}')
    assert match is not None and match.group(0) == token


def test_logs_hold_no_attributes_tokens_or_secret(roles: SplitRoles, client: httpx.Client) -> None:
    """Runs last: by now every flow above has gone through all three processes."""
    # One more of each flow, so this test means something when it runs on its own too.
    _share_flow(client, roles)
    _confirm_and_decide(client, roles, _start_json(client, roles), "cancel")

    secret = roles.internal_secret()
    assert len(secret) >= 32
    for server in roles.servers:
        text = server.log_text()
        # The log is really captured: each process logged the requests it served.
        assert '"logger": "idcontact.access"' in text, f"{server.name}: no access log captured"
        assert CANARY_NAME not in text, f"{server.name} logged an attribute value"
        assert CANARY_BSN not in text, f"{server.name} logged an attribute value"
        assert secret not in text, f"{server.name} logged the internal secret"
        assert "result=" not in text, f"{server.name} logged a result= URL"
        jwe = JWE_PATTERN.search(text)
        assert jwe is None, f"{server.name} logged a token-like value at offset {jwe.start()}"
