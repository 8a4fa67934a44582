"""The demo channel as the resident's waiting room: joining the queue, the live stream, the
topic page's expected wait, and the language chosen on the topic page."""

from __future__ import annotations

import re
import time
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import pytest
from sqlalchemy import text

from idcontact.plugins.comm import demo
from idcontact.queues import Place
from tests.conftest import (
    CANARY_BSN,
    CANARY_NAME,
    PUBLIC,
    AppFactory,
    Instance,
    demo_settings,
    path_of,
)
from tests.flows.test_core_flows import JSON, START, consent, issue
from tests.live import STREAM_DEADLINE_S, served, stream

pytestmark = pytest.mark.anyio

LABELS = ("Naam", "Burgerservicenummer (BSN)")


# -- helpers --------------------------------------------------------------------------------


async def authenticated(inst: Instance, prefix: str = "") -> str:
    """A resident who shared their data and was sent on; the waiting room's URL (not opened)."""
    started = await inst.client.post(f"{prefix}/start", json=START, headers=JSON)
    assert started.status_code == 200, started.text
    redirect = await consent(inst.client, started.json()["client_url"])
    return str(redirect.headers["location"])


def conversation_id(url: str) -> str:
    return url.split("?", 1)[0].rsplit("/", 1)[1]


async def state_of(inst: Instance, url: str) -> str:
    assert inst.services.conversations is not None
    return (await inst.services.conversations.get(conversation_id(url))).state


async def add_agent(inst: Instance, agent_id: str = "agent1") -> None:
    """An agent of every queue of the default tenant, available now."""
    assert inst.services.engine is not None
    now = time.time()
    async with inst.services.engine.begin() as conn:
        await conn.execute(
            text(
                "INSERT INTO agents (id, username, display_name, disabled, created_at, presence,"
                " presence_since) VALUES (:id, :id, 'Agent', 0, :now, 'available', :now)"
            ),
            {"id": agent_id, "now": now},
        )
        await conn.execute(
            text(
                "INSERT INTO agent_memberships (agent_id, tenant, role, queues)"
                " VALUES (:id, 'default', 'agent', '[\"*\"]')"
            ),
            {"id": agent_id},
        )


def status_text(page: str) -> str:
    match = re.search(r'<p id="waiting-status"[^>]*>(.*?)</p>', page, re.S)
    assert match is not None, "expected the live status line"
    return match.group(1).strip()


# -- joining the queue ------------------------------------------------------------------------


async def test_opening_the_page_joins_the_queue(instance: Instance) -> None:
    first = await authenticated(instance)
    assert await state_of(instance, first) == "authenticated"  # not before the resident is there
    page = await instance.client.get(path_of(first))
    assert page.status_code == 200
    assert await state_of(instance, first) == "waiting"
    assert status_text(page.text).startswith("U bent nummer 1 in de rij.")

    second = await authenticated(instance)
    page2 = await instance.client.get(path_of(second))
    assert status_text(page2.text).startswith("U bent nummer 2 in de rij.")
    # Opening it again changes nothing: still first in line.
    again = await instance.client.get(path_of(first))
    assert status_text(again.text).startswith("U bent nummer 1 in de rij.")


async def test_the_page_names_the_data_but_never_shows_it(instance: Instance) -> None:
    url = await authenticated(instance)
    page = (await instance.client.get(path_of(url))).text
    for label in LABELS:
        assert f"<li>{label}</li>" in page
    assert CANARY_NAME not in page and CANARY_BSN not in page
    # The page does not even read the vault: no "attributes.view" by the channel.
    assert instance.services.engine is not None
    async with instance.services.engine.connect() as conn:
        views = (
            await conn.execute(
                text("SELECT actor FROM audit_events WHERE action = 'attributes.view'")
            )
        ).all()
    assert views == []


async def test_waiting_room_without_an_agent_says_so_and_offers_other_ways(
    instance: Instance,
) -> None:
    url = await authenticated(instance)
    page = (await instance.client.get(path_of(url))).text
    line = status_text(page)
    assert "Verwachte wachttijd: onbekend" in line
    # Long wait (the queue's long_wait_seconds: 300 s by default), in plain words.
    assert "langer dan 5 minuten" in line and "bellen" in line and "later terugkomen" in line
    # Works without JavaScript: a refresh link, never a meta refresh.
    assert ">Vernieuwen</a>" in page
    assert "http-equiv" not in page
    # The script is progressive enhancement: own file, deferred; its texts come from the page.
    assert re.search(r'<script src="/static/waiting\.js\?v=[^"]+" defer></script>', page)
    assert 'aria-live="polite"' in page
    assert f'data-events-url="/comm/demo/c/{conversation_id(url)}/events"' in page
    assert 'data-text-position="U bent nummer {n} in de rij."' in page
    script = await instance.client.get("/static/waiting.js")
    assert script.status_code == 200
    # No language in the script: every sentence comes from the page.
    sentences = [t.split("{")[0].strip() for texts in demo.TEXT.values() for t in texts.values()]
    assert not [t for t in sentences if len(t) > 8 and t in script.text]


