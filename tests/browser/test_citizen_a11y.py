"""Every resident page of the demo, in a real browser: axe-core finds nothing serious, and the
topic form works without JavaScript.

The flow pages are reached the way a resident reaches them: by clicking through the topic
form, the demo consent page and the demo channel, never by building URLs.
"""

from __future__ import annotations

import re
from collections.abc import Callable

import pytest
from playwright.sync_api import Browser, Locator, Page, expect

from tests.browser.support import PAGE_TIMEOUT_MS, Axe, LiveServer, describe

BLOCKING = ("serious", "critical")
AUTH_CONFIRM = re.compile(r"/auth/demo/confirm/[^/?#]+$")
COMM_LANDING = re.compile(r"/comm/demo/c/[^/?#]+$")


def assert_accessible(axe: Axe, page: Page) -> None:
    result = axe(page)
    assert result.passes, f"axe ran no rule on {page.url}"
    blocking = [v for v in result.violations if v.get("impact") in BLOCKING]
    assert not blocking, f"axe: serious or critical violations on {page.url}:\n" + describe(
        blocking
    )


# -- pages reached by address -----------------------------------------------------------------

PAGES = [
    ("/", "nl", "Contact met de gemeente"),
    ("/?lang=en", "en", "Contact the municipality"),
    ("/privacy", "nl", "Hoe wij met uw gegevens omgaan"),
    ("/privacy?lang=en", "en", "How we handle your data"),
    ("/accessibility", "nl", "Toegankelijkheidsverklaring"),
    ("/accessibility?lang=en", "en", "Accessibility statement"),
    ("/comm/phone/demo-acd", "nl", "Toets de code in, zoals de beller dat doet"),
]


@pytest.mark.parametrize(("path", "lang", "heading"), PAGES, ids=[p[0] for p in PAGES])
def test_page_has_no_serious_violations(
    axe_page: Page, axe: Axe, live_server: LiveServer, path: str, lang: str, heading: str
) -> None:
    response = axe_page.goto(live_server.url(path))
    assert response is not None
    assert response.status == 200
    expect(axe_page.get_by_role("heading", level=1)).to_have_text(heading)
    assert_accessible(axe, axe_page)
    # axe checks that a language is declared; that it is the right one is ours to check.
    expect(axe_page.locator("html")).to_have_attribute("lang", lang)


# -- pages reached through the demo flow ------------------------------------------------------


def topic(page: Page, index: int) -> Locator:
    """The topic card at ``index`` (0: the first purpose of the demo configuration)."""
    cards = page.locator("main section.card")
    expect(cards.nth(index)).to_be_visible()
    return cards.nth(index)


def to_auth_confirm(page: Page, server: LiveServer) -> None:
    """The landing page, then "Verder" on the first topic (demo auth and channel preselected)."""
    page.goto(server.url("/"))
    card = topic(page, 0)
    expect(card.get_by_role("heading", level=2)).to_have_text("Verhuizing doorgeven")
    card.get_by_role("button", name="Verder").click()
    page.wait_for_url(AUTH_CONFIRM)
    expect(page.get_by_role("heading", level=1)).to_have_text("Deze gegevens worden gedeeld")


def to_comm_waiting(page: Page, server: LiveServer) -> None:
    """Shared: the waiting room gives the place in line and names the data, never its values."""
    to_auth_confirm(page, server)
    page.get_by_role("button", name="Delen").click()
    page.wait_for_url(COMM_LANDING)
    expect(page.get_by_role("status")).to_contain_text(re.compile(r"U bent nummer \d+ in de rij"))
    expect(page.locator("ul.labels")).to_contain_text("Burgerservicenummer (BSN)")
    expect(page.locator("main")).not_to_contain_text("Demi de Demo")


def to_comm_ended(page: Page, server: LiveServer) -> None:
    to_comm_waiting(page, server)
    page.get_by_role("button", name="Gesprek beëindigen").click()
    expect(page.get_by_role("status")).to_have_text(
        "Dit gesprek is beëindigd; uw gegevens zijn gewist."
    )
    assert COMM_LANDING.search(page.url)


