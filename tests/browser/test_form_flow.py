"""The contact form in real browsers: the resident asks and keeps the one-time link, the agent
answers in the console (CSP enforced), the resident identifies again and reads the answer; the
resident's form pages (no script of their own) have no serious accessibility violations."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from playwright.sync_api import Browser, Page, expect

from tests.browser.support import Axe, LiveServer, run_server
from tests.browser.test_agent_flow import enrol_and_login, enrolment_link
from tests.browser.test_citizen_a11y import assert_accessible

LIVE_MS = 5000
QUESTION = "Mag ik mijn verhuizing ook later doorgeven?"
ANSWER = "Ja, tot vier weken na de verhuizing.\nGroeten, de gemeente"


@pytest.fixture(scope="module")
def form_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    with run_server(tmp_path_factory.mktemp("form")) as server:
        yield server


def test_ask_answer_and_read_after_identifying_again(
    browser: Browser, form_server: LiveServer, axe_page: Page, axe: Axe
) -> None:
    agent_context = browser.new_context()
    agent, resident = agent_context.new_page(), axe_page  # axe needs its script injected
    try:
        resident.goto(form_server.url("/"))
        topic = resident.locator("section[aria-labelledby=purpose-report_move]")
        topic.locator("input[name=comm_method][value=form]").check()
        topic.locator("button[type=submit]").click()
        resident.click("button[value=share]")  # the demo identification
        assert_accessible(axe, resident)
        resident.fill("#question", QUESTION)
        resident.click("#form-ask button")
        link = resident.locator("#read-link")
        expect(link).to_be_visible()
        assert_accessible(axe, resident)
        one_time = link.get_attribute("href")
        assert one_time and "/comm/form/a/" in one_time

        enrol_and_login(agent, enrolment_link(form_server, "femke"), "femke")
        agent.click("text=Beschikbaar")
        offer = agent.locator("li.offer")
        expect(offer).to_be_visible(timeout=LIVE_MS)
        offer.locator("text=Aannemen").click()
        expect(agent.locator("#form-question")).to_have_text(QUESTION)
        agent.fill("#answer-text", ANSWER)
        agent.click("#form-answer button")
        expect(agent.locator("h1")).to_have_text("Console")

        resident.goto(one_time)
        assert_accessible(axe, resident)
        resident.click("form button:has-text('Demo-identificatie')")
        resident.click("button[value=share]")
        expect(resident.locator("#answer-text")).to_have_text(ANSWER)
        expect(resident.locator("#question-text")).to_have_text(QUESTION)
        assert_accessible(axe, resident)
        fresh = resident.locator("#read-link").get_attribute("href")
        assert fresh and fresh != one_time
        resident.goto(one_time)  # used up
        expect(resident.locator("p[role=alert]")).to_contain_text("werkt niet")
    finally:
        agent_context.close()
