"""The attribute panel in another site's agent desktop, in a real browser.

The "desk" is a page on ``http://localhost:<port>``, another site than the server's
``127.0.0.1``, as a municipality's KISS is. Chromium blocks third-party cookies there: a
control frame shows that an ordinary ``SameSite=None`` cookie does not survive, while the
panel logs in through its pop-up and keeps its partitioned cookie, then follows the agent's
conversation live. A desk whose origin the tenant did not list cannot frame the panel at all.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
from playwright.sync_api import Browser, Page, expect
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import Route

from tests.browser.support import Axe, LiveServer, run_server
from tests.browser.test_agent_flow import CANARY_BSN, CANARY_NAME, enrol_and_login, enrolment_link
from tests.browser.test_citizen_a11y import assert_accessible
from tests.live import serve


class Desk:
    """A third-party agent desktop: a page with our panel in an iframe, and a control frame
    that tries an ordinary (unpartitioned) third-party cookie."""

    def __init__(self) -> None:
        self.panel_url = ""
        self.port = 0

    def app(self) -> Starlette:
        async def desk(request: Request) -> HTMLResponse:
            probe = f"http://127.0.0.1:{self.port}/probe/set"
            return HTMLResponse(
                "<!doctype html><title>Desk</title><h1>Desk</h1>"
                f'<iframe id="panel" title="ID Contact" src="{self.panel_url}"'
                ' width="500" height="600"></iframe>'
                f'<iframe id="probe" title="probe" src="{probe}"></iframe>'
            )

        async def probe_set(request: Request) -> Response:
            response = RedirectResponse("/probe/check", status_code=303)
            response.headers["Set-Cookie"] = "plain=1; Path=/; Secure; SameSite=None"
            return response

        async def probe_check(request: Request) -> HTMLResponse:
            return HTMLResponse(f"<p id='seen'>{request.headers.get('cookie', 'none')}</p>")

        return Starlette(
            routes=[
                Route("/desk", desk),
                Route("/probe/set", probe_set),
                Route("/probe/check", probe_check),
            ]
        )


@pytest.fixture(scope="module")
def desk() -> Iterator[Desk]:
    d = Desk()
    with serve(lambda base: d.app()) as base:
        d.port = int(base.rsplit(":", 1)[1])
        yield d


@pytest.fixture(scope="module")
def embed_server(tmp_path_factory: pytest.TempPathFactory, desk: Desk) -> Iterator[LiveServer]:
    plugins = {"auth": {"demo": {"attributes": {"fullname": CANARY_NAME, "bsn": CANARY_BSN}}}}
    env = {
        "IDCONTACT_PLUGINS": json.dumps(plugins),
        "IDCONTACT_EMBED_ORIGINS": json.dumps([f"http://localhost:{desk.port}"]),
    }
    with run_server(tmp_path_factory.mktemp("embed"), env=env) as server:
        desk.panel_url = server.url("/agent/embed/default/")
        yield server


def test_panel_in_a_third_party_desk_logs_in_by_pop_up_and_follows_the_agent(
    browser: Browser, embed_server: LiveServer, desk: Desk
) -> None:
    agent_context = browser.new_context()
    resident_context = browser.new_context()
    try:
        console = agent_context.new_page()
        enrol_and_login(console, enrolment_link(embed_server))
        console.click("text=Beschikbaar")
        expect(console.locator("#presence")).to_have_text("beschikbaar")

        page = agent_context.new_page()
        page.goto(f"http://localhost:{desk.port}/desk")
        # Control: this browser keeps ordinary third-party cookies out of frames.
        expect(page.frame_locator("#probe").locator("#seen")).to_have_text("none")
        panel = page.frame_locator("#panel")
        # The console's own (SameSite=Strict) session does not reach the frame either.
        login = panel.locator("#embed-login")
        expect(login).to_be_visible()

        with agent_context.expect_page() as popup_info:
            login.click()
        popup = popup_info.value
        popup.wait_for_event("close")  # logged in already: it hands the code over and closes
        expect(panel.locator("h1")).to_have_text("Geen gesprek")
        embed_cookie = next(c for c in agent_context.cookies() if c["name"] == "idc_embed")
        assert embed_cookie.get("partitionKey") == "http://localhost"
        assert embed_cookie["sameSite"] == "None" and embed_cookie["httpOnly"]
        assert embed_cookie["path"] == "/agent/embed"

        resident = resident_context.new_page()
        resident.goto(embed_server.url("/"))
        resident.locator("section[aria-labelledby=purpose-report_move] button").click()
        resident.click("button[value=share]")
        offer = console.locator("li.offer")
        expect(offer).to_be_visible()
        offer.locator("text=Aannemen").click()

        # The panel in the desk follows without a reload by the agent.
        expect(panel.locator("dl.attributes")).to_contain_text(CANARY_NAME)
        expect(panel.locator("dl.attributes")).not_to_contain_text(CANARY_BSN)  # masked
        panel.locator("text=Toon Burgerservicenummer (BSN)").click()
        expect(panel.locator("dl.attributes")).to_contain_text(CANARY_BSN)

        console.click("text=Gesprek beëindigen en gegevens nu wissen")
        expect(panel.locator("h1")).to_have_text("Geen gesprek")
        expect(panel.locator("body")).not_to_contain_text(CANARY_NAME)
    finally:
        agent_context.close()
        resident_context.close()
    log = embed_server.log_text()
    assert CANARY_NAME not in log and CANARY_BSN not in log


def test_a_desk_the_tenant_did_not_list_cannot_frame_the_panel(
    browser: Browser, embed_server: LiveServer, desk: Desk
) -> None:
    context = browser.new_context()
    try:
        page = context.new_page()
        refused: list[str] = []
        page.on(
            "console", lambda m: refused.append(m.text) if "frame-ancestors" in m.text else None
        )
        # The same desk on another origin (127.0.0.1 instead of the listed localhost).
        page.goto(f"http://127.0.0.1:{desk.port}/desk", wait_until="load")
        panel = next(f for f in page.frames if f.name == "panel")
        assert panel.url.startswith("chrome-error:")  # blocked: the browser's error page
        assert any(f"frame-ancestors 'self' http://localhost:{desk.port}" in m for m in refused)
        # The same page is fine on the listed origin.
        page.goto(f"http://localhost:{desk.port}/desk", wait_until="load")
        expect(page.frame_locator("#panel").locator("#embed-login")).to_be_visible()
    finally:
        context.close()


def test_the_embedded_pages_are_accessible(
    axe_page: Page, axe: Axe, embed_server: LiveServer
) -> None:
    axe_page.goto(embed_server.url("/agent/embed/default/"))
    expect(axe_page.locator("#embed-login")).to_be_visible()
    assert_accessible(axe, axe_page)
    enrol_and_login(axe_page, enrolment_link(embed_server, "axel"), "axel")
    axe_page.goto(embed_server.url("/agent/embed/default/"))
    expect(axe_page.locator("h1")).to_have_text("Geen gesprek")
    assert_accessible(axe, axe_page)
