"""Texting a caller the link to identify during their call, through the tenant's SMS gateway.

The number is the one the caller tells the agent: it goes to the gateway and nowhere else
(never logged, never stored). The gateway gets JSON ``{"to", "from", "text"}`` with a bearer
token; a gateway with another API sits behind a small relay, or replaces :class:`SmsGateway`.
"""

from __future__ import annotations

import logging
import re
import uuid

import httpx

from idcontact.errors import BadRequestError, IdContactError
from idcontact.settings import Sms

log = logging.getLogger(__name__)


class SmsFailedError(IdContactError):
    status = 502
    slug = "sms-failed"
    title = "The text message could not be sent; read the code out instead"


def mobile_number(text: str) -> str:
    """The number in international form (``+316…``): a Dutch ``06`` number, or any number
    with a country code (``+`` or ``00``). Anything else is refused, with no echo of it."""
    digits = re.sub(r"[\s().-]", "", text)
    if re.fullmatch(r"06\d{8}", digits):
        return "+31" + digits[1:]
    if digits.startswith("00"):
        digits = "+" + digits[2:]
    if re.fullmatch(r"\+[1-9]\d{7,14}", digits):
        return digits
    raise BadRequestError("That is no mobile number: use 06… or +<country code>…")


class SmsGateway:
    """One tenant's gateway (``[phone.sms]``)."""

    def __init__(self, http: httpx.AsyncClient, config: Sms, *, where: str = "phone.sms") -> None:
        self._http = http
        self._config = config
        self._headers = {"Authorization": f"Bearer {config.read_token(where)}"}

    async def send(self, to: str, text: str) -> None:
        """Send once (an ``Idempotency-Key`` lets the gateway drop a repeat); a failure is
        raised for the agent to see and logged without the number or the text."""
        body = {"to": mobile_number(to), "from": self._config.sender, "text": text}
        headers = {**self._headers, "Idempotency-Key": str(uuid.uuid4())}
        try:
            response = await self._http.post(
                self._config.url, json=body, headers=headers, timeout=self._config.timeout
            )
        except httpx.HTTPError as exc:
            log.warning("SMS gateway unreachable", extra={"reason": type(exc).__name__})
            raise SmsFailedError() from None
        if not 200 <= response.status_code < 300:
            log.warning("SMS gateway refused", extra={"status": response.status_code})
            raise SmsFailedError()
