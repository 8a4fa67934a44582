"""Video calls in two real Chromium browsers (CSP enforced) with fake camera and microphone:
the resident and the agent connect through our signalling and the coturn of
``scripts/services/coturn``, relay-only, and pictures arrive on both sides; a resident who
refuses the camera and microphone is told so, still sees the agent and can chat; and the
embedded demo, without a TURN server, connects directly and says so."""

from __future__ import annotations

import tomllib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from playwright.sync_api import Browser, BrowserContext, Page, Playwright, expect

from idcontact.cli import DEMO_CONFIG
from tests.browser.conftest import BROWSER_ARGS
from tests.browser.support import PAGE_TIMEOUT_MS, Axe, LiveServer, run_server
from tests.browser.test_agent_flow import enrol_and_login, enrolment_link
from tests.browser.test_citizen_a11y import assert_accessible
from tests.services import Turn, turn_server

LIVE_MS = 5000
CALL_MS = 20_000
MEDIA = ["camera", "microphone"]

# The selected candidate pair of the call, and what was decoded (RTCPeerConnection.getStats).
CALL_STATS = """async () => {
    const pc = document.getElementById("video").idcPeer;
    const stats = await pc.getStats();
    const byId = new Map();
    stats.forEach((s) => byId.set(s.id, s));
    let pair = null, frames = 0;
    stats.forEach((s) => {
        if (s.type === "transport" && s.selectedCandidatePairId) {
            pair = byId.get(s.selectedCandidatePairId);
        }
        if (s.type === "inbound-rtp" && s.kind === "video") {
            frames += s.framesDecoded || 0;
        }
    });
    return {
        local: pair && byId.get(pair.localCandidateId).candidateType,
        remote: pair && byId.get(pair.remoteCandidateId).candidateType,
        frames: frames,
    };
}"""


def write_config(directory: Path, turn: Turn) -> Path:
    """The embedded demo's configuration, its video method relay-only through ``turn``."""
    demo = "[plugins.comm.video]\nrelay_only = false\n"
    ours = (
        f'[plugins.comm.video]\nturn_urls = ["{turn.url}"]\n'
        f'turn_secret_file = "{turn.secret_file}"\n'
    )
    text = DEMO_CONFIG.read_text()
    assert demo in text
    path = directory / "video.toml"
    path.write_text(text.replace(demo, ours))
    assert tomllib.loads(path.read_text())["plugins"]["comm"]["video"]["turn_urls"] == [turn.url]
    return path


@pytest.fixture(scope="module")
def video_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    turn = turn_server()
    directory = tmp_path_factory.mktemp("video")
    config = write_config(directory, turn)
    with run_server(directory, {"IDCONTACT_CONFIG": str(config)}) as server:
        yield server


@pytest.fixture(scope="module")
def demo_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """The embedded demo as it is (no TURN server), with no other test's residents in line."""
    with run_server(tmp_path_factory.mktemp("video-demo")) as server:
        yield server


@pytest.fixture(scope="module")
def media_browser(playwright: Playwright, chromium_path: Path) -> Iterator[Browser]:
    """Chromium with a fake camera and microphone (a test pattern and a beep); whether a page
    may use them is each context's permission, so a test can refuse them too."""
    browser = playwright.chromium.launch(
        executable_path=str(chromium_path),
        headless=True,
        args=[*BROWSER_ARGS, "--use-fake-device-for-media-stream"],
    )
    try:
        yield browser
    finally:
        browser.close()


def new_context(
    browser: Browser, server: LiveServer, media: bool, bypass_csp: bool = False
) -> BrowserContext:
    context = browser.new_context(bypass_csp=bypass_csp)
    context.set_default_timeout(PAGE_TIMEOUT_MS)
    if media:
        context.grant_permissions(MEDIA, origin=server.base_url)
    return context


@contextmanager
def two_sides(
    browser: Browser, server: LiveServer, *, resident_media: bool, axe: bool = False
) -> Iterator[tuple[Page, Page]]:
    """The agent's page (camera and microphone allowed) and the resident's (allowed or not);
    ``axe``: the resident's context lets axe-core in (it bypasses the CSP)."""
    agent_context = new_context(browser, server, media=True)
    resident_context = new_context(browser, server, media=resident_media, bypass_csp=axe)
    try:
        yield agent_context.new_page(), resident_context.new_page()
    finally:
        agent_context.close()
        resident_context.close()


def resident_waiting(resident: Page, server: LiveServer) -> None:
    resident.goto(server.url("/"))
    topic = resident.locator("section[aria-labelledby=purpose-report_move]")
    topic.locator("input[name=comm_method][value=video]").check()
    topic.locator("button[type=submit]").click()
    resident.click("button[value=share]")  # the demo identification
    expect(resident.locator("#chat")).to_have_attribute("data-connected", "true", timeout=LIVE_MS)


