"""The ``yivi`` auth plugin: the resident discloses from the Yivi app exactly the attributes the
topic needs.

Our attribute tags map to IRMA attribute ids in the plugin's configuration; a tag lists
alternatives (any one will do), and an alternative of several ids is joined with spaces
(first names + family name). The request asks one disjunction per tag, labelled in Dutch and
English. The page shows a QR code (rendered here) and a link that opens the app on a phone,
and follows the session live. **Every session uses a pairing code**: the app shows four
digits that the resident types on the page. A user agent cannot tell reliably whether the
app runs on the same device, and a session without pairing can be relayed to a victim's
phone (relay phishing), so we never skip it.

A ``tel:`` continuation (a phone call) goes to the app as ``clientReturnUrl``: after the
disclosure the app offers to call the municipality with the link code. The browser then
says "your phone will call" and never shows the code. Failure (cancel, timeout, missing
attributes, an invalid proof, an unreachable server) is a page with "try again" and "choose
another way", never an error.
"""

from __future__ import annotations

import base64
import contextlib
import hmac
import json
import logging
import re
import secrets
import time
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, ClassVar
from urllib.parse import quote

from fastapi import APIRouter, Form, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response, StreamingResponse
from joserfc.jwk import OctKey, RSAKey
from pydantic import BaseModel, ConfigDict, Field, SecretStr, model_validator

from idcontact.agents.credentials import qr_svg
from idcontact.errors import ConfigError, NotFoundError
from idcontact.irma.backends import Backend, BackendError, BuiltinBackend, RemoteBackend
from idcontact.irma.client import FINAL, RequestorClient, Started
from idcontact.irma.requestors import HOST_PATTERN
from idcontact.keys import KeyConfig
from idcontact.plugins.auth.common import (
    ClientUrl,
    StartAuthRequest,
    check_keys,
    check_provides,
    deliver,
    plugin_settings,
    provenance,
)
from idcontact.plugins.base import Kind, PluginContext
from idcontact.tokens import AuthResult
from idcontact.web.demo_wallet import demo_wallet_link
from idcontact.web.pages import TOKEN_PAGE_HEADERS, language, render
from idcontact.web.routing import Router

log = logging.getLogger(__name__)

DISCLOSURE_CONTEXT = "https://irma.app/ld/request/disclosure/v2"
UNIVERSAL_LINK = "https://open.yivi.app/-/session#"
PAIRING_TRIES = 3
PENDING_LIFETIME = 15 * 60
MAX_PENDING = 10_000
ATTRIBUTE_ID = r"^[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+$"

Alternative = list[str]


class YiviConfig(BaseModel):
    """``[plugins.auth.<tag>]`` of a method with ``plugin = "yivi"``."""

    model_config = ConfigDict(extra="forbid", frozen=True, hide_input_in_errors=True)

    server: str = "builtin"
    """``builtin``: this process's IRMA server (``[irma]``); else the URL of an IRMA server's
    requestor API (the Go ``irma server``)."""
    requestor: str = "idcontact"
    """Our name at that server (``iss`` of JWT requests)."""
    token: SecretStr | None = None
    hmac_key: SecretStr | None = None
    jwt_key: KeyConfig | None = None
    result_key: KeyConfig | None = None
    """The server's public key: results are read as ``result-jwt`` and verified with it."""
    attributes: dict[str, list[str | Alternative]] = Field(default_factory=dict)
    app_timeout: int = Field(default=300, ge=30, le=900)
    host: str | None = Field(default=None, pattern=f"^{HOST_PATTERN}$")
    """This municipality's requestor host name, registered with Yivi, so the app names it as a
    verified requestor; its DNS must reach the IRMA server (the Go server: ``host_perms``)."""

    @model_validator(mode="after")
    def _check(self) -> YiviConfig:
        for tag, alternatives in self.attributes.items():
            if not alternatives:
                raise ValueError(f"attributes.{tag}: list at least one IRMA attribute")
            for alternative in alternatives:
                ids = [alternative] if isinstance(alternative, str) else alternative
                if not ids or not all(re.match(ATTRIBUTE_ID, i) for i in ids):
                    raise ValueError(f"attributes.{tag}: scheme.issuer.credential.attribute ids")
        if self.server != "builtin":
            if not self.server.startswith(("http://", "https://")):
                raise ValueError("server: 'builtin' or the http(s) URL of an IRMA server")
            given = [x for x in (self.token, self.hmac_key, self.jwt_key) if x is not None]
            if len(given) != 1:
                raise ValueError("server: set exactly one of token, hmac_key and jwt_key")
            if self.result_key is None:
                raise ValueError("result_key: the server's public key, to verify its results")
        return self

    def alternatives(self, tag: str) -> list[list[str]]:
        return [[a] if isinstance(a, str) else list(a) for a in self.attributes[tag]]


