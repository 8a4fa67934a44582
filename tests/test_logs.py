"""The JSON log at DEBUG, as an operator's collector receives it: a whole conversation
(identify, wait, ask to be called back, chat with an agent who reads the data, end) leaves
no attribute, token, phone number or chat text in it, and every line about the conversation
carries its correlation id."""

from __future__ import annotations

import io
import json
import logging
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest

from idcontact.app import create_app
from idcontact.logs import JsonFormatter, TextFormatter, setup_logging
from tests.conftest import CANARY_BSN, CANARY_NAME, PUBLIC, demo_settings
from tests.plugins.test_chat import agent_holding, frames_until, resident_in_line

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from starlette.testclient import TestClient

CHAT_CANARY = "Canary-Chat-Log-7Hq3"
PHONE_CANARY = "+31 6 1357 9024"


@pytest.fixture
def json_log() -> Iterator[io.StringIO]:
    """Every logger at DEBUG into one JSON stream, the way ``serve`` sets it up."""
    root = logging.getLogger()
    saved = (root.handlers[:], root.level)
    stream = io.StringIO()
    setup_logging("DEBUG")
    root.handlers[0].setStream(stream)  # type: ignore[attr-defined]
    try:
        yield stream
    finally:
        root.handlers[:], root.level = saved
        logging.getLogger("uvicorn.access").disabled = False


def test_a_whole_conversation_at_debug_logs_no_personal_data(
    json_log: io.StringIO, tmp_path: Path
) -> None:
    app = create_app(demo_settings(tmp_path))
    with TestClient(app, base_url=PUBLIC) as client:
        page = resident_in_line(client)
        conversation_id = page.rsplit("/", 1)[1]
        asked = client.post(
            page + "/callback", data={"number": PHONE_CANARY}, follow_redirects=False
        )
        assert asked.status_code == 303
        with client.websocket_connect(page + "/ws") as resident:
            resident.send_json({"type": "message", "text": CHAT_CANARY})
            assert CHAT_CANARY in frames_until(resident, "message")["text"]
        agent_holding(client, page)
        panel = client.get(f"/agent/default/c/{conversation_id}")
        assert CANARY_NAME in panel.text  # the agent did read the data
        ended = client.post(page + "/end", follow_redirects=False)
        assert ended.status_code == 303
        bad = client.post(
            "/comm/chat/attr/x", content=b"bad.token", headers={"Content-Type": "application/jwt"}
        )
        assert bad.status_code in (400, 404)

    lines = [json.loads(line) for line in json_log.getvalue().splitlines()]
    assert any(entry["level"] == "DEBUG" for entry in lines)  # DEBUG really was on
    text = json_log.getvalue()
    digits = "".join(c for c in PHONE_CANARY if c.isdigit())
    for canary in (CANARY_NAME, CANARY_BSN, CHAT_CANARY, PHONE_CANARY, digits, "result="):
        assert canary not in text, canary
    # The conversation is traceable through its requests, by its id alone.
    about = [e for e in lines if e.get("conversation") == conversation_id]
    routes = {e.get("route") for e in about if e["logger"] == "idcontact.access"}
    assert {
        "/comm/chat/c/{conversation_id}/callback",
        "/comm/chat/c/{conversation_id}/end",
    } <= routes
    assert all(e["cid"] != "-" for e in about)


def test_text_format_carries_the_same_ids_and_no_exception_messages() -> None:
    record = logging.makeLogRecord({"msg": "failed", "levelname": "ERROR", "name": "x"})
    try:
        raise ValueError("Canary-In-Exception")
    except ValueError as exc:
        record.exc_info = (type(exc), exc, exc.__traceback__)
    line = TextFormatter().format(record)
    assert "failed" in line and "Canary-In-Exception" not in line
    entry = json.loads(JsonFormatter().format(record))
    assert entry["exc_type"] == "ValueError" and "Canary-In-Exception" not in json.dumps(entry)


def test_each_request_has_its_own_correlation_id_in_the_header_and_its_log_lines(
    json_log: io.StringIO, tmp_path: Path
) -> None:
    with TestClient(create_app(demo_settings(tmp_path)), base_url=PUBLIC) as client:
        ids = [client.get("/session_options").headers["x-request-id"] for _ in range(50)]
    assert all(len(i) == 16 and int(i, 16) >= 0 for i in ids)
    assert len(set(ids)) == 50
    access = [
        json.loads(line)
        for line in json_log.getvalue().splitlines()
        if '"idcontact.access"' in line
    ]
    assert [e["cid"] for e in access if e.get("route") == "/session_options"] == ids
