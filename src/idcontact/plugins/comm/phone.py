"""The ``phone`` comm plugin: ID Bellen, the resident calls with a link code.

``start_communication`` answers the original's ``tel:<number>,<code>`` (the comma makes a phone
send the code as DTMF once the call connects). The call itself is handled by the PBX adapter
(``idcontact.phone.calls``) or, on another contact-centre platform, through the original's two
webhooks, kept wire-compatible but authenticated:

- ``POST /link_phone {"dtmf", "sessionid"}``: link the platform's call to the code's
  conversation (single use; 404 when it does not link, without saying why);
- ``GET /session_info/{sessionid}``: ``{"purpose", "auth_result"}`` for that call.

Both take the tenant's ``phone.webhook_secret`` as a bearer token or an HMAC signature. With
``demo_acd = true`` the plugin also serves a page that plays such a platform's part.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from typing import Any, ClassVar

from fastapi import APIRouter, Form, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from pydantic import BaseModel, Field

from idcontact.conversations import Conversation, Conversations
from idcontact.domain.lifecycle import HOLDS_ATTRIBUTES
from idcontact.errors import (
    ConfigError,
    IdContactError,
    InvalidStartRequestError,
    MethodNotAllowedForPurposeError,
    NotFoundError,
    ServiceBusyError,
    UnauthorizedError,
)
from idcontact.phone.codes import Caller, LinkCodes, Linked, NotLinked
from idcontact.plugins.base import Kind, PluginContext
from idcontact.plugins.comm.common import add_attr_route, purpose_of
from idcontact.plugins.comm.identify import identify_context, start_identification
from idcontact.settings import CommMethod, Purpose
from idcontact.web.pages import TOKEN_PAGE_HEADERS, language, render
from idcontact.web.routing import Router

MAX_TOKEN = 60_000
IDENTIFY_SEAL = "phone-identify"
IDENTIFY_PAGE_SECONDS = 1800
"""How long the page a code opened stays usable (the identification takes a few minutes)."""
IDENTIFY_PAGE = {
    "nl": {
        "title": "Identificeren tijdens uw telefoongesprek",
        "intro": "Vraagt de medewerker aan de telefoon u zich te identificeren? Vul dan de code "
        "in die de medewerker voorleest.",
        "code": "Code",
        "go": "Verder",
        "wrong": "Deze code klopt niet of is verlopen. Vraag de medewerker om een nieuwe code.",
        "busy": "Er zijn te veel verkeerde codes ingevuld. Probeer het later opnieuw, of vraag "
        "de medewerker om hulp.",
    },
    "en": {
        "title": "Identify during your phone call",
        "intro": "Does the employee on the phone ask you to identify? Then enter the code the "
        "employee reads out.",
        "code": "Code",
        "go": "Continue",
        "wrong": "This code is not right or has expired. Ask the employee for a new code.",
        "busy": "Too many wrong codes were entered. Try again later, or ask the employee for help.",
    },
}
SIGNATURE_TOLERANCE = 300
"""An HMAC signature is accepted for this many seconds around its timestamp."""


class StartPhoneRequest(BaseModel):
    purpose: str = Field(max_length=64)
    auth_result: str | None = Field(default=None, max_length=MAX_TOKEN)
    unidentified: bool = False
    shown_on_page: bool = True
    """Our extension: ``false`` when a wallet dials the code itself (the shorter window)."""


class StartPhoneResponse(BaseModel):
    client_url: str
    attr_url: str | None = None


class LinkPhoneRequest(BaseModel):
    dtmf: str = Field(max_length=32)
    sessionid: str = Field(min_length=8, max_length=128)
    caller: str | None = Field(default=None, max_length=32)
    """Our extension: the caller's number, for the per-caller limit (hashed, kept an hour at
    most); without it the limit counts per ``sessionid``."""


class SessionInfo(BaseModel):
    purpose: str
    auth_result: dict[str, Any] | None


def tel_uri(number: str, code: str | None = None) -> str:
    """``tel:+31201234567,1234567890``: the digits (and a leading ``+``) only."""
    plus = "+" if number.strip().startswith("+") else ""
    digits = "".join(c for c in number if c.isdigit())
    return f"tel:{plus}{digits}" + (f",{code}" if code else "")


def signature(secret: str, timestamp: str, method: str, path: str, body: bytes) -> str:
    """``hex(HMAC-SHA256(secret, "<t>.<METHOD>.<path>." + body))``, as docs/phone.md says."""
    message = f"{timestamp}.{method}.{path}.".encode() + body
    return hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()


class PhoneCommPlugin:
    kind: ClassVar[Kind] = "comm"

    def __init__(self, ctx: PluginContext, config: dict[str, Any]) -> None:
        if ctx.conversations is None or ctx.links is None:
            raise ConfigError("comm plugin 'phone': needs the conversation store")
        if not isinstance(ctx.method, CommMethod) or ctx.method.channel != "phone":
            raise ConfigError(
                f"comm_methods {ctx.method.tag!r}: the phone plugin needs channel = 'phone'"
            )
        self._ctx = ctx
        self._conversations: Conversations = ctx.conversations
        self._links: LinkCodes = ctx.links
        self._demo_acd = bool(config.get("demo_acd", False))
        self._clock = time.time

    def _purpose(self, tag: str) -> Purpose:
        return purpose_of(self._ctx.tenant, tag)

    async def _authorize(self, request: Request, body: bytes) -> None:
        """The platform's credentials: ``Authorization: Bearer <secret>`` or
        ``X-IDContact-Signature: t=<unix time>,v1=<hex HMAC>``."""
        secret = self._ctx.tenant.phone.webhook_secret
        if secret is None:
            raise NotFoundError("The phone webhook is not enabled for this municipality")
        key = secret.get_secret_value()
        auth = request.headers.get("authorization", "")
        if auth.lower().startswith("bearer "):
            if hmac.compare_digest(auth[7:].strip().encode(), key.encode()):
                return
            raise UnauthorizedError()
        parts = dict(
            p.split("=", 1)
            for p in request.headers.get("x-idcontact-signature", "").split(",")
            if "=" in p
        )
        stamp, given = parts.get("t", ""), parts.get("v1", "")
        if not stamp.isdigit() or abs(self._clock() - int(stamp)) > SIGNATURE_TOLERANCE:
            raise UnauthorizedError()
        expected = signature(key, stamp, request.method, request.url.path, body)
        if not hmac.compare_digest(expected, given):
            raise UnauthorizedError()

    @property
    def router(self) -> APIRouter:
        router = Router(prefix=self._ctx.mount_path, tags=["comm plugin: phone"])
        ctx, conversations, links = self._ctx, self._conversations, self._links
        tag = ctx.method.tag
        number = ctx.tenant.phone_line

        @router.post(
            "/start_communication",
            response_model=StartPhoneResponse,
            response_model_exclude_none=True,
        )
        async def start_communication(body: StartPhoneRequest) -> StartPhoneResponse:
            """A conversation with a fresh link code: ``tel:<number>,<code>``. Without
            identification only the number: the call gets its conversation when it comes."""
            purpose = self._purpose(body.purpose)
            if body.unidentified:
                if not purpose.allow_unidentified:
                    raise MethodNotAllowedForPurposeError("This topic needs identification")
                return StartPhoneResponse(client_url=tel_uri(number))
            slot: str | None = None
            if body.auth_result is not None:
                conversation_id = await conversations.create_with_token(
                    purpose, tag, body.auth_result
                )
            else:
                conversation_id, slot = await conversations.create(purpose, tag, with_slot=True)
            try:
                code = await links.issue(conversation_id, shown=body.shown_on_page)
            except ServiceBusyError:
                await conversations.end(conversation_id, actor=f"comm:{tag}:busy")
                raise
            return StartPhoneResponse(
                client_url=tel_uri(number, code),
                attr_url=f"{ctx.internal_base}/attr/{slot}" if slot else None,
            )

        add_attr_route(router, conversations)

        @router.post("/link_phone")
        async def link_phone(request: Request) -> dict[str, str]:
            """The platform's call presented a code (original shape, authenticated)."""
            raw = await request.body()
            await self._authorize(request, raw)
            try:
                body = LinkPhoneRequest.model_validate_json(raw)
            except ValueError:
                raise InvalidStartRequestError('Send {"dtmf": ..., "sessionid": ...}') from None
            caller = Caller(body.caller, via="webhook", session=body.sessionid)
            outcome = await links.link(body.dtmf, caller, call_ref=body.sessionid)
            if not isinstance(outcome, Linked):
                raise NotFoundError("No conversation links to this code")
            if ctx.queues is not None:
                await ctx.queues.overflow(outcome.conversation)
                ctx.queues.poke()
            return {"status": "linked"}

        @router.get("/session_info/{sessionid}", response_model=SessionInfo)
        async def session_info(request: Request, sessionid: str) -> SessionInfo:
            """What the platform's agent screen shows for its call; audited like every view."""
            await self._authorize(request, b"")
            conversation = await links.by_call(sessionid)
            if conversation is None or conversation.state not in HOLDS_ATTRIBUTES:
                raise NotFoundError("No such call")
            _, attributes = await conversations.view(conversation.id, actor="platform:webhook")
            auth_result = (
                {"status": ctx.settings.status_spelling, "attributes": attributes.get("attributes")}
                if attributes
                else None
            )
            return SessionInfo(purpose=conversation.purpose, auth_result=auth_result)

        def identify_page(
            request: Request,
            *,
            sealed: str = "",
            conversation: Conversation | None = None,
            error: str = "",
            status: int = 200,
            code: str = "",
        ) -> HTMLResponse:
            lang = language(request, ctx.settings)
            t = IDENTIFY_PAGE[lang]
            context: dict[str, object] = {
                "t": t,
                "error": error,
                "code": code,
                "code_action": f"{ctx.public_base}/identify",
                "length": links.settings.identify_code_length,
                "identify": None,
            }
            if conversation is not None:
                context["identify"] = identify_context(
                    ctx.tenant,
                    conversation,
                    lang,
                    action=f"{ctx.public_base}/i/{sealed}",
                    hint="hint_phone",
                )
            response = render(
                ctx.templates,
                request,
                "phone_identify.html",
                context,
                tenant=ctx.tenant,
                lang=lang,
                carries_token=conversation is not None or bool(code),
            )
            response.status_code = status
            return response

        def opened(sealed: str) -> str:
            """The conversation a code opened: the page's address is the bearer, for a while."""
            try:
                return str(ctx.sealer.unseal(IDENTIFY_SEAL, sealed)["c"])
            except (IdContactError, KeyError, TypeError):
                raise NotFoundError(
                    "This page has expired; ask the employee for a new code"
                ) from None

        @router.get("/identify", response_class=HTMLResponse, include_in_schema=False)
        async def identify_code_page(request: Request, code: str = "") -> HTMLResponse:
            """During a call: where the caller types the code the agent reads out (filled in
            when it came from the agent's text message)."""
            return identify_page(request, code=code if code.isdigit() and len(code) <= 12 else "")

        @router.post("/identify", response_model=None, include_in_schema=False)
        async def identify_code(request: Request) -> Response:
            form = await request.form()
            code = str(form.get("code", ""))[:32]
            client = request.client.host if request.client else "unknown"
            outcome = await links.open_identify(code, Caller(None, via="web", session=client))
            lang = language(request, ctx.settings)
            if isinstance(outcome, NotLinked):
                refused = outcome.reason in ("budget", "caller")
                return identify_page(
                    request,
                    error=IDENTIFY_PAGE[lang]["busy" if refused else "wrong"],
                    status=429 if refused else 400,
                )
            sealed = ctx.sealer.seal(
                IDENTIFY_SEAL, {"c": outcome.id}, max_age=IDENTIFY_PAGE_SECONDS
            )
            return RedirectResponse(
                f"{ctx.public_base}/i/{sealed}", status_code=303, headers=TOKEN_PAGE_HEADERS
            )

        @router.get("/i/{sealed}", response_class=HTMLResponse, include_in_schema=False)
        async def identify_question(request: Request, sealed: str) -> HTMLResponse:
            conversation = await conversations.get(opened(sealed))
            return identify_page(request, sealed=sealed, conversation=conversation)

        @router.post("/i/{sealed}", response_class=RedirectResponse, include_in_schema=False)
        async def identify_start(
            request: Request,
            sealed: str,
            auth_method: str = Form(default="", max_length=64),
            decline: str = Form(default="", max_length=8),
        ) -> RedirectResponse:
            """The caller answers: with a method (and back to this page after), or no."""
            conversation_id = opened(sealed)
            page = f"{ctx.public_base}/i/{sealed}"
            if decline:
                await conversations.decline_identification(
                    conversation_id, actor=f"comm:{tag}:caller"
                )
                return RedirectResponse(page, status_code=303, headers=TOKEN_PAGE_HEADERS)
            client_url = await start_identification(
                ctx, conversations, conversation_id, auth_method, comm_url=page
            )
            return RedirectResponse(client_url, status_code=303, headers=TOKEN_PAGE_HEADERS)

        if self._demo_acd:

            @router.get("/demo-acd", response_class=HTMLResponse, include_in_schema=False)
            async def demo_acd(request: Request) -> HTMLResponse:
                """Demo only: type the code as if into a phone menu."""
                return render(
                    ctx.templates,
                    request,
                    "phone_demo_acd.html",
                    {"action": f"{ctx.public_base}/demo-acd", "length": links.settings.code_length},
                    tenant=ctx.tenant,
                    lang=language(request, ctx.settings),
                )

            @router.post("/demo-acd", response_class=HTMLResponse, include_in_schema=False)
            async def demo_acd_link(request: Request) -> HTMLResponse:
                form = await request.form()
                code = str(form.get("code", ""))[:32].replace(" ", "")
                call_ref = secrets.token_urlsafe(16)
                outcome = await links.link(
                    code, Caller(None, via="demo", session=call_ref), call_ref=call_ref
                )
                if isinstance(outcome, Linked) and ctx.queues is not None:
                    await ctx.queues.overflow(outcome.conversation)
                    ctx.queues.poke()
                response = render(
                    ctx.templates,
                    request,
                    "phone_demo_acd.html",
                    {
                        "action": f"{ctx.public_base}/demo-acd",
                        "length": links.settings.code_length,
                        "linked": isinstance(outcome, Linked),
                        "failed": not isinstance(outcome, Linked),
                    },
                    tenant=ctx.tenant,
                    lang=language(request, ctx.settings),
                )
                if not isinstance(outcome, Linked):
                    response.status_code = 404
                return response

        return router