TEXTS = {
    **{
        k: demo.TEXT["nl"][k]
        for k in ("in_line", "position", "position_beyond", "wait", "wait_one", "wait_unknown")
    },
    "long": demo.TEXT["nl"]["long"].format(m="5 minuten"),
    "closed": demo.TEXT["nl"]["closed_until"].format(when="maandag 08:30"),
}


@pytest.mark.parametrize(
    ("place", "expected"),
    [
        (
            Place(1, 150.0, False, True),
            "U bent nummer 1 in de rij. Verwachte wachttijd: ongeveer 3 minuten.",
        ),
        (
            Place(2, 20.0, False, True),
            "U bent nummer 2 in de rij. Verwachte wachttijd: ongeveer 1 minuut.",
        ),
        (
            Place(3, 900.0, True, True),
            "U bent nummer 3 in de rij. Verwachte wachttijd: ongeveer 15 minuten. U moet "
            "waarschijnlijk langer dan 5 minuten wachten. U kunt ook bellen, of later terugkomen.",
        ),
        (
            Place(1, 150.0, False, False),
            "U bent nummer 1 in de rij. We zijn nu gesloten. "
            "We zijn weer open vanaf maandag 08:30.",
        ),
        (
            Place(501, 120_240.0, True, True, beyond=True),
            "Er staan meer dan 500 mensen voor u in de rij. Verwachte wachttijd: ongeveer "
            "2004 minuten. U moet waarschijnlijk langer dan 5 minuten wachten. U kunt ook "
            "bellen, of later terugkomen.",
        ),
        (None, "U staat in de rij."),
    ],
    ids=["minutes-rounded-up", "one-minute", "long-wait", "closed", "beyond-limit", "no-place"],
)
def test_waiting_line_in_words(place: Place | None, expected: str) -> None:
    assert demo.waiting_text(TEXTS, place) == expected


async def test_expected_wait_in_minutes_while_the_agent_is_busy(
    make_app: AppFactory, tmp_path: Path
) -> None:
    queue = {"tag": "general", "max_chats": 1, "long_wait_seconds": 900}
    inst: Instance = await make_app(demo_settings(tmp_path, queues=[queue]))
    await add_agent(inst)
    first = await authenticated(inst)
    await inst.client.get(path_of(first))
    queues = inst.services.tenants["default"].queues
    assert queues is not None
    await queues.tick()
    assert await state_of(inst, first) == "offered"  # the agent's one chat
    second = await authenticated(inst)
    line = status_text((await inst.client.get(path_of(second))).text)
    assert await state_of(inst, second) == "waiting"
    # Behind the offered one: 2 × 300 s handle time ÷ 1 agent = 10 minutes, below 15: not long.
    assert line == "U bent nummer 2 in de rij. Verwachte wachttijd: ongeveer 10 minuten."


async def test_offered_connected_and_wrap_up(make_app: AppFactory) -> None:
    inst: Instance = await make_app()
    url = await authenticated(inst)
    await inst.client.get(path_of(url))
    await add_agent(inst)
    queues = inst.services.tenants["default"].queues
    assert queues is not None
    await queues.tick()
    assert await state_of(inst, url) == "offered"
    page = (await inst.client.get(path_of(url))).text
    assert "Een medewerker neemt uw gesprek aan." in page
    await queues.accept(conversation_id(url), "agent1")
    page = (await inst.client.get(path_of(url))).text
    assert "U bent verbonden met een medewerker." in page
    assert CANARY_NAME not in page
    ended = await inst.client.post(path_of(url) + "/end")
    assert ended.status_code == 303
    assert await state_of(inst, url) == "wrap_up"  # the agent gets to wrap up
    page = (await inst.client.get(path_of(url))).text
    assert "Dit gesprek is beëindigd." in page and "<form" not in page
    assert "ten hoogste 2 minuten" in page  # wrap_up_seconds = 120: honest, not "deleted" yet
    assert "waiting.js" not in page  # nothing changes any more: no stream


async def test_ending_while_waiting_deletes_the_data(instance: Instance) -> None:
    url = await authenticated(instance)
    await instance.client.get(path_of(url))
    ended = await instance.client.post(path_of(url) + "/end")
    assert ended.status_code == 303 and ended.headers["location"] == url
    assert await state_of(instance, url) == "ended"
    page = (await instance.client.get(path_of(url))).text
    assert "Dit gesprek is beëindigd; uw gegevens zijn gewist." in page
    assert "<form" not in page and "waiting.js" not in page


