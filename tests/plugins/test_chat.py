"""The ``chat`` channel: resident and agent over real WebSockets in process (Starlette's test
client runs the app with its lifespan), messages in order, typing, reconnect without loss, the
form fallback, the transcript, and nothing left after the end."""

from __future__ import annotations

import gc
import re
import time
import warnings
import weakref
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyotp
import pytest
from sqlalchemy import text

from idcontact.agents.directory import Membership
from idcontact.app import create_app, services_of
from tests.conftest import PUBLIC, demo_settings, path_of
from tests.flows.test_console import PASSWORD, field

with warnings.catch_warnings():
    # Starlette now prefers httpx2 for its test client; the httpx one works as before.
    warnings.simplefilter("ignore")
    from starlette.testclient import TestClient, WebSocketTestSession

CANARY = "Canary-Chat-Text-4Kp9"


@pytest.fixture
def client(tmp_path: Path) -> Iterator[TestClient]:
    app = create_app(demo_settings(tmp_path))  # the demo has a chat channel
    with TestClient(app, base_url=PUBLIC) as c:
        yield c


def services(client: TestClient) -> Any:
    return services_of(client.app)  # type: ignore[arg-type]


def resident_in_line(client: TestClient, comm: str = "chat") -> str:
    """A resident identified with the demo method, on the channel's page, in line."""
    started = client.post(
        "/start",
        json={"purpose": "report_move", "auth_method": "demo", "comm_method": comm},
        headers={"Accept": "application/json"},
    )
    confirm = path_of(started.json()["client_url"])
    shared = client.post(confirm, data={"action": "share"}, follow_redirects=False)
    page = path_of(shared.headers["location"])
    opened = client.get(page)
    assert opened.status_code == 200 and ('id="chat"' in opened.text) == (comm in ("chat", "video"))
    return page.split("?", 1)[0]


def agent_holding(client: TestClient, page: str) -> str:
    """An enrolled, logged-in, available agent who accepted that conversation."""
    conversation_id = page.rsplit("/", 1)[1]
    directory = services(client).agents
    code = client.portal.call(  # type: ignore[union-attr]
        directory.add, "chris", "Chris", [Membership("default", "agent", ("*",))]
    )
    enrol = client.get(f"/agent/enrol/{code}")
    secret = re.search(r'<code class="secret">([A-Z2-7 ]+)</code>', enrol.text)
    assert secret
    totp = pyotp.TOTP(secret.group(1).replace(" ", ""))
    client.post(
        f"/agent/enrol/{code}",
        data={
            "password": PASSWORD,
            "password_again": PASSWORD,
            "totp": totp.now(),
            "sealed": field(enrol.text, "sealed"),
            "csrf": field(enrol.text, "csrf"),
        },
    )
    login = client.get("/agent/login")
    client.post(
        "/agent/login",
        data={
            "username": "chris",
            "password": PASSWORD,
            "code": totp.now(),
            "csrf": field(login.text, "csrf"),
        },
    )
    console = client.get("/agent/default/")
    csrf = field(console.text, "csrf")
    client.post("/agent/default/presence", data={"csrf": csrf, "presence": "available"})
    queues = services(client).tenants["default"].queues
    client.portal.call(queues.tick)  # type: ignore[union-attr]
    accepted = client.post(
        f"/agent/default/c/{conversation_id}/accept", data={"csrf": csrf}, follow_redirects=False
    )
    assert accepted.status_code == 303, accepted.text
    return conversation_id


def frames_until(ws: WebSocketTestSession, kind: str) -> dict[str, Any]:
    """The next frame of ``kind`` (skipping others, such as state changes)."""
    for _ in range(20):
        frame: dict[str, Any] = ws.receive_json()
        if frame["type"] == kind:
            return frame
    raise AssertionError(f"no {kind} frame")


