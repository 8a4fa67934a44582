"""Per tenant: a chat's transcript is deleted with the conversation, or first handed over (the
webhook plugin, to a real HTTP receiver); a failing receiver loses nothing and the hand-over is
retried; after the retry window the data is destroyed anyway."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text

from idcontact.app import create_app
from idcontact.errors import ConfigError
from idcontact.settings import Settings
from tests.conftest import CANARY_BSN, CANARY_NAME, PUBLIC, demo_settings
from tests.live import Receiver, receiving
from tests.plugins.test_chat import TestClient, resident_in_line, services

CANARY = "Canary-Transcript-Text-3Rv8"
TOKEN = "receiver-token-which-must-stay-secret"


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with receiving() as r:
        yield r


class Clock:
    def __init__(self) -> None:
        import time

        self.now = time.time()

    def __call__(self) -> float:
        return self.now


def hand_over_settings(tmp_path: Path, url: str, **extra: Any) -> Settings:
    return demo_settings(
        tmp_path,
        transcripts={
            "keep": "hand_over",
            "plugin": "webhook",
            "settings": {"url": url, "token": TOKEN},
            **extra,
        },
    )


def count(client: TestClient, table: str) -> int:
    db = services(client).conversations.db
    query = text(f"SELECT count(*) FROM {table}")  # noqa: S608 - fixed table names
    return int(
        client.portal.call(  # type: ignore[union-attr]
            db.run, lambda conn: conn.execute(query).scalar()
        )
    )


def ended_chat(client: TestClient) -> str:
    page = resident_in_line(client)
    client.post(page + "/say", data={"text": CANARY})
    client.post(page + "/say", data={"text": "tweede bericht"})
    assert client.post(page + "/end", follow_redirects=False).status_code == 303
    return page.rsplit("/", 1)[1]


def sweep(client: TestClient) -> int:
    """One pass of the sweeper: hand-overs first, then the purge."""
    keeper = services(client).hand_overs["default"]
    handed: int = client.portal.call(keeper.run)  # type: ignore[union-attr]
    client.portal.call(services(client).conversations.purge_expired)  # type: ignore[union-attr]
    return handed


def data_files(tmp_path: Path) -> bytes:
    return b"".join(p.read_bytes() for p in (tmp_path / "data").rglob("*") if p.is_file())


def test_a_failing_receiver_loses_nothing_and_a_retry_hands_over(
    tmp_path: Path, receiver: Receiver, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    app = create_app(hand_over_settings(tmp_path, receiver.url))
    with TestClient(app, base_url=PUBLIC) as client:
        conversation_id = ended_chat(client)
        assert sweep(client) == 0  # the receiver answers 500
        assert len(receiver.received) == 1
        # Kept, sealed: the conversation has ended for everyone, its data waits.
        conversation = client.portal.call(  # type: ignore[union-attr]
            services(client).conversations.get, conversation_id
        )
        assert conversation.state == "ended"
        assert count(client, "chat_messages") == 2 and count(client, "vault_entries") == 1
        assert any("hand-over failed" in r.getMessage() for r in caplog.records)

        receiver.status = 201
        assert sweep(client) == 1
        headers, body = receiver.received[-1]
        assert headers["authorization"] == f"Bearer {TOKEN}"
        assert headers["idempotency-key"] == conversation_id
        assert body["conversation"] == conversation_id and body["purpose"] == "report_move"
        assert [m["text"] for m in body["messages"]] == [CANARY, "tweede bericht"]
        assert [m["from"] for m in body["messages"]] == ["resident", "resident"]
        assert body["identified"] is True
        assert body["attributes"] == {"fullname": CANARY_NAME, "bsn": CANARY_BSN}
        assert body["provenance"]["method"] == "demo"
        # Handed over once: now deleted, and the next pass sends nothing more.
        assert count(client, "chat_messages") == 0 and count(client, "vault_entries") == 0
        assert sweep(client) == 0 and len(receiver.received) == 2
        conversation = client.portal.call(  # type: ignore[union-attr]
            services(client).conversations.get, conversation_id
        )
        assert conversation.state == "purged"
    logs = "\n".join(f"{r.getMessage()} {r.__dict__}" for r in caplog.records)
    for secret in (CANARY, CANARY_NAME, CANARY_BSN, TOKEN):
        assert secret not in logs
    raw = data_files(tmp_path)
    for canary in (CANARY, CANARY_NAME, CANARY_BSN):
        assert canary.encode() not in raw


def test_after_the_retry_window_the_data_is_destroyed_anyway(
    tmp_path: Path, receiver: Receiver, caplog: pytest.LogCaptureFixture
) -> None:
    clock = Clock()
    app = create_app(hand_over_settings(tmp_path, receiver.url, retry_hours=2), clock=clock)
    with TestClient(app, base_url=PUBLIC) as client:
        ended_chat(client)
        clock.now += 3600
        sweep(client)
        assert count(client, "chat_messages") == 2  # still within the window
        clock.now += 3601
        sweep(client)
        assert count(client, "chat_messages") == 0 and count(client, "vault_entries") == 0
    assert any("not handed over in time" in r.getMessage() for r in caplog.records)
    assert CANARY.encode() not in data_files(tmp_path)


def test_an_idle_chat_is_handed_over_too(tmp_path: Path, receiver: Receiver) -> None:
    """The sweeper ends a chat whose resident went away: its messages are handed over first."""
    receiver.status = 200
    clock = Clock()
    app = create_app(hand_over_settings(tmp_path, receiver.url), clock=clock)
    with TestClient(app, base_url=PUBLIC) as client:
        page = resident_in_line(client)
        client.post(page + "/say", data={"text": CANARY})
        clock.now += 3 * 3600  # past idle time and retention
        sweep(client)  # ends it, keeping the data for the hand-over
        assert count(client, "chat_messages") == 1 and not receiver.received
        assert sweep(client) == 1
        assert receiver.received[0][1]["messages"][0]["text"] == CANARY
        assert count(client, "chat_messages") == 0


def test_the_default_deletes_at_the_end(tmp_path: Path) -> None:
    app = create_app(demo_settings(tmp_path))
    with TestClient(app, base_url=PUBLIC) as client:
        ended_chat(client)
        assert services(client).hand_overs == {}
        assert count(client, "chat_messages") == 0


def test_bad_settings_stop_the_start_without_the_token(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"transcripts: plugin: .*needs a hand-over plugin"):
        demo_settings(tmp_path, transcripts={"keep": "hand_over"})
    with pytest.raises(ConfigError, match="no hand-over plugin named 'nope'"):
        create_app(
            demo_settings(
                tmp_path, transcripts={"keep": "hand_over", "plugin": "nope", "settings": {}}
            )
        )
    with pytest.raises(ConfigError) as bad:
        create_app(hand_over_settings(tmp_path, "ftp://archive.example"))
    assert "transcripts.settings.url" in str(bad.value) and TOKEN not in str(bad.value)
    with pytest.raises(ConfigError) as missing:
        create_app(
            demo_settings(
                tmp_path,
                transcripts={"keep": "hand_over", "plugin": "webhook", "settings": {"tok": TOKEN}},
            )
        )
    assert "url" in str(missing.value) and TOKEN not in str(missing.value)