def agent_accepts(agent: Page, server: LiveServer, username: str, resident: Page) -> None:
    """The agent logs in and accepts the resident's conversation (the one on that page)."""
    conversation_id = resident.url.split("?", 1)[0].rsplit("/", 1)[1]
    enrol_and_login(agent, enrolment_link(server, username), username)
    agent.click("text=Beschikbaar")
    offer = agent.locator(f"li.offer[data-id='{conversation_id}']")
    expect(offer).to_be_visible(timeout=LIVE_MS)
    offer.locator("text=Aannemen").click()


def chat_reaches_the_agent(resident: Page, agent: Page, text: str) -> None:
    resident.fill("#chat-text", text)
    resident.click("#chat-form button")
    expect(agent.locator("#chat-log")).to_contain_text(text, timeout=LIVE_MS)


def remote_picture(page: Page) -> None:
    page.wait_for_function(
        "() => document.getElementById('video-remote').videoWidth > 0", timeout=CALL_MS
    )


def test_resident_and_agent_video_call_through_the_relay(
    media_browser: Browser, video_server: LiveServer
) -> None:
    with two_sides(media_browser, video_server, resident_media=True) as (agent, resident):
        resident_waiting(resident, video_server)
        expect(resident.locator("#video")).to_have_count(0)  # no call before an agent
        agent_accepts(agent, video_server, "vera", resident)
        for page in (agent, resident):
            expect(page.locator("#video")).to_have_attribute(
                "data-status", "connected", timeout=CALL_MS
            )
            remote_picture(page)
            stats = page.evaluate(CALL_STATS)
            assert stats["local"] == "relay" and stats["remote"] == "relay", stats
            assert stats["frames"] > 0
        setup_ms = int(agent.locator("#video").get_attribute("data-setup-ms") or "0")
        assert 0 < setup_ms < CALL_MS
        expect(resident.locator("#video-status")).to_have_text("Video verbonden.")
        expect(resident.locator("#video-media")).to_be_hidden()

        agent.click("#video-hangup")  # the video stops; the chat stays
        expect(resident.locator("#video-status")).to_have_text(
            "De video is gestopt. De chat blijft open.", timeout=LIVE_MS
        )
        chat_reaches_the_agent(resident, agent, "Ik zie u niet meer, maar typ wel.")
        agent.click("#video-restart")  # and starts again
        expect(resident.locator("#video")).to_have_attribute(
            "data-status", "connected", timeout=CALL_MS
        )
    # Signals are relayed, never logged or stored.
    for marker in (b"a=fingerprint", b"typ relay", b"a=ice-ufrag"):
        assert marker not in video_server.log_text().encode()
        for path in video_server.data_dir.rglob("*"):
            assert not path.is_file() or marker not in path.read_bytes(), path


def test_refused_camera_and_microphone_leave_the_chat_and_the_agents_picture(
    media_browser: Browser, video_server: LiveServer
) -> None:
    with two_sides(media_browser, video_server, resident_media=False) as (agent, resident):
        resident_waiting(resident, video_server)
        agent_accepts(agent, video_server, "ruud", resident)
        video = resident.locator("#video")
        expect(video).to_have_attribute("data-media", "none", timeout=LIVE_MS)
        expect(resident.locator("#video-media")).to_contain_text(
            "Uw camera en microfoon zijn geweigerd of niet beschikbaar."
        )
        expect(agent.locator("#video-media")).to_contain_text(
            "De inwoner heeft camera en microfoon geweigerd", timeout=CALL_MS
        )
        expect(video).to_have_attribute("data-status", "connected", timeout=CALL_MS)
        remote_picture(resident)  # the resident still sees the agent
        chat_reaches_the_agent(resident, agent, "Mijn camera doet het niet.")


def test_the_embedded_demo_calls_directly_without_a_turn_server(
    media_browser: Browser, demo_server: LiveServer, axe: Axe
) -> None:
    with two_sides(media_browser, demo_server, resident_media=True, axe=True) as (
        agent,
        resident,
    ):
        resident_waiting(resident, demo_server)
        agent_accepts(agent, demo_server, "demi", resident)
        expect(resident.locator("#video-privacy")).to_contain_text(
            "Demo: de video gaat rechtstreeks tussen de browsers"
        )
        for page in (agent, resident):
            expect(page.locator("#video")).to_have_attribute(
                "data-status", "connected", timeout=CALL_MS
            )
            remote_picture(page)
            stats = page.evaluate(CALL_STATS)
            assert stats["local"] != "relay" and stats["frames"] > 0, stats
        assert_accessible(axe, resident)  # the resident's page during a call
