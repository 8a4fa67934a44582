"""What every comm plugin of ours does the same way: routes, and starting an identification
from within a conversation."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import httpx
from fastapi import APIRouter, Request

from idcontact.conversations import Conversations
from idcontact.errors import (
    IdContactError,
    PluginError,
    PluginTimeoutError,
    UnknownPurposeError,
    UnsupportedMediaTypeError,
)
from idcontact.keys import JoseKey
from idcontact.settings import Purpose, Tenant
from idcontact.tokens import ReceivedToken, sign_jwt

log = logging.getLogger(__name__)

START_SECONDS = 300
"""How long a signed auth-only start request is valid (as in the original)."""


def purpose_of(tenant: Tenant, tag: str) -> Purpose:
    """The tenant's purpose ``tag``, or 400 unknown-purpose."""
    purpose = tenant.purpose(tag)
    if purpose is None:
        raise UnknownPurposeError()
    return purpose


def add_attr_route(router: APIRouter, conversations: Conversations) -> None:
    """``POST /attr/{slot}``: out-of-band delivery of an attribute token, exactly once."""

    @router.post("/attr/{slot}", openapi_extra=JWT_BODY)
    async def receive_attributes(request: Request, slot: str) -> dict[str, str]:
        """Out-of-band delivery of an attribute token (``application/jwt``)."""
        state = await conversations.deliver_to_slot(slot, await jwt_body(request))
        return {"state": state}


class LocalSlots:
    """The attr_url slots this process serves itself (its comm plugins' ``/attr/{slot}``).

    An auth plugin of the same process hands its result to one directly: no token is made and
    verified again and no HTTP hop is taken, because the token protects a result on its way
    between processes and this one never leaves. It is accepted exactly as a posted token
    would be; remote slots still get the token over HTTP.
    """

    def __init__(self) -> None:
        self._by_base: dict[str, Conversations] = {}

    def add(self, internal_base: str, conversations: Conversations) -> None:
        self._by_base[f"{internal_base}/attr/"] = conversations

    async def hand_over(self, attr_url: str, received: ReceivedToken) -> bool:
        """Deliver to ``attr_url`` if this process serves it; ``False`` if it does not. A
        refusal is logged and swallowed, as the HTTP delivery's answer is (the original
        ignores it): the browser goes on to the continuation either way."""
        for base, conversations in self._by_base.items():
            slot = attr_url[len(base) :] if attr_url.startswith(base) else ""
            if slot and "/" not in slot and "?" not in slot:
                try:
                    await conversations.deliver_to_slot(slot, received)
                except IdContactError as exc:
                    log.warning("attr_url refused a result", extra={"plugin_status": exc.status})
                except Exception:
                    log.exception("attr_url failed to take a result")
                return True
        return False


JWT_BODY: dict[str, object] = {
    "requestBody": {
        "required": True,
        "content": {"application/jwt": {"schema": {"type": "string"}}},
    }
}
"""``openapi_extra`` of a route that takes a token as its body."""


async def jwt_body(request: Request) -> str:
    """The token a request carries as ``application/jwt`` (415 for anything else)."""
    media = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media != "application/jwt":
        raise UnsupportedMediaTypeError("Send the token as application/jwt")
    return (await request.body()).decode("ascii", errors="replace").strip()


class AuthOnlyStarter:
    """Starts an identification for a resident who is already in a conversation (§4.3): the
    channel signs a StartRequestAuthOnly with its requestor key (``kid`` in the header, so the
    core picks the verifying key) and posts it to the core, which answers the ``client_url``
    the resident's browser goes to. The core never calls the channel back in this flow: the
    auth plugin delivers the attributes to ``attr_url`` and sends the browser to ``comm_url``.
    """

    def __init__(
        self,
        http: httpx.AsyncClient,
        start_url: str,
        key: JoseKey,
        kid: str,
        *,
        timeout: float = 5.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._http = http
        self._start_url = start_url
        self._key = key
        self._kid = kid
        self._timeout = timeout
        self._clock = clock

    async def start(
        self, *, purpose: str, auth_method: str, comm_url: str, attr_url: str | None
    ) -> str:
        """The ``client_url`` of the auth plugin's session; the core's refusal as an error."""
        now = int(self._clock())
        request: dict[str, object] = {
            "purpose": purpose,
            "auth_method": auth_method,
            "comm_url": comm_url,
        }
        if attr_url is not None:
            request["attr_url"] = attr_url
        token = sign_jwt(
            {"request": request, "iat": now, "exp": now + START_SECONDS}, self._key, kid=self._kid
        )
        try:
            response = await self._http.post(
                self._start_url,
                content=token,
                headers={"Content-Type": "application/jwt", "Accept": "application/json"},
                timeout=self._timeout,
            )
        except httpx.TimeoutException:
            raise PluginTimeoutError("The core did not answer in time") from None
        except httpx.HTTPError:
            raise PluginError("The core could not be reached") from None
        try:
            data = response.json() if response.status_code == 200 else None
        except ValueError:
            data = None
        client_url = data.get("client_url") if isinstance(data, dict) else None
        if not isinstance(client_url, str):
            raise PluginError(
                f"The core refused the identification (status {response.status_code})"
            )
        return client_url


class SessionFeedback:
    """Session feedback to the auth plugin (protocol §4.5): when a token carried a
    ``session_url``, ``POST {session_url}?type=user_active`` on the resident's activity (at
    most once a minute) and ``type=logout`` when they log out. Server-side, no cookies; the
    answer is ignored and a failure never reaches the resident."""

    MAX_CACHED = 10_000

    def __init__(
        self,
        http: httpx.AsyncClient,
        conversations: Conversations,
        actor: str,
        *,
        interval: float = 60.0,
        timeout: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._http = http
        self._conversations = conversations
        self._actor = actor
        self._interval = interval
        self._timeout = timeout
        self._clock = clock
        # conversation id → (session_url or None, when user_active was last sent)
        self._known: dict[str, tuple[str | None, float]] = {}

    async def _url(self, conversation_id: str) -> tuple[str | None, float]:
        known = self._known.get(conversation_id)
        if known is None:
            # Most conversations have no session: a plain read says so, without opening (and
            # auditing a read of) the attributes.
            data = None
            if (await self._conversations.get(conversation_id)).has_session:
                data = await self._conversations.attributes(conversation_id, actor=self._actor)
            url = data.get("session_url") if data else None
            known = (url if isinstance(url, str) else None, float("-inf"))
            if len(self._known) >= self.MAX_CACHED:
                self._known.pop(next(iter(self._known)))
            self._known[conversation_id] = known
        return known

    def forget(self, conversation_id: str) -> None:
        """New attributes (or none): read the session_url again next time."""
        self._known.pop(conversation_id, None)

    async def active(self, conversation_id: str) -> None:
        url, last = await self._url(conversation_id)
        now = self._clock()
        if url is None or now - last < self._interval:
            return
        self._known[conversation_id] = (url, now)
        await self._send(url, "user_active")

    async def logout(self, conversation_id: str) -> None:
        url, _ = await self._url(conversation_id)
        self.forget(conversation_id)
        if url is not None:
            await self._send(url, "logout")

    async def _send(self, url: str, kind: str) -> None:
        try:
            response = await self._http.post(url, params={"type": kind}, timeout=self._timeout)
        except httpx.HTTPError:
            log.warning("session feedback not delivered", extra={"feedback": kind})
            return
        if response.status_code >= 300:
            log.warning(
                "session feedback refused",
                extra={"feedback": kind, "plugin_status": response.status_code},
            )
