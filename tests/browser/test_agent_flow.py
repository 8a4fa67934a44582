"""A resident and an agent in real browsers against a real server: the whole demo flow.

The resident identifies with the demo method (canary values as attributes); the agent, logged in
with password and TOTP, gets the offer pushed live, accepts, sees the attributes, reveals the
masked BSN, and ends the conversation. Afterwards the canary values are nowhere: not in the raw
database files, not in the server log, not in any error body.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pyotp
import pytest
from playwright.sync_api import Browser, Page, expect

from tests.browser.support import Axe, LiveServer, run_server
from tests.browser.test_citizen_a11y import assert_accessible

CANARY_NAME = "Canary-Flow-Qx7Zr"
CANARY_BSN = "999990019"
PASSWORD = "een lange zin als wachtwoord"
PUSH_DEADLINE_MS = 1000  # the issue: "an agent sees the attributes within 1 s"


@pytest.fixture(scope="module")
def canary_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    plugins = {"auth": {"demo": {"attributes": {"fullname": CANARY_NAME, "bsn": CANARY_BSN}}}}
    with run_server(
        tmp_path_factory.mktemp("flow"), env={"IDCONTACT_PLUGINS": json.dumps(plugins)}
    ) as server:
        yield server


def enrolment_link(server: LiveServer, username: str = "anna") -> str:
    env = {k: v for k, v in os.environ.items() if not k.startswith("IDCONTACT_")}
    env["IDCONTACT_PUBLIC_URL"] = server.base_url
    out = subprocess.run(
        [
            str(Path(sys.executable).parent / "idcontact"),
            "agents",
            "add",
            username,
            "--name",
            "Anna",
            "--member",
            "default:admin:*",
            "--data-dir",
            str(server.data_dir),
        ],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return next(line.strip() for line in out.splitlines() if "/agent/enrol/" in line)


def enrol_and_login(page: Page, link: str, username: str = "anna", axe: Axe | None = None) -> None:
    page.goto(link)
    if axe is not None:
        assert_accessible(axe, page)
    secret = page.locator("code.secret").inner_text().replace(" ", "")
    page.fill("#password", PASSWORD)
    page.fill("#password_again", PASSWORD)
    page.fill("#totp", pyotp.TOTP(secret).now())
    page.click("button[type=submit]")
    expect(page.locator("p.notice")).to_be_visible()  # "Uw account is klaar"
    if axe is not None:
        assert_accessible(axe, page)
    page.fill("#username", username)
    page.fill("#password", PASSWORD)
    page.fill("#code", pyotp.TOTP(secret).now())
    page.click("button[type=submit]")
    expect(page.locator("h1")).to_have_text("Console")
    if axe is not None:
        assert_accessible(axe, page)


def test_agent_pages_have_no_serious_violations(
    axe_page: Page, axe: Axe, canary_server: LiveServer
) -> None:
    enrol_and_login(axe_page, enrolment_link(canary_server, "axel"), "axel", axe)
    axe_page.click("text=Statistieken")
    expect(axe_page.locator("h1")).to_have_text("Wachtrijen")
    assert_accessible(axe, axe_page)


def test_resident_and_agent_whole_flow(browser: Browser, canary_server: LiveServer) -> None:
    agent_context = browser.new_context()
    resident_context = browser.new_context()
    agent, resident = agent_context.new_page(), resident_context.new_page()
    try:
        enrol_and_login(agent, enrolment_link(canary_server))
        agent.click("text=Beschikbaar")
        expect(agent.locator("#presence")).to_have_text("beschikbaar")

        resident.goto(canary_server.url("/"))
        resident.locator("section[aria-labelledby=purpose-report_move] button").click()
        expect(resident.get_by_text(CANARY_NAME)).to_be_visible()  # the consent page
        resident.click("button[value=share]")
        shared_at = time.monotonic()

        # Pushed to the open console without a reload.
        offer = agent.locator("li.offer")
        expect(offer).to_be_visible(timeout=PUSH_DEADLINE_MS)
        pushed_ms = (time.monotonic() - shared_at) * 1000
        offer.locator("text=Aannemen").click()
        expect(agent.locator("dl.attributes")).to_contain_text(CANARY_NAME)
        expect(agent.locator("dl.attributes")).not_to_contain_text(CANARY_BSN)  # masked
        agent.click("text=Toon Burgerservicenummer (BSN)")
        expect(agent.locator("dl.attributes")).to_contain_text(CANARY_BSN)

        agent.click("text=Gesprek beëindigen en gegevens nu wissen")
        expect(agent.locator("h1")).to_have_text("Console")
        print(f"offer pushed to the console {pushed_ms:.0f} ms after the resident shared")
    finally:
        agent_context.close()
        resident_context.close()

    # Error bodies: bad input of several kinds, none of which may echo a value.
    with httpx.Client(base_url=canary_server.base_url) as client:
        bodies = [
            client.post("/comm/demo/attr/nope", content=b"x", headers={"content-type": "a/b"}),
            client.post("/start", json={"purpose": CANARY_NAME}),
            client.get(f"/agent/default/c/{CANARY_BSN}"),
        ]
    for response in bodies:
        assert response.status_code >= 300
        assert CANARY_NAME not in response.text and CANARY_BSN not in response.text

    log = canary_server.log_text()
    assert CANARY_NAME not in log and CANARY_BSN not in log
    for path in canary_server.data_dir.rglob("*"):
        if path.is_file():
            raw = path.read_bytes()
            assert CANARY_NAME.encode() not in raw, path
            assert CANARY_BSN.encode() not in raw, path