async def test_failed_and_ineligible_link_back_to_the_topics(make_app: AppFactory) -> None:
    inst: Instance = await make_app()
    started = await inst.client.post("/start", json=START, headers=JSON)
    cancelled = await consent(inst.client, started.json()["client_url"], "cancel")
    page = (await inst.client.get(path_of(cancelled.headers["location"]))).text
    assert "Identificeren is geannuleerd of mislukt." in page
    assert '<a href="/">Opnieuw proberen</a>' in page
    token = issue(inst, {"birthyear": "1950", "municipality": "Utrecht"})
    body = {"purpose": "senior_pass", "auth_result": token, "comm_method": "demo"}
    url = (await inst.client.post("/start", json=body, headers=JSON)).json()["client_url"]
    page = (await inst.client.get(path_of(url))).text
    assert "alleen voor inwoners" in page and '<a href="/">' in page
    assert "Utrecht" not in page


async def test_created_state_has_no_meta_refresh_and_does_not_join(instance: Instance) -> None:
    assert instance.services.conversations is not None
    purpose = instance.settings.purpose("report_move")
    assert purpose is not None
    cid, _ = await instance.services.conversations.create(purpose, "demo", with_slot=True)
    page = (await instance.client.get(f"/comm/demo/c/{cid}")).text
    assert "We wachten op uw gegevens" in page
    assert "http-equiv" not in page and ">Vernieuwen</a>" in page
    assert (await instance.services.conversations.get(cid)).state == "created"


async def test_events_of_an_unknown_conversation_are_a_404_problem(instance: Instance) -> None:
    response = await instance.client.get("/comm/demo/c/no-such-id/events")
    assert response.status_code == 404
    assert response.headers["content-type"] == "application/problem+json"


# -- the live stream, over a real server (tests/live.py) ------------------------------------


async def resident(client: httpx.AsyncClient, base: str) -> str:
    """Start, share and open the waiting room over HTTP; returns the room's URL."""
    started = await client.post(f"{base}/start", json=START, headers=JSON)
    assert started.status_code == 200, started.text
    confirm = started.json()["client_url"]
    shared = await client.post(confirm, data={"action": "share"})
    assert shared.status_code == 303
    url = str(shared.headers["location"])
    assert (await client.get(url)).status_code == 200
    return url


async def test_stream_tells_place_then_changes_then_ends(tmp_path: Path) -> None:
    with served(tmp_path) as base:
        async with httpx.AsyncClient(trust_env=False, timeout=STREAM_DEADLINE_S) as client:
            first, second = await resident(client, base), await resident(client, base)
            async with (
                stream(client, f"{first}/events") as a,
                stream(client, f"{second}/events") as b,
            ):
                headers = a.response.headers
                assert headers["content-type"].startswith("text/event-stream")
                assert headers["cache-control"] == "no-store"
                assert headers["x-accel-buffering"] == "no"
                assert await a.event() == {
                    "state": "waiting",
                    "position": 1,
                    "beyond": False,
                    "expected_seconds": None,
                    "long_wait": True,
                    "open": True,
                }
                b_first = await b.event()
                assert b_first is not None and b_first["position"] == 2

                ended = await client.post(f"{first}/end")
                assert ended.status_code == 303
                assert await a.event() == {"state": "ended"}
                assert await a.next() is None  # final: the server closed the stream
                # The one behind moves up, pushed by the queue.
                moved = await b.event()
                assert moved is not None and moved["state"] == "waiting"
                assert moved["position"] == 1
            streamed = "\n".join(a.raw + b.raw)
            assert CANARY_NAME not in streamed and CANARY_BSN not in streamed
            assert "Demi" not in streamed


