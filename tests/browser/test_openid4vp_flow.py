"""OpenID4VP in real browsers against a real server (issue #10): a resident picks a topic and
the EU-wallet method, the demo wallet (a second tab, playing a wallet app over the real
protocol) shows who asks and what and presents, the wallet page moves on by itself, and the
agent sees the attributes with their provenance; a refusal ends on the failure page."""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest
from playwright.sync_api import Browser, BrowserContext, Page, expect

from tests.browser.support import Axe, LiveServer, run_server
from tests.browser.test_agent_flow import enrol_and_login, enrolment_link
from tests.browser.test_citizen_a11y import assert_accessible

STEP_MS = 10_000  # the wallet page polls every 1.5 s


@pytest.fixture(scope="module")
def wallet_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    with run_server(tmp_path_factory.mktemp("openid4vp")) as server:
        yield server


def start_with_wallet(resident: Page, server: LiveServer) -> None:
    resident.goto(server.url("/"))
    topic = resident.locator("section[aria-labelledby=purpose-report_move]")
    topic.locator("input[name=auth_method][value=wallet]").check()
    topic.locator("button[type=submit]").click()
    expect(resident.locator("h1")).to_have_text("Identificeren met uw wallet")
    expect(resident.locator(".qr svg")).to_be_visible()
    expect(resident.locator("#open-wallet")).to_have_attribute(
        "href", re.compile(r"^openid4vp://\?client_id=decentralized_identifier%3Adid%3Ajwk%3A")
    )


def open_demo_wallet(context: BrowserContext, resident: Page) -> Page:
    with context.expect_page() as opened:
        resident.click("#demo-wallet")
    wallet = opened.value
    expect(wallet.locator("h1")).to_have_text("Deze gegevens delen?")
    expect(wallet.get_by_text("niet geverifieerd")).to_be_visible()
    return wallet


def test_a_resident_presents_from_the_demo_wallet_and_the_agent_sees_the_data(
    browser: Browser, wallet_server: LiveServer
) -> None:
    agent_context, resident_context = browser.new_context(), browser.new_context()
    agent, resident = agent_context.new_page(), resident_context.new_page()
    try:
        enrol_and_login(agent, enrolment_link(wallet_server, "wanda"), "wanda")
        agent.click("text=Beschikbaar")
        expect(agent.locator("#presence")).to_have_text("beschikbaar")

        start_with_wallet(resident, wallet_server)
        wallet = open_demo_wallet(resident_context, resident)
        wallet.select_option("#resident", "demi")
        wallet.click("button[value=share]")
        expect(wallet.locator("h1")).to_have_text("Gedeeld")
        expect(resident.locator("h1")).to_have_text("Verhuizing doorgeven", timeout=STEP_MS)
        assert "/comm/demo/c/" in resident.url

        offer = agent.locator("li.offer")
        expect(offer).to_be_visible(timeout=STEP_MS)
        offer.locator("text=Aannemen").click()
        expect(agent.locator("dl.attributes")).to_contain_text("Demi de Demo")
        expect(agent.locator("dl.provenance, dl").filter(has_text="Uitgever")).to_contain_text(
            "did:jwk:"
        )
    finally:
        agent_context.close()
        resident_context.close()


def test_a_refusal_in_the_wallet_ends_on_the_failure_page(
    browser: Browser, wallet_server: LiveServer
) -> None:
    context = browser.new_context()
    resident = context.new_page()
    try:
        start_with_wallet(resident, wallet_server)
        wallet = open_demo_wallet(context, resident)
        wallet.click("button[value=cancel]")
        expect(wallet.locator("h1")).to_have_text("Geweigerd")
        expect(resident.locator("h1")).to_have_text(
            "Identificeren met uw wallet is niet gelukt", timeout=STEP_MS
        )
        resident.get_by_role("button", name="Een andere manier kiezen").click()
        expect(resident.get_by_text("Identificeren is geannuleerd of mislukt")).to_be_visible()
    finally:
        context.close()


def test_the_wallet_pages_have_no_serious_violations(
    axe_context: BrowserContext, axe: Axe, wallet_server: LiveServer
) -> None:
    page = axe_context.new_page()
    start_with_wallet(page, wallet_server)
    assert_accessible(axe, page)
    wallet = open_demo_wallet(axe_context, page)
    assert_accessible(axe, wallet)
    wallet.click("button[value=cancel]")
    expect(page.locator("h1")).to_have_text(
        "Identificeren met uw wallet is niet gelukt", timeout=STEP_MS
    )
    assert_accessible(axe, page)
