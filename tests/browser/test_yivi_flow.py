"""Yivi in real browsers against a real server (issue #6): a resident picks a topic, chooses
Yivi and a channel, the demo wallet (a second tab, playing the app) shows the pairing code and
discloses, and the agent's console shows the attributes with their provenance; a disclosure
refused in the wallet ends on the failure page."""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest
from playwright.sync_api import Browser, BrowserContext, Page, expect

from tests.browser.support import Axe, LiveServer, run_server
from tests.browser.test_agent_flow import enrol_and_login, enrolment_link
from tests.browser.test_citizen_a11y import assert_accessible

WALLET_STEP_MS = 10_000  # the wallet page refreshes itself every 2 s


@pytest.fixture(scope="module")
def yivi_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    with run_server(tmp_path_factory.mktemp("yivi")) as server:
        yield server


def start_with_yivi(resident: Page, server: LiveServer) -> None:
    resident.goto(server.url("/"))
    topic = resident.locator("section[aria-labelledby=purpose-report_move]")
    topic.locator("input[name=auth_method][value=yivi]").check()
    topic.locator("button[type=submit]").click()
    expect(resident.locator("h1")).to_have_text("Identificeren met Yivi")
    expect(resident.locator(".qr svg")).to_be_visible()


def wallet_pairs(context: BrowserContext, resident: Page) -> Page:
    """Open the demo wallet from the Yivi page, as scanning would; type its code back."""
    with context.expect_page() as opened:
        resident.click("#demo-wallet")
    wallet = opened.value
    code = wallet.locator("#pairing-code")
    expect(code).to_have_text(re.compile(r"^\d{4}$"))
    resident.fill("#code", code.inner_text())
    resident.click("form[action$='/pair'] button")
    expect(wallet.get_by_text("Deze gegevens delen?")).to_be_visible(timeout=WALLET_STEP_MS)
    return wallet


def test_a_resident_identifies_with_yivi_and_the_agent_sees_where_the_data_came_from(
    browser: Browser, yivi_server: LiveServer
) -> None:
    agent_context, resident_context = browser.new_context(), browser.new_context()
    agent, resident = agent_context.new_page(), resident_context.new_page()
    try:
        enrol_and_login(agent, enrolment_link(yivi_server, "yvonne"), "yvonne")
        agent.click("text=Beschikbaar")
        expect(agent.locator("#presence")).to_have_text("beschikbaar")

        start_with_yivi(resident, yivi_server)
        wallet = wallet_pairs(resident_context, resident)
        expect(resident.locator("p.notice")).to_contain_text("Bevestig nu in uw Yivi-app")
        wallet.click("text=Demogegevens ophalen")  # the wallet is empty at first
        wallet.click("button[value=share]")
        expect(wallet.locator("h1")).to_have_text("Gedeeld")
        # The Yivi page follows the session by itself and moves on to the channel.
        expect(resident.locator("h1")).to_have_text("Verhuizing doorgeven", timeout=WALLET_STEP_MS)
        assert "/comm/demo/c/" in resident.url

        offer = agent.locator("li.offer")
        expect(offer).to_be_visible(timeout=WALLET_STEP_MS)
        offer.locator("text=Aannemen").click()
        panel = agent.locator("dl.attributes")
        expect(panel).to_contain_text("Demi de Demo")
        expect(agent.locator("dl.provenance, dl").filter(has_text="Uitgever")).to_contain_text(
            "irma-demo.gemeente"
        )
        expect(agent.get_by_text("Yivi", exact=True)).to_be_visible()  # the method
    finally:
        agent_context.close()
        resident_context.close()


def test_a_refused_disclosure_ends_on_the_failure_page(
    browser: Browser, yivi_server: LiveServer
) -> None:
    context = browser.new_context()
    resident = context.new_page()
    try:
        start_with_yivi(resident, yivi_server)
        wallet = wallet_pairs(context, resident)
        wallet.locator("form button[value=cancel]").first.click()
        expect(wallet.locator("h1")).to_have_text("Geweigerd")
        expect(resident.locator("h1")).to_have_text(
            "Identificeren met Yivi is niet gelukt", timeout=WALLET_STEP_MS
        )
        expect(resident.get_by_role("button", name="Opnieuw proberen")).to_be_visible()
        resident.get_by_role("button", name="Een andere manier kiezen").click()
        expect(resident.get_by_text("Identificeren is geannuleerd of mislukt")).to_be_visible()
    finally:
        context.close()


def test_the_yivi_pages_have_no_serious_violations(
    axe_context: BrowserContext, axe: Axe, yivi_server: LiveServer
) -> None:
    page = axe_context.new_page()
    start_with_yivi(page, yivi_server)
    assert_accessible(axe, page)
    wallet = wallet_pairs(axe_context, page)
    assert_accessible(axe, wallet)
    wallet.locator("form button[value=cancel]").first.click()
    expect(page.locator("h1")).to_have_text(
        "Identificeren met Yivi is niet gelukt", timeout=WALLET_STEP_MS
    )
    assert_accessible(axe, page)
