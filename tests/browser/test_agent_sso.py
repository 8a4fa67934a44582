"""Agent SSO in a real browser against a real server and a real OpenID Connect provider.

The browser follows the redirects to the provider (tests/oidc_provider.py, on 127.0.0.1) and
back, so this proves what an in-process client cannot: that the state cookie survives the
cross-site return (``SameSite=Lax``) and that the ``SameSite=Strict`` session cookie is sent
on the way into the console after it. Also in a pop-up window opened by a console page.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
from playwright.sync_api import BrowserContext, Page, expect

from tests.browser.support import Axe, LiveServer, run_server
from tests.browser.test_citizen_a11y import assert_accessible
from tests.live import serve
from tests.oidc_provider import CLIENT_ID, CLIENT_SECRET, Provider

NAME = "Sanne Browser-SSO"


@pytest.fixture(scope="module")
def provider() -> Iterator[Provider]:
    p = Provider(interactive=True)
    p.user = {"sub": "browser-user", "name": NAME, "groups": ["idc-supervisors"]}
    # Another site than the server's 127.0.0.1, as a real provider is.
    with serve(lambda base: p.app(base.replace("127.0.0.1", "localhost"))):
        yield p


@pytest.fixture(scope="module")
def sso_server(
    tmp_path_factory: pytest.TempPathFactory, provider: Provider
) -> Iterator[LiveServer]:
    sso = {
        "issuer": provider.issuer,
        "client_id": CLIENT_ID,
        "client_secret": CLIENT_SECRET,
        "label": "Gemeente-account",
        "allow_http": True,
        "groups": [{"group": "idc-supervisors", "role": "supervisor"}],
    }
    with run_server(
        tmp_path_factory.mktemp("sso"), env={"IDCONTACT_AGENT_SSO": json.dumps(sso)}
    ) as server:
        provider.redirect_uris.add(server.url("/agent/sso/default/callback"))
        yield server


def test_login_through_the_provider_opens_the_console(
    axe_page: Page, axe: Axe, sso_server: LiveServer, provider: Provider
) -> None:
    page = axe_page
    page.goto(sso_server.url("/agent/login"))
    assert_accessible(axe, page)
    page.get_by_role("link", name="Inloggen met Gemeente-account").click()
    page.get_by_role("button", name="Approve").click()  # at the provider
    expect(page.locator("h1")).to_have_text("Console")
    assert page.url == sso_server.url("/agent/default/")
    page.click("text=Statistieken")  # a supervisor, from the provider's group
    expect(page.locator("h1")).to_have_text("Wachtrijen")
    cookies = {c["name"]: c for c in page.context.cookies()}
    assert cookies["idc_agent"]["httpOnly"] and cookies["idc_agent"]["sameSite"] == "Strict"
    assert "idc_sso" not in cookies  # spent
    log = sso_server.log_text()
    assert CLIENT_SECRET not in log and NAME not in log


def test_refusal_is_a_page_with_the_reason(
    context: BrowserContext, sso_server: LiveServer, provider: Provider
) -> None:
    provider.deny = "access_denied"
    try:
        page = context.new_page()
        page.goto(sso_server.url("/agent/login"))
        page.get_by_role("link", name="Inloggen met Gemeente-account").click()
        page.get_by_role("button", name="Approve").click()
        expect(page.get_by_role("alert")).to_contain_text("did not let you in")
        assert not any(c["name"] == "idc_agent" for c in context.cookies())
    finally:
        provider.deny = None


def test_login_in_a_popup_closes_it_and_tells_the_console(
    context: BrowserContext, sso_server: LiveServer
) -> None:
    opener = context.new_page()
    opener.goto(sso_server.url("/agent/login"))
    # Listen as an embedding console would (the test adds the listener, the CSP is in force).
    opener.evaluate(
        "window.__logins = 0; window.addEventListener('message', e => {"
        " if (e.origin === location.origin && e.data && e.data.type === 'idcontact-agent-login')"
        " window.__logins += 1; });"
    )
    with context.expect_page() as popup_info:
        opener.evaluate("window.open('/agent/sso/default?popup=1', 'sso', 'popup')")
    popup = popup_info.value
    popup.get_by_role("button", name="Approve").click()
    popup.wait_for_event("close")
    opener.wait_for_function("window.__logins === 1")
    opener.goto(sso_server.url("/agent/"))
    expect(opener.locator("h1")).to_have_text("Console")
