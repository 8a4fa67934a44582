"""The SMS gateway client, against a real HTTP receiver: what it sends, and that a refusal or
an unreachable gateway is a clear error that carries neither the number nor the text."""

from __future__ import annotations

import logging
from pathlib import Path

import httpx
import pytest

from idcontact.errors import BadRequestError, ConfigError
from idcontact.phone.sms import SmsFailedError, SmsGateway, mobile_number
from idcontact.settings import Sms
from tests.flows._servers import free_port
from tests.live import receiving

pytestmark = pytest.mark.anyio

NUMBER = "06 1234 5678"
TOKEN = "sms-gateway-token-that-stays-secret"
TEXT = "Gemeente: identificeer u via https://example/code?code=123456"


@pytest.mark.parametrize(
    ("typed", "sent"),
    [
        ("06-12345678", "+31612345678"),
        ("(06) 1234 5678", "+31612345678"),
        ("+32 470 12 34 56", "+32470123456"),
        ("0044 7700 900123", "+447700900123"),
    ],
)
def test_numbers_are_sent_in_international_form(typed: str, sent: str) -> None:
    assert mobile_number(typed) == sent


@pytest.mark.parametrize(
    "typed", ["", "12345", "020-1234567", "+0612345678", "06123456789", "call me"]
)
def test_other_numbers_are_refused_without_an_echo(typed: str) -> None:
    with pytest.raises(BadRequestError) as refused:
        mobile_number(typed)
    assert typed.strip() == "" or typed not in str(refused.value.detail)


async def test_the_gateway_gets_number_sender_and_text_with_its_token(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    with receiving(status=202) as gateway:
        config = Sms(url=gateway.url, token=TOKEN, sender="Arnhem")
        async with httpx.AsyncClient() as http:
            sms = SmsGateway(http, config)
            await sms.send(NUMBER, TEXT)
            gateway.status = 500
            with pytest.raises(SmsFailedError):
                await sms.send(NUMBER, TEXT)
        headers, body = gateway.received[0]
    assert body == {"to": "+31612345678", "from": "Arnhem", "text": TEXT}
    assert headers["authorization"] == f"Bearer {TOKEN}"
    keys = {h["idempotency-key"] for h, _ in gateway.received}
    assert len(keys) == 2  # each message its own key: a retry by the agent is a new message
    logged = "\n".join(r.getMessage() + str(r.__dict__) for r in caplog.records)
    assert "5678" not in logged and TEXT not in logged and TOKEN not in logged


async def test_an_unreachable_gateway_is_a_clear_error() -> None:
    config = Sms(url=f"http://127.0.0.1:{free_port()}/sms", token=TOKEN, timeout=2)
    async with httpx.AsyncClient() as http:
        with pytest.raises(SmsFailedError) as failed:
            await SmsGateway(http, config).send(NUMBER, TEXT)
    assert failed.value.status == 502 and "read the code out" in failed.value.title


def test_the_token_file_must_be_readable(tmp_path: Path) -> None:
    config = Sms(url="https://sms.example/send", token_file=tmp_path / "missing")
    with pytest.raises(ConfigError, match=r"phone\.sms\.token_file: cannot be read"):
        SmsGateway(httpx.AsyncClient(), config)
    with pytest.raises(ValueError, match="exactly one of token and token_file"):
        Sms(url="https://sms.example/send")