def to_comm_failed(page: Page, server: LiveServer) -> None:
    to_auth_confirm(page, server)
    page.get_by_role("button", name="Annuleren").click()
    page.wait_for_url(COMM_LANDING)
    expect(page.get_by_role("alert")).to_contain_text("Identificeren is geannuleerd of mislukt.")


def to_comm_unidentified(page: Page, server: LiveServer) -> None:
    page.goto(server.url("/"))
    card = topic(page, 1)
    expect(card.get_by_role("heading", level=2)).to_have_text("Vraag over afvalinzameling")
    card.get_by_role("radio", name=re.compile("^Zonder identificeren")).check()
    card.get_by_role("button", name="Verder").click()
    page.wait_for_url(COMM_LANDING)
    expect(page.locator("main")).to_contain_text("zonder u te identificeren")


def to_tel_page(page: Page, server: LiveServer) -> None:
    """ID Bellen: after sharing, the number and the code to call, in this browser only."""
    page.goto(server.url("/"))
    card = topic(page, 0)
    card.get_by_role("radio", name="Bellen (ID Bellen)").check()
    card.get_by_role("button", name="Verder").click()
    page.wait_for_url(AUTH_CONFIRM)
    page.get_by_role("button", name="Delen").click()
    page.wait_for_url(re.compile(r"/tel/[^/?#]+$"))
    expect(page.get_by_role("heading", level=1)).to_have_text("U kunt nu bellen")
    expect(page.locator("p.big.code")).to_have_text(re.compile(r"^[0-9]{3} [0-9]{3} [0-9]{4}$"))
    expect(page.get_by_role("link", name=re.compile("Nu bellen"))).to_have_attribute(
        "href", re.compile(r"^tel:\+31851234567,[0-9]{10}$")
    )
    expect(page.locator("div.qr svg")).to_be_visible()


FLOWS: dict[str, Callable[[Page, LiveServer], None]] = {
    "auth-confirm": to_auth_confirm,
    "comm-waiting": to_comm_waiting,
    "comm-ended": to_comm_ended,
    "comm-failed": to_comm_failed,
    "comm-unidentified": to_comm_unidentified,
    "tel-page": to_tel_page,
}


@pytest.mark.parametrize("walk", FLOWS.values(), ids=FLOWS.keys())
def test_flow_page_has_no_serious_violations(
    axe_page: Page, axe: Axe, live_server: LiveServer, walk: Callable[[Page, LiveServer], None]
) -> None:
    walk(axe_page, live_server)
    assert_accessible(axe, axe_page)


# -- the checks themselves ---------------------------------------------------------------------


def test_axe_reports_a_known_violation(axe_page: Page, axe: Axe) -> None:
    """The scan is not vacuous: an image without a text alternative is a critical violation."""
    axe_page.set_content(
        '<!doctype html><html lang="en"><head><title>t</title></head>'
        '<body><main><img src="data:," id="no-alt"></main></body></html>'
    )
    result = axe(axe_page)
    found = {v["id"]: v for v in result.violations}
    assert "image-alt" in found
    assert found["image-alt"]["impact"] == "critical"
    assert "#no-alt" in describe([found["image-alt"]])


def test_topic_form_works_without_javascript(browser: Browser, live_server: LiveServer) -> None:
    ctx = browser.new_context(java_script_enabled=False)
    ctx.set_default_timeout(PAGE_TIMEOUT_MS)
    try:
        page = ctx.new_page()
        # The context really runs no page script (else this test would prove nothing).
        page.set_content('<p id="probe">off</p><script>probe.textContent = "on"</script>')
        expect(page.locator("#probe")).to_have_text("off")
        page.goto(live_server.url("/"))
        card = topic(page, 0)
        card.get_by_role("radio", name="Demo-identificatie").check()
        card.get_by_role("radio", name="Demokanaal").check()
        card.get_by_role("button", name="Verder").click()
        page.wait_for_url(AUTH_CONFIRM)
        expect(page.get_by_role("heading", level=1)).to_have_text("Deze gegevens worden gedeeld")
        expect(page.locator("dl.attributes")).to_contain_text("Burgerservicenummer (BSN)")
    finally:
        ctx.close()