def test_resident_and_agent_chat_in_order_with_typing(client: TestClient) -> None:
    page = resident_in_line(client)
    with client.websocket_connect(page + "/ws") as resident:
        assert resident.receive_json() == {"type": "state", "state": "waiting"}
        resident.send_json({"type": "message", "text": "Ik wacht al even. " + CANARY})
        mine = frames_until(resident, "message")
        assert (mine["seq"], mine["from"]) == (1, "resident") and CANARY in mine["text"]

        conversation_id = agent_holding(client, page)
        origin = {"origin": PUBLIC}
        with client.websocket_connect(
            f"/agent/default/c/{conversation_id}/chat", headers=origin
        ) as agent:
            assert agent.receive_json()["type"] == "state"
            backlog = frames_until(agent, "message")
            assert backlog["seq"] == 1 and CANARY in backlog["text"]  # what came before
            agent.send_json({"type": "typing"})
            assert frames_until(resident, "typing") == {"type": "typing", "from": "agent"}
            agent.send_json({"type": "message", "text": "Goedemiddag, waarmee kan ik helpen?"})
            answer = frames_until(resident, "message")
            assert (answer["seq"], answer["from"]) == (2, "agent")
            assert frames_until(agent, "message")["seq"] == 2  # the agent's own, numbered
            agent.send_json({"type": "message", "text": " "})
            assert frames_until(agent, "error") == {"type": "error", "error": "bad-frame"}
            agent.send_text("not json")
            assert frames_until(agent, "error")["error"] == "bad-frame"

    # The console shows the chat, readable without a script.
    panel = client.get(f"/agent/default/c/{conversation_id}")
    assert "Goedemiddag, waarmee kan ik helpen?" in panel.text and 'id="chat-form"' in panel.text


def test_a_closed_chat_is_freed_at_once_not_by_a_full_collection(client: TestClient) -> None:
    """Nothing of a socket that ended waits for the garbage collector: no cycle keeps it.
    ``serve`` freezes what lives long (docs/operations.md), so a cycle would wait for the
    hourly walk of everything; before, it cost that walk ~440 objects per closed chat."""
    page = resident_in_line(client)
    key = ("default", "conversation", page.rsplit("/", 1)[1])
    bus = services(client).bus
    gc.collect()
    gc.disable()  # from here on, only reference counts free anything
    try:
        with client.websocket_connect(page + "/ws") as resident:
            assert resident.receive_json()["type"] == "state"
            (subscription,) = bus._subs[key]
            gone = weakref.ref(subscription)
            del subscription
            resident.send_json({"type": "message", "text": "tot zo"})
            assert frames_until(resident, "message")["seq"] == 1
        deadline = time.monotonic() + 5
        while bus.has_subscribers(*key) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert not bus.has_subscribers(*key)
        assert gone() is None
    finally:
        gc.enable()


def test_a_reconnect_gets_what_it_missed_and_the_form_works_without_script(
    client: TestClient,
) -> None:
    page = resident_in_line(client)
    for n in range(3):
        sent = client.post(page + "/say", data={"text": f"bericht {n}"}, follow_redirects=False)
        assert sent.status_code == 303
    shown = client.get(page)
    assert all(f"bericht {n}" in shown.text for n in range(3))
    with client.websocket_connect(page + "/ws?after=1") as resident:
        assert resident.receive_json()["type"] == "state"
        missed = [frames_until(resident, "message")["seq"] for _ in range(2)]
        assert missed == [2, 3]  # only what this browser did not have yet
    transcript = client.get(page + "/transcript")
    assert transcript.headers["content-disposition"].startswith("attachment")
    assert transcript.text.splitlines() == ["U: bericht 0", "U: bericht 1", "U: bericht 2"]