@dataclass
class Pending:
    """One resident's Yivi flow, kept here (the IRMA sessions are in memory too)."""

    start: StartAuthRequest
    started: Started
    created: float
    lang: str
    pairing_code: str = ""
    tries: int = 0
    done: str | None = None
    """Where the browser went after a success (a second visit goes there again)."""
    problem: str | None = None


class YiviAuthPlugin:
    kind: ClassVar[Kind] = "auth"

    def __init__(
        self,
        ctx: PluginContext,
        config: dict[str, Any],
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        check_keys(ctx, "yivi")
        self._config = plugin_settings(YiviConfig, ctx, config)
        check_provides(ctx, self._config.attributes)
        self._ctx = ctx
        self._clock = clock
        self._backend = self._make_backend()
        self._pending: dict[str, Pending] = {}

    def _make_backend(self) -> Backend:
        config, ctx = self._config, self._ctx
        if config.server == "builtin":
            if ctx.irma is None:
                raise ConfigError(
                    f"plugins.auth.{ctx.method.tag}.server: 'builtin' needs [irma] enabled = true"
                )
            return BuiltinBackend(ctx.irma, ctx.settings.public_url)
        auth: str | OctKey | RSAKey
        if config.token is not None:
            auth = config.token.get_secret_value()
        elif config.hmac_key is not None:
            auth = OctKey.import_key(base64.b64decode(config.hmac_key.get_secret_value()))
        else:
            key = config.jwt_key.load() if config.jwt_key else None
            if not isinstance(key, RSAKey):
                raise ConfigError(f"plugins.auth.{ctx.method.tag}.jwt_key: an RSA private key")
            auth = key
        result_key = config.result_key.load() if config.result_key else None
        if not isinstance(result_key, RSAKey):
            raise ConfigError(f"plugins.auth.{ctx.method.tag}.result_key: an RSA public key")
        client = RequestorClient(
            ctx.http, config.server, auth, name=config.requestor, result_key=result_key
        )
        return RemoteBackend(client, ctx.http)

    async def ready(self) -> bool:
        """Whether the IRMA server is reachable (``/readyz``); the built-in one is ourselves."""
        if isinstance(self._backend, RemoteBackend):
            return await self._backend.client.reachable()
        return True

    # -- the request ----------------------------------------------------------------------

    def request(self, tags: list[str], continuation: str) -> dict[str, Any]:
        """The con-dis-con request: one disjunction per tag, labelled with its name."""
        tenant = self._ctx.tenant
        disclose = [self._config.alternatives(t) for t in tags]
        labels = {
            str(i): {"nl": tenant.attribute_label(t, "nl"), "en": tenant.attribute_label(t, "en")}
            for i, t in enumerate(tags)
        }
        body: dict[str, Any] = {
            "@context": DISCLOSURE_CONTEXT,
            "disclose": [[list(c) for c in d] for d in disclose],
            "labels": labels,
        }
        if self._config.host is not None:
            body["host"] = self._config.host
        if continuation.startswith("tel:"):
            # The app offers to call with the code; never augmented (that would append a token).
            body["clientReturnUrl"] = continuation
            body["augmentReturnUrl"] = False
        return body

    def attributes(self, tags: list[str], result: Mapping[str, Any]) -> dict[str, str]:
        """Each tag's value from the disclosed conjunction (values joined by spaces)."""
        disclosed = result.get("disclosed")
        if not isinstance(disclosed, list) or len(disclosed) != len(tags):
            raise BackendError("the result does not follow the request")
        values: dict[str, str] = {}
        for tag, conjunction in zip(tags, disclosed, strict=True):
            parts = [
                str(a.get("rawvalue"))
                for a in conjunction
                if isinstance(a, dict) and a.get("rawvalue") is not None
            ]
            if not parts:
                raise BackendError("an attribute is missing from the result")
            values[tag] = " ".join(parts)
        return values

    def provenance(self, result: Mapping[str, Any]) -> dict[str, str]:
        """Issuers, credential types and issuance dates, for the agent."""
        credentials: dict[str, int] = {}
        for conjunction in result.get("disclosed") or []:
            for a in conjunction if isinstance(conjunction, list) else []:
                if isinstance(a, dict) and isinstance(a.get("id"), str):
                    credentials[a["id"].rsplit(".", 1)[0]] = int(a.get("issuancetime") or 0)
        return provenance(
            self._ctx,
            issuer=", ".join(sorted({c.rsplit(".", 1)[0] for c in credentials})),
            credential=", ".join(
                f"{c} ({_date(t)})" if t else c for c, t in sorted(credentials.items())
            ),
        )

    # -- pending flows --------------------------------------------------------------------

    def _pending_of(self, flow: str) -> Pending:
        self._forget_old()
        pending = self._pending.get(flow)
        if pending is None:
            raise NotFoundError("This Yivi session is unknown or has ended")
        return pending

    def _forget_old(self) -> None:
        now = self._clock()
        for key, p in list(self._pending.items()):
            if now - p.created > PENDING_LIFETIME:
                del self._pending[key]

    async def _begin(self, start: StartAuthRequest, lang: str) -> str:
        self._forget_old()
        if len(self._pending) >= MAX_PENDING:
            raise BackendError("too many flows")
        request = self.request(start.attributes, start.continuation)
        started = await self._backend.start(request, app_timeout=self._config.app_timeout)
        pending = Pending(start, started, self._clock(), lang)
        # Pairing before the app can connect: the QR code and the app link both need it.
        pending.pairing_code = await self._backend.pairing(started)
        flow = secrets.token_urlsafe(18)
        self._pending[flow] = pending
        return flow

    # -- routes ---------------------------------------------------------------------------

    @property
    def router(self) -> APIRouter:
        router = Router(prefix=self._ctx.mount_path, tags=["auth plugin: yivi"])
        ctx = self._ctx

        @router.post("/start_authentication", response_model=ClientUrl)
        async def start_authentication(request: Request, body: StartAuthRequest) -> ClientUrl:
            """Start a Yivi disclosure of ``attributes``; answer where to send the browser."""
            body.check_for(self._config.attributes)
            lang = ctx.settings.default_language  # the page's ?lang= may change it
            try:
                flow = await self._begin(body, lang)
            except BackendError as exc:
                # The page says so (and offers another way); the core still gets a URL.
                log.warning("yivi: could not start a session", extra={"reason": str(exc)})
                flow = secrets.token_urlsafe(18)
                self._pending[flow] = Pending(
                    body, Started("", {}, {}), self._clock(), lang, problem="unreachable"
                )
            return ClientUrl(client_url=f"{ctx.public_base}/s/{flow}")

        @router.get("/s/{flow}", response_class=HTMLResponse)
        async def session_page(request: Request, flow: str) -> Response:
            pending = self._open(request, flow)
            if isinstance(pending, Response):
                return pending
            try:
                status = await self._backend.status(pending.started)
            except BackendError:
                pending.problem = "unreachable"
                return self._failure(request, flow, pending)
            if status in FINAL:
                return RedirectResponse(f"{ctx.public_base}/s/{flow}/done", status_code=303)
            return self._session_page(request, flow, pending, status)

        @router.get("/s/{flow}/events")
        async def events(flow: str) -> Response:
            """The session's status as server-sent events, for the page's script."""
            pending = self._pending_of(flow)
            if pending.problem is not None:
                return Response(status_code=204)

            async def stream() -> AsyncIterator[bytes]:
                try:
                    async for status in self._backend.statuses(pending.started):
                        yield f"data: {json.dumps({'status': status})}\n\n".encode()
                except BackendError:
                    yield b'data: {"status": "CANCELLED"}\n\n'

            return StreamingResponse(
                stream(),
                media_type="text/event-stream",
                headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
            )

        @router.post("/s/{flow}/pair", response_class=HTMLResponse)
        async def pair(request: Request, flow: str, code: str = Form(max_length=16)) -> Response:
            """The code the app shows, typed on this page: only then may the app go on."""
            pending = self._pending_of(flow)
            if pending.problem is not None or pending.done is not None:
                return RedirectResponse(f"{ctx.public_base}/s/{flow}", status_code=303)
            given = "".join(ch for ch in code if ch.isdigit())
            if pending.pairing_code and hmac.compare_digest(given, pending.pairing_code):
                try:
                    await self._backend.paired(pending.started)
                except BackendError:
                    pass  # the session moved on (cancelled, timed out): the page tells
                return RedirectResponse(f"{ctx.public_base}/s/{flow}", status_code=303)
            pending.tries += 1
            if pending.tries >= PAIRING_TRIES:
                pending.problem = "pairing"
                await self._cancel(pending)
                return self._failure(request, flow, pending)
            status = await self._status_or_cancelled(pending)
            return self._session_page(request, flow, pending, status, wrong_code=True)

        @router.get("/s/{flow}/done", response_class=HTMLResponse)
        async def done(request: Request, flow: str) -> Response:
            """The outcome: deliver the attributes and go on, or the failure page."""
            pending = self._open(request, flow)
            if isinstance(pending, Response):
                return pending
            try:
                status = await self._backend.status(pending.started)
                if status not in FINAL:
                    return RedirectResponse(f"{ctx.public_base}/s/{flow}", status_code=303)
                result = await self._backend.result(pending.started)
            except BackendError:
                pending.problem = "unreachable"
                return self._failure(request, flow, pending)
            outcome = _outcome(result)
            if outcome != "valid":
                pending.problem = outcome
                return self._failure(request, flow, pending)
            try:
                values = self.attributes(pending.start.attributes, result)
            except BackendError:
                pending.problem = "invalid"
                return self._failure(request, flow, pending)
            auth = AuthResult(
                status="success", attributes=values, provenance=self.provenance(result)
            )
            target = await deliver(ctx, auth, pending.start)
            if target.startswith("tel:"):
                # The app calls with the code; this browser never shows it.
                pending.done = f"{ctx.public_base}/s/{flow}/phone"
            else:
                pending.done = target
            return RedirectResponse(pending.done, status_code=303, headers=TOKEN_PAGE_HEADERS)

        @router.get("/s/{flow}/phone", response_class=HTMLResponse)
        async def phone(request: Request, flow: str) -> HTMLResponse:
            pending = self._pending_of(flow)
            if pending.done is None:
                raise NotFoundError("This Yivi session is unknown or has ended")
            return render(
                ctx.templates,
                request,
                "yivi_phone.html",
                {},
                tenant=ctx.tenant,
                lang=pending.lang,
            )

        @router.post("/s/{flow}/retry")
        async def retry(flow: str) -> Response:
            """A new Yivi session for the same request."""
            pending = self._pending_of(flow)
            if pending.done is not None:
                return RedirectResponse(pending.done, status_code=303, headers=TOKEN_PAGE_HEADERS)
            await self._cancel(pending)
            try:
                new = await self._begin(pending.start, pending.lang)
            except BackendError:
                pending.problem = "unreachable"
                return RedirectResponse(f"{ctx.public_base}/s/{flow}", status_code=303)
            del self._pending[flow]
            return RedirectResponse(f"{ctx.public_base}/s/{new}", status_code=303)

        @router.post("/s/{flow}/give_up")
        async def give_up(flow: str) -> Response:
            """Choose another way: the comm side learns that identifying failed."""
            pending = self._pending_of(flow)
            if pending.done is not None:
                return RedirectResponse(pending.done, status_code=303, headers=TOKEN_PAGE_HEADERS)
            await self._cancel(pending)
            target = await deliver(ctx, AuthResult(status="failed", attributes=None), pending.start)
            del self._pending[flow]
            if target.startswith("tel:"):
                target = f"{ctx.tenant.prefix}/"
            return RedirectResponse(target, status_code=303, headers=TOKEN_PAGE_HEADERS)

        return router

    def _open(self, request: Request, flow: str) -> Pending | Response:
        """The flow, or where it went: its next page once done, its failure page."""
        pending = self._pending_of(flow)
        if "lang" in request.query_params:
            pending.lang = language(request, self._ctx.settings)
        if pending.done is not None:
            return RedirectResponse(pending.done, status_code=303, headers=TOKEN_PAGE_HEADERS)
        if pending.problem is not None:
            return self._failure(request, flow, pending)
        return pending

    async def _cancel(self, pending: Pending) -> None:
        """Stop the flow's IRMA session, if it has one and it still runs."""
        if pending.started.token:
            with contextlib.suppress(BackendError):
                await self._backend.cancel(pending.started)

    async def _status_or_cancelled(self, pending: Pending) -> str:
        try:
            return await self._backend.status(pending.started)
        except BackendError:
            return "CANCELLED"

    def _session_page(
        self,
        request: Request,
        flow: str,
        pending: Pending,
        status: str,
        *,
        wrong_code: bool = False,
    ) -> HTMLResponse:
        ctx = self._ctx
        pointer = json.dumps(pending.started.session_ptr, separators=(",", ":"))
        en = pending.lang == "en"
        base = f"{ctx.public_base}/s/{flow}"
        return render(
            ctx.templates,
            request,
            "yivi_session.html",
            {
                "status": status,
                "labels": [
                    ctx.tenant.attribute_label(t, pending.lang) for t in pending.start.attributes
                ],
                "qr": qr_svg(
                    pointer, "QR code for the Yivi app" if en else "QR-code voor de Yivi-app"
                ),
                "app_link": UNIVERSAL_LINK + quote(pointer, safe=""),
                "pointer": pointer,
                "base": base,
                "wrong_code": wrong_code,
                "tries_left": PAIRING_TRIES - pending.tries,
                "phone": pending.start.continuation.startswith("tel:"),
                "demo_wallet": demo_wallet_link(
                    ctx.settings, str(pending.started.session_ptr.get("u", ""))
                ),
            },
            tenant=ctx.tenant,
            lang=pending.lang,
            carries_token=True,
        )

    def _failure(self, request: Request, flow: str, pending: Pending) -> HTMLResponse:
        ctx = self._ctx
        return render(
            ctx.templates,
            request,
            "yivi_failed.html",
            {"reason": pending.problem or "cancelled", "base": f"{ctx.public_base}/s/{flow}"},
            tenant=ctx.tenant,
            lang=pending.lang,
            carries_token=True,
        )


def _outcome(result: Mapping[str, Any]) -> str:
    """``valid``, or why not: ``cancelled``, ``timeout``, ``missing`` or ``invalid``."""
    status, proof = result.get("status"), result.get("proofStatus")
    if status == "CANCELLED":
        return "cancelled"
    if status == "TIMEOUT":
        return "timeout"
    if status != "DONE":
        return "invalid"
    if proof == "VALID":
        return "valid"
    if proof in ("MISSING_ATTRIBUTES", "UNMATCHED_REQUEST"):
        return "missing"
    if proof == "EXPIRED":
        return "expired"
    return "invalid"


def _date(timestamp: int) -> str:
    return datetime.fromtimestamp(timestamp, UTC).strftime("%Y-%m-%d")