async def test_stream_sends_heartbeats(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(demo, "HEARTBEAT_SECONDS", 0.2)
    with served(tmp_path) as base:
        async with httpx.AsyncClient(trust_env=False, timeout=STREAM_DEADLINE_S) as client:
            url = await resident(client, base)
            async with stream(client, f"{url}/events") as events:
                assert (await events.event() or {}).get("position") == 1
                # The queue pushes the same place every second: sent once, then only comments.
                for _ in range(3):
                    assert await events.next() == ": keep-alive"


async def test_stream_of_a_finished_conversation_ends_at_once(tmp_path: Path) -> None:
    with served(tmp_path) as base:
        async with httpx.AsyncClient(trust_env=False, timeout=STREAM_DEADLINE_S) as client:
            url = await resident(client, base)
            await client.post(f"{url}/end")
            async with stream(client, f"{url}/events") as events:
                assert await events.event() == {"state": "ended"}
                assert await events.next() is None


# -- the topic page's expected wait -----------------------------------------------------------


async def test_topic_page_shows_the_expected_wait(instance: Instance) -> None:
    before = (await instance.client.get("/")).text
    assert "Verwachte wachttijd" in before
    assert "onbekend, want er is nu geen medewerker vrij" in before
    await add_agent(instance)
    after = (await instance.client.get("/")).text
    # Nobody waiting, one agent, 300 s handle time: the next resident waits about 5 minutes.
    assert "ongeveer 5 minuten" in after and "onbekend" not in after
    english = (await instance.client.get("/?lang=en")).text
    assert "Expected wait" in english and "about 5 minutes" in english


async def test_topic_page_says_when_a_closed_queue_opens(
    make_app: AppFactory, tmp_path: Path
) -> None:
    monday_early = datetime(2026, 3, 2, 7, 0, tzinfo=ZoneInfo("Europe/Amsterdam")).timestamp()
    settings = demo_settings(
        tmp_path, queues=[{"tag": "general", "opening_hours": {"mon": ["08:30-17:00"]}}]
    )
    inst: Instance = await make_app(settings, clock=lambda: monday_early)
    page = (await inst.client.get("/")).text
    assert "nu gesloten, open vanaf maandag 08:30" in page
    english = (await inst.client.get("/?lang=en")).text
    assert "closed now, open from Monday 08:30" in english


async def test_topic_page_without_queues_shows_no_wait(make_app: AppFactory) -> None:
    inst: Instance = await make_app(roles=("core", "auth"))  # split roles: no database here
    page = await inst.client.get("/")
    assert page.status_code == 200
    assert "Verhuizing doorgeven" in page.text and "Verwachte wachttijd" not in page.text


# -- the language chosen on the topic page ----------------------------------------------------


async def test_english_stays_english_through_the_flow(instance: Instance) -> None:
    index = (await instance.client.get("/?lang=en")).text
    assert '<input type="hidden" name="lang" value="en">' in index
    started = await instance.client.post("/start", data={**START, "lang": "en"})
    assert started.status_code == 303
    confirm = started.headers["location"]
    assert confirm.endswith("?lang=en")
    page = await instance.client.get(path_of(confirm))
    assert 'lang="en"' in page.text and "These details will be shared" in page.text
    shared = await instance.client.post(path_of(confirm), data={"action": "share"})
    room = shared.headers["location"]
    assert room.startswith(f"{PUBLIC}/comm/demo/c/") and room.endswith("?lang=en")
    page = await instance.client.get(path_of(room))
    assert 'lang="en"' in page.text
    assert status_text(page.text).startswith("You are number 1 in the queue.")
    assert "<li>Full name</li>" in page.text and CANARY_NAME not in page.text
    assert ">Refresh</a>" in page.text
    ended = await instance.client.post(path_of(room).replace("?lang=en", "/end?lang=en"))
    assert ended.status_code == 303 and ended.headers["location"] == room
    final = (await instance.client.get(path_of(room))).text
    assert "This conversation has ended; your data has been deleted." in final


async def test_dutch_default_adds_no_language_to_urls(instance: Instance) -> None:
    started = await instance.client.post("/start", data={**START, "lang": "nl"})
    assert "lang=" not in started.headers["location"]
    shared = await consent(instance.client, started.headers["location"])
    assert "lang=" not in shared.headers["location"]


async def test_english_without_identifying(instance: Instance) -> None:
    form = {"purpose": "waste_collection", "comm_method": "demo", "lang": "en"}
    started = await instance.client.post("/start", data=form)
    room = started.headers["location"]
    assert room.endswith("?lang=en")
    page = (await instance.client.get(path_of(room))).text
    assert "You are talking without identifying" in page
    assert status_text(page).startswith("You are number 1 in the queue.")


async def test_english_in_band_delivery_keeps_the_language(
    make_app: AppFactory, tmp_path: Path
) -> None:
    settings = demo_settings(
        tmp_path,
        plugins={
            "comm": {"demo": {"use_attr_url": False}},
            "auth": demo_settings(tmp_path).plugins["auth"],
        },
    )
    inst: Instance = await make_app(settings)
    started = await inst.client.post("/start", data={**START, "lang": "en"})
    shared = await consent(inst.client, started.headers["location"])
    assert "?lang=en&result=" in shared.headers["location"]
    dropped = await inst.client.get(path_of(shared.headers["location"]))
    assert dropped.status_code == 303
    assert dropped.headers["location"].endswith("?lang=en")
    assert "result=" not in dropped.headers["location"]


async def test_a_long_wait_names_the_municipality_phone_number(
    make_app: AppFactory, tmp_path: Any
) -> None:
    inst: Instance = await make_app(demo_settings(tmp_path, phone_number="+31 26 377 7000"))
    url = await authenticated(inst)
    line = status_text((await inst.client.get(path_of(url))).text)
    assert "langer dan 5 minuten" in line and "Ons telefoonnummer is +31 26 377 7000." in line