def test_after_the_end_the_messages_are_gone_everywhere(client: TestClient, tmp_path: Path) -> None:
    page = resident_in_line(client)
    client.post(page + "/say", data={"text": CANARY})
    ended = client.post(page + "/end", follow_redirects=False)
    assert ended.status_code == 303
    conversations = services(client).conversations

    def purge() -> Any:
        return client.portal.call(conversations.purge_expired)  # type: ignore[union-attr]

    purge()
    rows = client.portal.call(  # type: ignore[union-attr]
        conversations.db.run,
        lambda conn: conn.execute(text("SELECT count(*) FROM chat_messages")).scalar(),
    )
    assert rows == 0
    assert client.get(page + "/transcript").status_code == 409
    refused = client.post(page + "/say", data={"text": "nog iets"})
    assert refused.status_code == 409
    assert refused.headers["content-type"] == "application/problem+json"
    raw = b"".join(p.read_bytes() for p in (tmp_path / "data").rglob("*") if p.is_file())
    assert CANARY.encode() not in raw


def test_sockets_refuse_strangers(client: TestClient) -> None:
    page = resident_in_line(client)
    conversation_id = page.rsplit("/", 1)[1]
    from starlette.websockets import WebSocketDisconnect

    with pytest.raises(WebSocketDisconnect) as unknown:
        with client.websocket_connect("/comm/chat/c/nonexistent/ws") as ws:
            ws.receive_json()
    assert unknown.value.code == 4404
    # The agent's socket needs a logged-in agent holding the conversation, from our origin.
    with pytest.raises(WebSocketDisconnect) as anonymous:
        with client.websocket_connect(
            f"/agent/default/c/{conversation_id}/chat", headers={"origin": PUBLIC}
        ) as ws:
            ws.receive_json()
    assert anonymous.value.code == 4403
    agent_holding(client, page)
    with pytest.raises(WebSocketDisconnect) as foreign:
        with client.websocket_connect(
            f"/agent/default/c/{conversation_id}/chat", headers={"origin": "https://evil.example"}
        ) as ws:
            ws.receive_json()
    assert foreign.value.code == 4403


def test_another_channel_has_no_chat(client: TestClient) -> None:
    """The demo channel's queue rules say "chat" too; only the chat plugin has a chat."""
    page = resident_in_line(client, "demo")
    conversation_id = agent_holding(client, page)
    panel = client.get(f"/agent/default/c/{conversation_id}")
    assert panel.status_code == 200 and 'id="chat"' not in panel.text
    from starlette.websockets import WebSocketDisconnect

    with pytest.raises(WebSocketDisconnect) as refused:
        with client.websocket_connect(
            f"/agent/default/c/{conversation_id}/chat", headers={"origin": PUBLIC}
        ) as ws:
            ws.receive_json()
    assert refused.value.code == 4404


def test_the_agents_socket_closes_when_the_chat_is_transferred_away(client: TestClient) -> None:
    from starlette.websockets import WebSocketDisconnect

    page = resident_in_line(client)
    conversation_id = agent_holding(client, page)
    with client.websocket_connect(
        f"/agent/default/c/{conversation_id}/chat", headers={"origin": PUBLIC}
    ) as agent:
        assert agent.receive_json()["type"] == "state"
        panel = client.get(f"/agent/default/c/{conversation_id}")
        moved = client.post(
            f"/agent/default/c/{conversation_id}/transfer",
            data={"csrf": field(panel.text, "csrf"), "target": "general"},
            follow_redirects=False,
        )
        assert moved.status_code == 303
        with pytest.raises(WebSocketDisconnect) as gone:
            for _ in range(10):
                agent.receive_json()
        assert gone.value.code == 4404  # the browser goes back to the console
    with client.websocket_connect(page + "/ws") as resident:  # back in line (or offered again)
        assert resident.receive_json()["state"] in ("waiting", "offered")


def test_the_agent_answers_without_script(client: TestClient) -> None:
    """The console's chat form posts to ``/say`` (not taken by the generic action route)."""
    page = resident_in_line(client)
    conversation_id = agent_holding(client, page)
    panel = client.get(f"/agent/default/c/{conversation_id}")
    sent = client.post(
        f"/agent/default/c/{conversation_id}/say",
        data={"csrf": field(panel.text, "csrf"), "text": "Zonder script: " + CANARY},
        follow_redirects=False,
    )
    assert sent.status_code == 303, sent.text
    assert CANARY in client.get(page).text  # the resident sees it
