"""Chat in real browsers (CSP enforced): the resident writes while waiting, the agent accepts and
answers live, typing shows, and a reload loses nothing."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from playwright.sync_api import Browser, expect

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
