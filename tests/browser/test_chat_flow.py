"""Chat in real browsers (CSP enforced): the resident writes while waiting, the agent accepts and
answers live, typing shows, and a reload loses nothing."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from playwright.sync_api import Browser, Page, expect

from tests.browser.support import LiveServer, run_server
from tests.browser.test_agent_flow import enrol_and_login, enrolment_link

LIVE_MS = 5000


@pytest.fixture(scope="module")
def chat_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    with run_server(tmp_path_factory.mktemp("chat")) as server:
        yield server


def test_resident_and_agent_chat_live(browser: Browser, chat_server: LiveServer) -> None:
    agent_context, resident_context = browser.new_context(), browser.new_context()
    agent, resident = agent_context.new_page(), resident_context.new_page()
    try:
        resident.goto(chat_server.url("/"))
        topic = resident.locator("section[aria-labelledby=purpose-report_move]")
        topic.locator("input[name=comm_method][value=chat]").check()
        topic.locator("button[type=submit]").click()
        resident.click("button[value=share]")  # the demo identification
        chat = resident.locator("#chat")
        expect(chat).to_have_attribute("data-connected", "true", timeout=LIVE_MS)
        resident.fill("#chat-text", "Ik wil mijn verhuizing doorgeven.")
        resident.click("#chat-form button")
        expect(resident.locator("#chat-log li")).to_have_count(1, timeout=LIVE_MS)

        enrol_and_login(agent, enrolment_link(chat_server, "carla"), "carla")
        agent.click("text=Beschikbaar")
        offer = agent.locator("li.offer")
        expect(offer).to_be_visible(timeout=LIVE_MS)
        offer.locator("text=Aannemen").click()
        agent_log = agent.locator("#chat-log")
        expect(agent_log).to_contain_text("Ik wil mijn verhuizing doorgeven.")  # sent while waiting
        expect(agent.locator("#chat")).to_have_attribute("data-connected", "true", timeout=LIVE_MS)

        agent.locator("#chat-text").press_sequentially("Goed", delay=20)
        expect(resident.locator("#chat-typing")).to_have_text(
            "De medewerker typt…", timeout=LIVE_MS
        )
        agent.fill("#chat-text", "Goedemiddag! Wat is uw nieuwe adres?")
        agent.click("#chat-form button")
        expect(resident.locator("#chat-log")).to_contain_text(
            "Medewerker: Goedemiddag! Wat is uw nieuwe adres?", timeout=LIVE_MS
        )
        resident.reload()
        expect(resident.locator("#chat-log li")).to_have_count(2)  # nothing lost
    finally:
        agent_context.close()
        resident_context.close()


def test_agent_asks_the_resident_to_identify_during_the_chat(
    browser: Browser, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """Auth during a chat, live on both sides: the resident's window shows the question as the
    agent asks, she identifies with the demo method and is back in the same chat, and the
    agent's panel shows the data without a reload by hand; then she logs out."""
    agent_context, resident_context = browser.new_context(), browser.new_context()
    agent, resident = agent_context.new_page(), resident_context.new_page()
    try:
        # A server of its own: no agent of another test may be offered this chat.
        with run_server(tmp_path_factory.mktemp("identify")) as chat_server:
            identify_during_chat(agent, resident, chat_server)
    finally:
        agent_context.close()
        resident_context.close()


def identify_during_chat(agent: Page, resident: Page, chat_server: LiveServer) -> None:
    resident.goto(chat_server.url("/"))
    topic = resident.locator("section[aria-labelledby=purpose-waste_collection]")
    topic.locator("input[name=auth_method][value='']").check()  # without identifying
    topic.locator("input[name=comm_method][value=chat]").check()
    topic.locator("button[type=submit]").click()
    expect(resident.locator("#chat")).to_have_attribute("data-connected", "true")
    resident.fill("#chat-text", "Mijn container is niet geleegd.")
    resident.click("#chat-form button")

    enrol_and_login(agent, enrolment_link(chat_server, "dirk"), "dirk")
    agent.click("text=Beschikbaar")
    agent.locator("li.offer").locator("text=Aannemen").click(timeout=LIVE_MS)
    expect(agent.locator("#chat-log")).to_contain_text("Mijn container is niet geleegd.")
    expect(agent.locator("#chat")).to_have_attribute("data-connected", "true", timeout=LIVE_MS)
    agent.select_option("#identify-purpose", "report_move")
    agent.click("text=Vraag de inwoner zich te identificeren")

    question = resident.locator("#identify")
    expect(question).to_contain_text("Verhuizing doorgeven", timeout=LIVE_MS)
    resident.click("text=Identificeren met Demo-identificatie")
    resident.click("button[value=share]")
    expect(resident.locator("#identify")).to_contain_text("U bent geïdentificeerd")
    expect(resident.locator("#chat-log")).to_contain_text("Mijn container is niet geleegd.")

    data = agent.locator("dd[data-attribute=fullname]")
    expect(data).to_have_text("Demi de Demo", timeout=LIVE_MS)  # the panel reloaded itself

    resident.click("#logout button")
    expect(resident.locator("#identify")).to_contain_text("uitgelogd")
    expect(agent.locator("#identify")).to_contain_text("heeft uitgelogd", timeout=LIVE_MS)
    expect(agent.locator("dd[data-attribute=fullname]")).to_have_count(0)
