"""Identify during a chat (protocol §4.3): the agent asks, the channel signs the auth-only
start, the resident identifies with the demo method in the same window, and the attributes
appear in the agent's panel; again later for another topic; declining, failing and logging out
(with session feedback, §4.5); and nothing of it left after the end."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text

from idcontact.app import create_app
from tests.conftest import CANARY_BSN, CANARY_NAME, PUBLIC, demo_settings, path_of
from tests.flows.test_console import field
from tests.plugins.test_chat import (
    TestClient,
    agent_holding,
    frames_until,
    services,
)

CANARY = "Canary-Identify-Chat-7Qw2"
DEMO_ATTRIBUTES = {
    "fullname": CANARY_NAME,
    "bsn": CANARY_BSN,
    "postcode": "6811AA",
    "birthyear": "1980",
    "municipality": "Arnhem",
}


@pytest.fixture
def client(tmp_path: Path) -> Iterator[TestClient]:
    settings = demo_settings(
        tmp_path,
        plugins={"auth": {"demo": {"attributes": DEMO_ATTRIBUTES, "session_feedback": True}}},
    )
    with TestClient(create_app(settings), base_url=PUBLIC) as c:
        yield c


def unidentified_chat(client: TestClient) -> str:
    """A resident chatting about waste collection without identifying, in line."""
    started = client.post(
        "/start",
        json={"purpose": "waste_collection", "comm_method": "chat"},
        headers={"Accept": "application/json"},
    )
    assert started.status_code == 200, started.text
    page = path_of(started.json()["client_url"])
    opened = client.get(page)
    assert opened.status_code == 200 and "zonder u te identificeren" in opened.text
    return page


def ask(client: TestClient, conversation_id: str, purpose: str) -> Any:
    panel = client.get(f"/agent/default/c/{conversation_id}")
    return client.post(
        f"/agent/default/c/{conversation_id}/identify",
        data={"csrf": field(panel.text, "csrf"), "purpose": purpose},
        follow_redirects=False,
    )


def identify(client: TestClient, page: str, action: str = "share") -> Any:
    """The resident picks the demo method and shares (or cancels); back on the chat page."""
    started = client.post(page + "/identify", data={"auth_method": "demo"}, follow_redirects=False)
    assert started.status_code == 303, started.text
    confirm = path_of(started.headers["location"])
    assert confirm.startswith("/auth/demo/confirm/")
    decided = client.post(confirm, data={"action": action}, follow_redirects=False)
    assert decided.status_code == 303
    assert path_of(decided.headers["location"]) == page
    return client.get(page)


def audit_kinds(client: TestClient, conversation_id: str) -> list[str]:
    db = services(client).conversations.db
    rows = client.portal.call(  # type: ignore[union-attr]
        db.run,
        lambda conn: conn.execute(
            text("SELECT action FROM audit_events WHERE conversation_id = :s ORDER BY id"),
            {"s": conversation_id},
        ).all(),
    )
    return [r[0] for r in rows]


def test_agent_asks_resident_identifies_and_the_panel_shows_the_data(client: TestClient) -> None:
    page = unidentified_chat(client)
    client.post(page + "/say", data={"text": CANARY})
    conversation_id = agent_holding(client, page)
    panel = client.get(f"/agent/default/c/{conversation_id}")
    assert "Vraag de inwoner zich te identificeren" in panel.text
    assert CANARY_NAME not in panel.text

    with client.websocket_connect(page + "/ws") as resident:
        assert frames_until(resident, "state") == {"type": "state", "state": "connected"}
        asked = ask(client, conversation_id, "report_move")
        assert asked.status_code == 303, asked.text
        # The resident's window hears of it at once (and renders the question on reload).
        assert frames_until(resident, "state") == {
            "type": "state",
            "state": "connected",
            "identify": "asked",
        }
    shown = client.get(page)
    assert "De medewerker vraagt u zich te identificeren voor: Verhuizing doorgeven" in shown.text
    assert "Identificeren met Demo-identificatie" in shown.text
    assert "<li>Burgerservicenummer (BSN)</li>" in shown.text

    back = identify(client, page)
    assert "U bent geïdentificeerd" in back.text
    assert CANARY in back.text  # the chat goes on where it was
    assert CANARY_NAME not in back.text and CANARY_BSN not in back.text  # never shown to her
    panel = client.get(f"/agent/default/c/{conversation_id}")
    assert CANARY_NAME in panel.text and "Geïdentificeerd voor Verhuizing doorgeven" in panel.text
    kinds = audit_kinds(client, conversation_id)
    assert "conversation.identify_asked" in kinds and "conversation.identify_done" in kinds

    # Later, for another topic: the new attributes replace the old ones.
    assert ask(client, conversation_id, "senior_pass").status_code == 303
    identify(client, page)
    panel = client.get(f"/agent/default/c/{conversation_id}")
    assert "1980" in panel.text and "Arnhem" in panel.text
    assert CANARY_NAME not in panel.text and CANARY_BSN not in panel.text


def test_cancel_decline_and_try_again(client: TestClient) -> None:
    page = unidentified_chat(client)
    conversation_id = agent_holding(client, page)
    ask(client, conversation_id, "report_move")
    failed = identify(client, page, action="cancel")
    assert "Identificeren is niet gelukt of geannuleerd" in failed.text
    assert "Identificeren met Demo-identificatie" in failed.text  # she may try again
    panel = client.get(f"/agent/default/c/{conversation_id}")
    assert "is mislukt of geannuleerd" in panel.text and CANARY_NAME not in panel.text

    declined = client.post(page + "/identify", data={"decline": "1"}, follow_redirects=False)
    assert declined.status_code == 303
    assert "liever niet" in client.get(f"/agent/default/c/{conversation_id}").text
    assert "Identificeren met" not in client.get(page).text
    # Now nothing is asked: trying to start is refused and changes nothing.
    refused = client.post(page + "/identify", data={"auth_method": "demo"})
    assert refused.status_code == 409
    assert refused.headers["content-type"] == "application/problem+json"

    identify_after_retry = ask(client, conversation_id, "report_move")
    assert identify_after_retry.status_code == 303
    assert CANARY_NAME not in identify(client, page).text
    assert CANARY_NAME in client.get(f"/agent/default/c/{conversation_id}").text


def test_bad_requests_change_nothing(client: TestClient) -> None:
    page = unidentified_chat(client)
    conversation_id = page.rsplit("/", 1)[1]
    # Not asked: nothing to start; an unknown conversation: 404.
    assert client.post(page + "/identify", data={"auth_method": "demo"}).status_code == 409
    assert (
        client.post("/comm/chat/c/nope/identify", data={"auth_method": "demo"}).status_code == 404
    )
    # The agent can ask only in a chat they are in, and only for a topic of its channel.
    agent_holding(client, page)
    unknown = ask(client, conversation_id, "no_such_topic")
    assert unknown.status_code == 400
    assert unknown.headers["content-type"] == "application/problem+json"
    assert ask(client, conversation_id, "report_move").status_code == 303
    # A method the topic does not allow, or none at all.
    for method in ("nope", ""):
        wrong = client.post(page + "/identify", data={"auth_method": method})
        assert wrong.status_code == 400, method
    conversation = client.portal.call(  # type: ignore[union-attr]
        services(client).conversations.get, conversation_id
    )
    assert conversation.identify_state == "asked" and not conversation.identified
    # Logging out without an identification: refused.
    assert client.post(page + "/logout").status_code == 409


def test_logout_tells_the_auth_plugin_and_deletes_the_data(
    client: TestClient, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="idcontact.plugins.auth.demo")
    page = unidentified_chat(client)
    conversation_id = agent_holding(client, page)
    ask(client, conversation_id, "report_move")
    back = identify(client, page)
    assert 'id="logout"' in back.text

    for n in range(3):  # activity: reported once, not per message (at most once a minute)
        client.post(page + "/say", data={"text": f"bericht {n}"})

    def feedback() -> list[str]:
        return [
            str(r.__dict__.get("feedback"))
            for r in caplog.records
            if r.getMessage() == "demo session feedback"
        ]

    assert feedback() == ["user_active"]
    out = client.post(page + "/logout", follow_redirects=False)
    assert out.status_code == 303
    assert feedback() == ["user_active", "logout"]
    after = client.get(page)
    assert "U bent uitgelogd" in after.text and 'id="logout"' not in after.text
    panel = client.get(f"/agent/default/c/{conversation_id}")
    assert CANARY_NAME not in panel.text and "heeft uitgelogd" in panel.text
    rows = client.portal.call(  # type: ignore[union-attr]
        services(client).conversations.db.run,
        lambda conn: conn.execute(text("SELECT count(*) FROM vault_entries")).scalar(),
    )
    assert rows == 0
    # The chat goes on.
    assert client.post(page + "/say", data={"text": "nog een vraag"}).status_code == 200
    assert "conversation.logged_out" in audit_kinds(client, conversation_id)


def test_nothing_is_left_after_the_end(client: TestClient, tmp_path: Path) -> None:
    page = unidentified_chat(client)
    conversation_id = agent_holding(client, page)
    client.post(page + "/say", data={"text": CANARY})
    ask(client, conversation_id, "report_move")
    identify(client, page)
    panel = client.get(f"/agent/default/c/{conversation_id}")
    closed = client.post(
        f"/agent/default/c/{conversation_id}/close",
        data={"csrf": field(panel.text, "csrf")},
        follow_redirects=False,
    )
    assert closed.status_code == 303
    conversations = services(client).conversations
    client.portal.call(conversations.purge_expired)  # type: ignore[union-attr]
    raw = b"".join(p.read_bytes() for p in (tmp_path / "data").rglob("*") if p.is_file())
    for canary in (CANARY, CANARY_NAME, CANARY_BSN):
        assert canary.encode() not in raw, canary
