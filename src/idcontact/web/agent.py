"""The agent console at ``/agent/``: login, enrolment, the live queue, the attribute panel.

Server-rendered and usable without JavaScript; ``/static/console.js`` adds live updates from
``/agent/<tenant>/events`` (Server-Sent Events carrying ids and states only). Every tenant's
pages check the agent's membership of that tenant first, and every conversation page checks
that the agent holds the conversation: another tenant's or agent's conversations answer 404,
so they cannot even be counted. Every form carries a CSRF token bound to the session.
"""

from __future__ import annotations

import io
import logging
import re
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any
from urllib.parse import urlencode, urlsplit
from zoneinfo import ZoneInfo

from fastapi import APIRouter, Form, Request, WebSocket
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates
from starlette.responses import StreamingResponse

from idcontact.agents.credentials import (
    check_csrf,
    csrf_token,
    new_session_id,
    new_totp_secret,
    provisioning_uri,
    qr_svg,
)
from idcontact.agents.directory import AgentDirectory, AgentSession, Membership, Role
from idcontact.agents.sso import (
    STATE_SECONDS as SSO_STATE_SECONDS,
    OidcClient,
    SsoProviderError,
    map_groups,
)
from idcontact.conversations import Conversation
from idcontact.errors import BadRequestError, IdContactError, NotFoundError
from idcontact.events import Bus, Event
from idcontact.forms import Forms, forms_for
from idcontact.klantinteracties import Registrations
from idcontact.phone.codes import LinkCodes
from idcontact.phone.sms import SmsFailedError, SmsGateway, mobile_number
from idcontact.queues import QueueService, serves
from idcontact.sealing import Sealer
from idcontact.settings import Purpose, Settings, Tenant
from idcontact.storage.audit import audit, events, write_csv
from idcontact.web.chat import chat_socket, post_message
from idcontact.web.middleware import CSP
from idcontact.web.routing import Router
from idcontact.web.video import Signalling, panel as video_panel, signalling_for

SESSION_COOKIE = "idc_agent"
PRE_COOKIE = "idc_pre"
SSO_COOKIE = "idc_sso"
SSO_PATH = "/agent/sso"
SSO_PARAMS = ("state", "code", "error")
"""What the callback reads of the provider's answer (never ``error_description``)."""
CONSOLE_PATH = re.compile(r"/agent/[A-Za-z0-9._~/-]{0,200}")
EMBED_COOKIE = "idc_embed"
EMBED_PATH = "/agent/embed"
HAND_OFF_SECONDS = 60
"""How long the code a login pop-up hands to an embedded panel lasts."""
HEARTBEAT = 15.0
WAITING_SHOWN = 25
ZONE = ZoneInfo("Europe/Amsterdam")
log = logging.getLogger(__name__)


class CsrfError(IdContactError):
    status = 403
    slug = "csrf"
    title = "This form has expired or did not come from this site; reload the page and try again"


class LoginRequiredError(IdContactError):
    status = 401
    slug = "login-required"
    title = "Log in to the agent console first"


class ForbiddenError(IdContactError):
    status = 403
    slug = "forbidden"
    title = "Your role does not allow this"


@dataclass(frozen=True)
class Seat:
    """The logged-in agent at one tenant's console."""

    agent: AgentSession
    member: Membership
    tenant: Tenant
    queues: QueueService
    session_id: str
    csrf: str


PRESENCE_NL = {
    "available": "beschikbaar",
    "busy": "in gesprek",
    "paused": "pauze",
    "wrap_up": "afronden",
}


def embed_cookie(session_id: str, hours: float) -> str:
    """The embedded panel's session cookie. Starlette cannot write ``Partitioned`` before
    Python 3.14, so the header is built here. Without it a browser that blocks third-party
    cookies would drop the cookie in the frame."""
    age = int(hours * 3600)
    return (
        f"{EMBED_COOKIE}={session_id}; Max-Age={age}; Path={EMBED_PATH}; "
        "Secure; HttpOnly; SameSite=None; Partitioned"
    )


def console_path(then: str) -> str:
    """Where to go after a login: a path under ``/agent/``, else the console itself (no open
    redirect)."""
    if not CONSOLE_PATH.fullmatch(then) or "//" in then or ".." in then.split("/"):
        return "/agent/"
    return then


def _time(at: float | None) -> str:
    if at is None:
        return ""
    return datetime.fromtimestamp(at, ZONE).strftime("%H:%M:%S")


def agent_router(
    settings: Settings,
    directory: AgentDirectory,
    tenants: Mapping[str, tuple[Tenant, QueueService]],
    bus: Bus,
    templates: Jinja2Templates,
    secret: bytes,
    clock: Callable[[], float],
    links: Mapping[str, LinkCodes] | None = None,
    sso: Mapping[str, OidcClient] | None = None,
    registrations: Mapping[str, Registrations] | None = None,
    texts: Mapping[str, SmsGateway] | None = None,
) -> APIRouter:
    """``links``: each tenant's phone link codes, for the failed-attempt figures in the
    supervisors' statistics; ``sso``: the identity providers of the tenants whose agents log
    in through one; ``registrations``: the Klantinteracties connectors of the tenants that
    have one; ``texts``: the SMS gateways of the tenants that have one."""
    router = Router(prefix="/agent", include_in_schema=False)

    def slug_texts(slug: str) -> bool:
        return slug in (texts or {})

    secure = settings.public_url.startswith("https://")
    origin = "{0.scheme}://{0.netloc}".format(urlsplit(settings.public_url))
    default_tenant = settings.default_tenant
    # The video methods' TURN credentials and signal checks: (tenant, method tag) → signalling.
    video: dict[tuple[str, str], Signalling] = {
        (slug, m.tag): signalling_for(tenant, m)
        for slug, (tenant, _) in tenants.items()
        for m in tenant.comm_methods
        if m.plugin == "video"
    }

    def page(
        request: Request, name: str, context: dict[str, object], tenant: Tenant | None = None
    ) -> HTMLResponse:
        t = tenant or default_tenant
        return templates.TemplateResponse(
            request,
            name,
            {
                **context,
                "tenant": t,
                "prefix": t.prefix,
                "lang": "nl",
                "home": "/agent/",
                "call_states": CALL_STATES_NL,
            },
        )

    def set_cookie(response: Response, name: str, value: str, max_age: int | None) -> None:
        response.set_cookie(
            name,
            value,
            max_age=max_age,
            path="/agent",
            secure=secure,
            httponly=True,
            samesite="strict",
        )

    def check_origin(request: Request) -> None:
        # Browsers send "Origin: null" under our Referrer-Policy: no-referrer; Sec-Fetch-Site
        # still tells a same-origin form from another site's.
        sent = request.headers.get("origin")
        if sent is not None and sent not in (origin, "null"):
            raise CsrfError()
        if request.headers.get("sec-fetch-site", "same-origin") not in ("same-origin", "none"):
            raise CsrfError()

    async def current(
        request: Request, cookies: tuple[str, ...] = (SESSION_COOKIE,)
    ) -> tuple[AgentSession, str] | None:
        for name in cookies:
            session_id = request.cookies.get(name, "")
            agent = await directory.session(session_id)
            if agent is not None:
                return agent, session_id
        return None

    async def seat(
        request: Request, slug: str, cookies: tuple[str, ...] = (SESSION_COOKIE,)
    ) -> Seat:
        found = await current(request, cookies)
        if found is None:
            raise LoginRequiredError()
        agent, session_id = found
        member = agent.membership(slug)
        if member is None or slug not in tenants:
            raise NotFoundError("No such console")
        tenant, queues = tenants[slug]
        return Seat(agent, member, tenant, queues, session_id, csrf_token(session_id, secret))

    async def posted(
        request: Request, slug: str, csrf: str, cookies: tuple[str, ...] = (SESSION_COOKIE,)
    ) -> Seat:
        check_origin(request)
        s = await seat(request, slug, cookies)
        if not check_csrf(s.session_id, secret, csrf):
            raise CsrfError()
        return s

    def require(s: Seat, role: Role) -> None:
        if not s.member.at_least(role):
            raise ForbiddenError()

    # -- login, enrolment, logout -----------------------------------------------------------

    def pre_session(request: Request) -> tuple[str, bool]:
        value = request.cookies.get(PRE_COOKIE, "")
        if 20 <= len(value) <= 100:
            return value, False
        return new_session_id(), True

    def form_page(
        request: Request, name: str, context: dict[str, object], status: int = 200
    ) -> HTMLResponse:
        pre, fresh = pre_session(request)
        response = page(request, name, {**context, "csrf": csrf_token(pre, secret)})
        response.status_code = status
        if fresh:
            set_cookie(response, PRE_COOKIE, pre, None)
        return response

    def check_pre(request: Request, csrf: str) -> None:
        check_origin(request)
        pre = request.cookies.get(PRE_COOKIE, "")
        if not pre or not check_csrf(pre, secret, csrf):
            raise CsrfError()

    providers = dict(sso or {})

    def login_form(
        request: Request, context: dict[str, object], status: int = 200, then: str = ""
    ) -> HTMLResponse:
        """The login page: the password form and a button per tenant with SSO; ``then``: the
        console page to go to afterwards."""
        then = console_path(then) if then else ""
        query = f"?{urlencode({'then': then})}" if then else ""
        buttons = [
            {
                "url": f"/agent/sso/{slug}{query}",
                "label": client.config.label or tenants[slug][0].name,
            }
            for slug, client in providers.items()
            if slug in tenants
        ]
        return form_page(
            request, "agent_login.html", {**context, "sso": buttons, "then": then}, status
        )

    @router.get("/login", response_class=HTMLResponse)
    async def login_page(request: Request, done: str = "", then: str = "") -> HTMLResponse:
        return login_form(request, {"enrolled": done == "enrolled"}, then=then)

    @router.post("/login", response_model=None)
    async def login(
        request: Request,
        username: Annotated[str, Form(max_length=100)],
        password: Annotated[str, Form(max_length=1024)],
        code: Annotated[str, Form(max_length=20)],
        csrf: Annotated[str, Form(max_length=200)],
        then: Annotated[str, Form(max_length=210)] = "",
    ) -> Response:
        check_pre(request, csrf)
        client = request.client.host if request.client else "unknown"
        try:
            session_id = await directory.login(username, password, code, client=client)
        except IdContactError as exc:
            return login_form(request, {"error": exc.title, "username": username}, exc.status, then)
        where = console_path(then) if then else "/agent/"
        return await logged_in(request, RedirectResponse(where, status_code=303), session_id)

    async def logged_in(request: Request, response: Response, session_id: str) -> Response:
        """Hand the browser its new session (any earlier one is revoked); the pre-session
        and SSO state cookies are spent."""
        old = request.cookies.get(SESSION_COOKIE)
        if old:
            await directory.logout(old)
        set_cookie(response, SESSION_COOKIE, session_id, int(settings.agent_session_hours * 3600))
        response.delete_cookie(PRE_COOKIE, path="/agent")
        response.delete_cookie(SSO_COOKIE, path=SSO_PATH)
        return response

    # -- single sign-on through a tenant's identity provider ------------------------------

    def sso_client(slug: str) -> OidcClient:
        client = providers.get(slug)
        if client is None or slug not in tenants:
            raise NotFoundError("No such login")
        return client

    def callback_url(slug: str) -> str:
        return f"{settings.public_url}{SSO_PATH}/{slug}/callback"

    @router.get("/sso/{slug}", response_model=None)
    async def sso_start(
        request: Request, slug: str, popup: bool = False, then: str = "/agent/"
    ) -> Response:
        """Off to the provider; ``popup=1`` when the console opened this in a pop-up window
        (the end then tells the opener and closes instead of showing the console); ``then``:
        the console page to go to afterwards (only paths under ``/agent/``)."""
        client = sso_client(slug)
        try:
            url, sealed = await client.begin(callback_url(slug), popup, console_path(then))
        except SsoProviderError as exc:
            return login_form(request, {"error": exc.title}, exc.status)
        response = RedirectResponse(url, status_code=303)
        # Lax, not Strict: the provider's redirect back is a cross-site navigation.
        response.set_cookie(
            SSO_COOKIE,
            sealed,
            max_age=SSO_STATE_SECONDS,
            path=SSO_PATH,
            secure=secure,
            httponly=True,
            samesite="lax",
        )
        response.headers["Cache-Control"] = "no-store"
        return response

    @router.get("/sso/{slug}/callback", response_model=None)
    async def sso_callback(request: Request, slug: str) -> Response:
        """The provider's answer: state checked, code redeemed, groups mapped, session."""
        client = sso_client(slug)
        params = {k: v for k, v in request.query_params.items() if k in SSO_PARAMS}
        try:
            pending = client.pending(request.cookies.get(SSO_COOKIE, ""))
            identity = await client.finish(params, pending, callback_url(slug))
            # Every tenant that trusts the same provider and client is refreshed from the
            # same groups, so one login serves them all and revokes in all of them.
            members = {
                other: map_groups(other, c.config, identity.groups)
                for other, c in providers.items()
                if other in tenants
                and c.config.issuer == client.config.issuer
                and c.config.client_id == client.config.client_id
            }
            if members.get(slug) is None:
                log.info("SSO login to tenant %s refused: no group of the user is mapped", slug)
            session_id = await directory.sso_login(identity.key, identity.name, members, slug)
        except IdContactError as exc:
            response = login_form(request, {"error": exc.title}, exc.status)
            response.delete_cookie(SSO_COOKIE, path=SSO_PATH)
            return response
        # A page, not a redirect: after the provider's cross-site redirect the browser would
        # not send the SameSite=Strict session cookie along a further redirect.
        done = page(
            request,
            "agent_sso_done.html",
            {"popup": bool(pending.get("p")), "then": str(pending.get("u") or "/agent/")},
            tenants[slug][0],
        )
        done.headers["Cache-Control"] = "no-store"
        return await logged_in(request, done, session_id)

    @router.get("/enrol/{code}", response_class=HTMLResponse)
    async def enrol_page(request: Request, code: str) -> HTMLResponse:
        username = await directory.enrolling(code)
        secret_text = new_totp_secret()
        uri = provisioning_uri(secret_text, username, settings.name)
        return form_page(
            request,
            "agent_enrol.html",
            {
                "username": username,
                "qr": qr_svg(uri, "QR-code voor uw authenticator-app"),
                "secret_text": " ".join(
                    secret_text[i : i + 4] for i in range(0, len(secret_text), 4)
                ),
                "sealed": directory.seal_totp_secret(secret_text),
                "action": f"/agent/enrol/{code}",
            },
        )

    @router.post("/enrol/{code}", response_model=None)
    async def enrol(
        request: Request,
        code: str,
        password: Annotated[str, Form(max_length=1024)],
        password_again: Annotated[str, Form(max_length=1024)],
        totp: Annotated[str, Form(max_length=20)],
        sealed: Annotated[str, Form(max_length=2000)],
        csrf: Annotated[str, Form(max_length=200)],
    ) -> Response:
        check_pre(request, csrf)
        try:
            if password != password_again:
                raise BadRequestError("The two passwords are not the same")
            await directory.enrol(code, password, sealed, totp)
        except IdContactError as exc:
            username = await directory.enrolling(code)
            return form_page(
                request,
                "agent_enrol.html",
                {
                    "username": username,
                    "error": exc.detail,
                    "qr": None,
                    "sealed": sealed,
                    "action": f"/agent/enrol/{code}",
                },
                status=exc.status,
            )
        return RedirectResponse("/agent/login?done=enrolled", status_code=303)

    @router.post("/logout", response_class=RedirectResponse, status_code=303)
    async def logout(
        request: Request, csrf: Annotated[str, Form(max_length=200)]
    ) -> RedirectResponse:
        check_origin(request)
        session_id = request.cookies.get(SESSION_COOKIE, "")
        if session_id and check_csrf(session_id, secret, csrf):
            await directory.logout(session_id)
        response = RedirectResponse("/agent/login", status_code=303)
        response.delete_cookie(SESSION_COOKIE, path="/agent")
        return response

    # -- the attribute panel in another site's frame ---------------------------------------
    # A third-party agent desktop (KISS, a softphone) shows /agent/embed/<tenant>/ in an
    # iframe. The console's SameSite=Strict cookie never reaches such a frame, so the frame
    # has its own: partitioned (CHIPS), SameSite=None, Secure, path /agent/embed only. It gets
    # it from a login in a first-party pop-up, which hands the frame a one-time code by
    # postMessage (to our own origin only); only tenants' listed origins may frame the pages.

    sealer = Sealer(secret, clock)

    def embed_page(
        request: Request, name: str, context: dict[str, object], tenant: Tenant, status: int = 200
    ) -> HTMLResponse:
        response = page(request, name, {**context, "embed": f"{EMBED_PATH}/{tenant.slug}"}, tenant)
        response.status_code = status
        ancestors = " ".join(("'self'", *tenant.embed_origins))
        response.headers["Content-Security-Policy"] = CSP.replace(
            "frame-ancestors 'none'", f"frame-ancestors {ancestors}"
        )
        return response

    def embed_tenant(slug: str) -> Tenant:
        if slug not in tenants:
            raise NotFoundError("No such console")
        return tenants[slug][0]

    async def embed_seat(request: Request, slug: str) -> Seat:
        """The frame's own cookie, or the console's (the panel opened on this very site)."""
        return await seat(request, slug, (EMBED_COOKIE, SESSION_COOKIE))

    async def mine(s: Seat) -> list[dict[str, object]]:
        """The conversations I am in now (ids and states; no attributes)."""
        rows = await s.queues.board(s.member.queues)
        return [
            r
            for r in rows
            if r["state"] in ("connected", "wrap_up") and r["agent_id"] == s.agent.agent_id
        ]

    def now_key(rows: list[dict[str, object]]) -> str:
        """What the embedded panel shows, as a string that changes when it must reload."""
        keys = ("id", "state", "identified", "identify", "call_state")
        return ";".join(":".join(str(r.get(k)) for k in keys) for r in rows)

    async def embed_view(
        request: Request,
        s: Seat,
        conversation_id: str | None,
        reveal: str = "",
        follow: bool = False,
    ) -> HTMLResponse:
        """``conversation_id`` ``None``: the one I am in now; ``follow``: on to the next one
        when that changes (the home page, and a "show" from it), else this one only."""
        base = f"{EMBED_PATH}/{s.tenant.slug}"
        rows = await mine(s)
        for r in rows:
            purpose = s.tenant.purpose(str(r["purpose"]))
            r["purpose_label"] = purpose.label.nl if purpose and purpose.label else r["purpose"]
        follow = follow or conversation_id is None
        context: dict[str, object] = {"s": s, "mine": rows, "now": now_key(rows), "base": base}
        context["follow"] = follow
        context |= {"now_url": f"{base}/now", "reload": f"{base}/"}
        shown = conversation_id or (str(rows[0]["id"]) if len(rows) == 1 else None)
        if shown is None:
            return embed_page(request, "agent_embed.html", context, s.tenant)
        try:
            conversation, _, view = await attribute_view(s, shown, reveal)
        except NotFoundError:  # not (or no longer) mine: transferred, say
            return embed_page(request, "agent_embed.html", context | {"gone": True}, s.tenant, 404)
        context |= view
        if not follow:  # this one, whatever comes next
            context |= {
                "now": now_key([conversation.summary()]),
                "now_url": f"{base}/now?c={conversation_id}",
                "reload": f"{base}/c/{conversation_id}",
            }
        return embed_page(request, "agent_embed.html", context, s.tenant)

    async def embed_get(request: Request, slug: str, conversation_id: str | None) -> HTMLResponse:
        tenant = embed_tenant(slug)
        try:
            s = await embed_seat(request, slug)
        except LoginRequiredError:
            return embed_page(request, "agent_embed_login.html", {}, tenant, status=401)
        return await embed_view(request, s, conversation_id)

    @router.get("/embed/{slug}/", response_class=HTMLResponse)
    async def embed_home(request: Request, slug: str) -> HTMLResponse:
        """The panel of the conversation I am in now (a list when there are several), which
        follows me from one conversation to the next."""
        return await embed_get(request, slug, None)

    @router.get("/embed/{slug}/c/{conversation_id}", response_class=HTMLResponse)
    async def embed_conversation(request: Request, slug: str, conversation_id: str) -> HTMLResponse:
        """The panel of one conversation, for desktops that know our conversation id."""
        return await embed_get(request, slug, conversation_id)

    @router.post("/embed/{slug}/c/{conversation_id}/reveal", response_class=HTMLResponse)
    async def embed_reveal(
        request: Request,
        slug: str,
        conversation_id: str,
        csrf: Annotated[str, Form(max_length=200)],
        attribute: Annotated[str, Form(max_length=64)],
        follow: Annotated[str, Form(max_length=1)] = "",
    ) -> HTMLResponse:
        s = await posted(request, slug, csrf, (EMBED_COOKIE, SESSION_COOKIE))
        return await embed_view(request, s, conversation_id, attribute, follow == "1")

    @router.get("/embed/{slug}/now")
    async def embed_now(request: Request, slug: str, c: str = "") -> JSONResponse:
        """What the panel shows, without reading attributes: embed.js reloads on a change."""
        s = await embed_seat(request, slug)
        if c:
            rows = [(await s.queues.held(c, s.agent.agent_id)).summary()]
        else:
            rows = await mine(s)
        return JSONResponse({"now": now_key(rows)})

    @router.get("/embed/{slug}/events")
    async def embed_events(request: Request, slug: str) -> StreamingResponse:
        """The console's Server-Sent Events (ids and states): a conversation that leaves me
        (a transfer) must leave the panel too."""
        s = await embed_seat(request, slug)
        return event_stream(slug, console_events(s))

    @router.get("/embed/{slug}/login", response_class=HTMLResponse, response_model=None)
    async def embed_hand_off(request: Request, slug: str) -> Response:
        """In the first-party pop-up: log in (here, with the console's own cookie), then hand
        the frame that opened us a one-time code for a session of its own."""
        tenant = embed_tenant(slug)
        found = await current(request)
        if found is None or found[0].membership(slug) is None:
            return login_form(request, {}, then=f"{EMBED_PATH}/{slug}/login")
        session_id = await directory.hand_off(found[1], seconds=HAND_OFF_SECONDS)
        if session_id is None:  # logged out meanwhile
            return login_form(request, {}, then=f"{EMBED_PATH}/{slug}/login")
        code = sealer.seal("embed-hand-off", {"s": session_id, "t": slug}, HAND_OFF_SECONDS)
        return page(request, "agent_embed_hand_off.html", {"code": code}, tenant)

    @router.post("/embed/{slug}/session", status_code=204)
    async def embed_session(
        request: Request, slug: str, code: Annotated[str, Form(max_length=1000)]
    ) -> Response:
        """The frame redeems the pop-up's code: its partitioned cookie, once per code."""
        check_origin(request)
        embed_tenant(slug)
        try:
            sealed = sealer.unseal("embed-hand-off", code)
        except IdContactError:
            raise BadRequestError("This login code is not valid (anymore); log in again") from None
        session_id = str(sealed.get("s", ""))
        if sealed.get("t") != slug or not await directory.take_hand_off(
            session_id, seconds=HAND_OFF_SECONDS
        ):
            raise BadRequestError("This login code is not valid (anymore); log in again")
        response = Response(status_code=204)
        response.headers.append(
            "Set-Cookie", embed_cookie(session_id, settings.agent_session_hours)
        )
        return response

    @router.post("/embed/{slug}/logout", response_class=HTMLResponse)
    async def embed_logout(
        request: Request, slug: str, csrf: Annotated[str, Form(max_length=200)]
    ) -> HTMLResponse:
        s = await posted(request, slug, csrf, (EMBED_COOKIE,))
        await directory.logout(s.session_id)
        response = embed_page(request, "agent_embed_login.html", {}, s.tenant, status=401)
        response.headers.append("Set-Cookie", embed_cookie("", 0))
        return response

    # -- the console --------------------------------------------------------------------------

    @router.get("/", response_class=HTMLResponse, response_model=None)
    async def home(request: Request) -> Response:
        found = await current(request)
        if found is None:
            return RedirectResponse("/agent/login", status_code=303)
        agent, session_id = found
        mine = [m for m in agent.memberships if m.tenant in tenants]
        if len(mine) == 1:
            return RedirectResponse(f"/agent/{mine[0].tenant}/", status_code=303)
        return page(
            request,
            "agent_tenants.html",
            {
                "agent": agent,
                "tenants": [(m, tenants[m.tenant][0]) for m in mine],
                "csrf": csrf_token(session_id, secret),
            },
        )

    async def board(s: Seat) -> dict[str, object]:
        rows = await s.queues.board(s.member.queues)
        me = s.agent.agent_id
        waiting = [r for r in rows if r["state"] == "waiting"]
        for r in rows:
            r["since_text"] = _time(r.get("waiting_since"))  # type: ignore[arg-type]
            r["offer_until"] = _time(r.get("offer_expires"))  # type: ignore[arg-type]
            r["transfer_until"] = _time(r.get("transfer_expires"))  # type: ignore[arg-type]
            purpose = s.tenant.purpose(str(r["purpose"]))
            r["purpose_label"] = purpose.label.nl if purpose and purpose.label else r["purpose"]
        now = clock()
        return {
            "offers": [r for r in rows if r["state"] == "offered" and r["agent_id"] == me],
            "transfers": [
                r
                for r in rows
                if r["transfer_to"] == me and float(r["transfer_expires"] or 0) > now  # type: ignore[arg-type]
            ],
            "mine": [
                r for r in rows if r["state"] in ("connected", "wrap_up") and r["agent_id"] == me
            ],
            "waiting": waiting[:WAITING_SHOWN],
            "waiting_count": len(waiting),
            "others": sum(1 for r in rows if r["state"] != "waiting" and r["agent_id"] != me),
        }

    async def presence(s: Seat) -> str:
        refreshed = await directory.session(s.session_id)
        return refreshed.presence if refreshed else "paused"

    @router.get("/{slug}/", response_class=HTMLResponse, response_model=None)
    async def console(request: Request, slug: str) -> Response:
        try:
            s = await seat(request, slug)
        except LoginRequiredError:
            return RedirectResponse("/agent/login", status_code=303)
        return page(
            request,
            "agent_console.html",
            {
                "s": s,
                "presence": await presence(s),
                "board": await board(s),
                "base": f"/agent/{slug}",
            },
            s.tenant,
        )

    @router.get("/{slug}/board", response_class=HTMLResponse)
    async def board_fragment(request: Request, slug: str) -> HTMLResponse:
        """The list part of the console, which console.js reloads after an event."""
        s = await seat(request, slug)
        return page(
            request,
            "agent_board.html",
            {"s": s, "board": await board(s), "base": f"/agent/{slug}"},
            s.tenant,
        )

    def console_events(s: Seat) -> Callable[[Event], bool]:
        """The events an agent's console gets: changes in my queues, my own presence."""
        me = s.agent.agent_id

        def wanted(event: Event) -> bool:
            if event.key.startswith("agent:"):  # presence: only the agent's own
                return event.key == f"agent:{me}"
            return serves(s.member.queues, event.key)

        return wanted

    def event_stream(slug: str, wanted: Callable[[Event], bool]) -> StreamingResponse:
        """A tenant's queue events that ``wanted`` lets through, as Server-Sent Events."""

        async def stream() -> AsyncIterator[bytes]:
            # Each event is encoded once for all consoles; what queued up meanwhile goes out
            # as one chunk. Starlette ends the stream when the browser goes away.
            async with bus.subscribe(slug, "queue") as changes:
                yield b"retry: 2000\nevent: hello\ndata: {}\n\n"
                while True:
                    try:
                        first = await changes.next(HEARTBEAT)
                        batch = [] if first is None else [first, *changes.drain()]
                    except ConnectionResetError:  # fell behind: the browser reconnects
                        return
                    chunk = b"".join(e.sse for e in batch if wanted(e))
                    if chunk:
                        yield chunk
                    elif first is None:
                        yield b": keep-alive\n\n"

        return StreamingResponse(
            stream(),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
        )

    @router.get("/{slug}/events")
    async def live(request: Request, slug: str) -> StreamingResponse:
        """Server-Sent Events: a summary (ids, states, times) of each change in my queues."""
        s = await seat(request, slug)
        return event_stream(slug, console_events(s))

    @router.post("/{slug}/presence", response_class=RedirectResponse, status_code=303)
    async def set_presence(
        request: Request,
        slug: str,
        presence: Annotated[str, Form(pattern="^(available|paused)$")],
        csrf: Annotated[str, Form(max_length=200)],
    ) -> RedirectResponse:
        s = await posted(request, slug, csrf)
        await s.queues.set_presence(s.agent.agent_id, presence)
        return RedirectResponse(f"/agent/{slug}/", status_code=303)

    # Before the generic /{action} route below, which would otherwise take these paths.
    @router.post(
        "/{slug}/c/{conversation_id}/say", response_class=RedirectResponse, status_code=303
    )
    async def say(
        request: Request,
        slug: str,
        conversation_id: str,
        csrf: Annotated[str, Form(max_length=200)],
        text: Annotated[str, Form(max_length=2000)],
    ) -> RedirectResponse:
        """Without JavaScript: answer in the chat and see the panel again."""
        s = await posted(request, slug, csrf)
        conversation = await s.queues.held(conversation_id, s.agent.agent_id)
        if (
            not is_chat(s.tenant, conversation)
            or conversation.state != "connected"
            or not text.strip()
        ):
            raise BadRequestError("No message can be sent here now")
        await post_message(s.queues.conversations, bus, conversation_id, "agent", text.strip())
        return RedirectResponse(f"/agent/{slug}/c/{conversation_id}", status_code=303)

    @router.post(
        "/{slug}/c/{conversation_id}/answer", response_class=RedirectResponse, status_code=303
    )
    async def answer(
        request: Request,
        slug: str,
        conversation_id: str,
        csrf: Annotated[str, Form(max_length=200)],
        text: Annotated[str, Form(max_length=50_000)],
    ) -> RedirectResponse:
        """Answer a contact-form question I hold: it is then done, no longer my work."""
        s = await posted(request, slug, csrf)
        conversation = await s.queues.held(conversation_id, s.agent.agent_id)
        desk = form_desk(s, conversation)
        if desk is None:
            raise BadRequestError("This conversation is no contact-form question")
        await desk.answer(conversation_id, s.agent.agent_id, text)
        return RedirectResponse(f"/agent/{slug}/", status_code=303)

    @router.post("/{slug}/c/{conversation_id}/{action}", response_class=RedirectResponse)
    async def act(
        request: Request,
        slug: str,
        conversation_id: str,
        action: str,
        csrf: Annotated[str, Form(max_length=200)],
        attribute: Annotated[str, Form(max_length=64)] = "",
        purpose: Annotated[str, Form(max_length=64)] = "",
        target: Annotated[str, Form(max_length=64)] = "",
        note: Annotated[str, Form(max_length=2000)] = "",
        number: Annotated[str, Form(max_length=40)] = "",
    ) -> Response:
        """accept, decline, finish (wrap-up), close (delete now), reveal a masked attribute,
        mark that the resident acts for someone else (``attribute=on``/``off``), ask the
        resident to identify (for ``purpose``), or transfer: to a queue (``transfer``,
        ``target`` = queue), to a colleague (``offer``, ``target`` = agent id), and answer or
        cancel such an offer (``take``, ``refuse``)."""
        s = await posted(request, slug, csrf)
        me = s.agent.agent_id
        if action == "accept":
            await s.queues.held(conversation_id, me)
            await s.queues.accept(conversation_id, me)
            return RedirectResponse(f"/agent/{slug}/c/{conversation_id}", status_code=303)
        if action == "decline":
            await s.queues.held(conversation_id, me)
            await s.queues.decline(conversation_id, me)
            return RedirectResponse(f"/agent/{slug}/", status_code=303)
        if action == "finish":
            await s.queues.finish(conversation_id, me)
            return RedirectResponse(f"/agent/{slug}/c/{conversation_id}", status_code=303)
        if action == "close":
            await s.queues.close(conversation_id, me)
            return RedirectResponse(f"/agent/{slug}/", status_code=303)
        if action == "ring":  # the phone channel: ring my phone again
            conversation = await s.queues.held(conversation_id, me)
            if conversation.channel != "phone" or conversation.state != "connected":
                raise BadRequestError("Only a connected phone call can ring again")
            await bus.publish(
                Event(s.tenant.slug, "conversation", conversation_id, {"command": "ring"}, clock())
            )
            return RedirectResponse(f"/agent/{slug}/c/{conversation_id}", status_code=303)
        if action == "reveal":
            return await panel(request, s, conversation_id, reveal=attribute)
        if action == "transfer":
            await s.queues.transfer_to_queue(conversation_id, me, target)
            return RedirectResponse(f"/agent/{slug}/", status_code=303)
        if action == "offer":
            await s.queues.offer_transfer(conversation_id, me, target)
            return RedirectResponse(f"/agent/{slug}/c/{conversation_id}", status_code=303)
        if action in ("take", "refuse"):
            await s.queues.answer_transfer(conversation_id, me, accept=action == "take")
            where = f"/agent/{slug}/c/{conversation_id}" if action == "take" else f"/agent/{slug}/"
            return RedirectResponse(where, status_code=303)
        if action == "register":  # in the municipality's Klantinteracties, on request only
            desk = (registrations or {}).get(slug)
            if desk is None:
                raise NotFoundError("No such action")
            await s.queues.held(conversation_id, me)
            await desk.request(
                conversation_id,
                actor=f"agent:{me}",
                callback=attribute == "callback",
                toelichting=note,
            )
            return RedirectResponse(f"/agent/{slug}/c/{conversation_id}", status_code=303)
        if action == "represent":  # the resident says they act for someone else (or not)
            conversation = await s.queues.held(conversation_id, me)
            if conversation.state not in ("connected", "wrap_up"):
                raise BadRequestError("Only a conversation you are in can be marked")
            acting = attribute == "on"
            await s.queues.conversations.annotate_checked(
                conversation_id,
                {"acting_for": 1 if acting else None},
                event=("conversation.acting_for", f"agent:{me}", {"acting_for": acting}),
            )
            return RedirectResponse(f"/agent/{slug}/c/{conversation_id}", status_code=303)
        if action == "identify":
            conversation = await s.queues.held(conversation_id, me)
            chosen = next((p for p in askable(s, conversation) if p.tag == purpose), None)
            if chosen is None:
                raise BadRequestError(
                    "Identification can be asked only in a conversation you are in, for one of "
                    "its topics"
                )
            if conversation.channel == "phone" and links is not None:
                # The caller opens the question with a code read out to them (or texted, to
                # the number they tell the agent): shown only now.
                gateway = (texts or {}).get(slug)
                if number.strip() and gateway is None:
                    raise BadRequestError("No SMS gateway is configured here")
                if number.strip():
                    mobile_number(number)  # a typo fails before a code is spent
                code = await links[slug].identify_code(conversation_id, chosen, actor=f"agent:{me}")
                texted = ""
                if gateway is not None and number.strip():
                    texted = await text_code(s, conversation_id, gateway, number, code)
                return await panel(request, s, conversation_id, code=code, texted=texted)
            await s.queues.conversations.ask_identification(
                conversation_id, chosen, actor=f"agent:{me}"
            )
            return RedirectResponse(f"/agent/{slug}/c/{conversation_id}", status_code=303)
        raise NotFoundError("No such action")

    async def attribute_view(
        s: Seat, conversation_id: str, reveal: str = ""
    ) -> tuple[Conversation, dict[str, object], dict[str, object]]:
        """The conversation I hold, its attributes, and what the attribute panel shows of
        them (masked ones masked, ``reveal`` shown and audited): the console and the
        embedded panel alike. Reading them is an audited view."""
        me = s.agent.agent_id
        conversation = await s.queues.held(conversation_id, me)
        data: dict[str, object] | None = None
        store = s.queues.conversations
        if conversation.state in ("connected", "wrap_up"):
            conversation, data = await store.view(conversation_id, actor=f"agent:{me}")
        purpose = s.tenant.purpose(conversation.purpose)
        attrs = data.get("attributes") if data else None
        attrs = attrs if isinstance(attrs, dict) else {}
        sensitive = set(s.tenant.sensitive_attributes)
        if reveal:
            if reveal not in attrs or reveal not in sensitive:
                raise BadRequestError("That attribute cannot be revealed")
            now = clock()

            def log(conn: Any) -> None:
                audit(
                    conn,
                    now,
                    f"agent:{me}",
                    "attributes.reveal",
                    conversation_id,
                    {"attribute": reveal},
                    tenant=s.tenant.slug,
                )

            await store.db.run(log, write=True)
        order = purpose.attributes if purpose else tuple(attrs)
        rows = [
            {
                "name": name,
                "label": s.tenant.attribute_label(name, "nl"),
                "value": str(attrs[name]),
                "masked": name in sensitive and name != reveal,
            }
            for name in order
            if name in attrs
        ]
        view: dict[str, object] = {
            "s": s,
            "c": conversation,
            "purpose_label": purpose.label.nl
            if purpose and purpose.label
            else conversation.purpose,
            "rows": rows,
            "proven": ", ".join(str(r["label"]) for r in rows),
            "provenance": _provenance(s.tenant, data),
            "wrap_up_until": _time(conversation.wrap_up_until),
            "hijack_time": _time(conversation.hijack_at),
        }
        return conversation, attrs, view

    async def text_code(
        s: Seat, conversation_id: str, gateway: SmsGateway, number: str, code: str
    ) -> str:
        """Text the caller the link with their code; what the agent is told. Audited without
        the number; a failure leaves the code to be read out."""
        link = f"{settings.public_url}{s.tenant.prefix}/code?{urlencode({'code': code})}"
        minutes = s.tenant.phone.identify_code_minutes
        text = (
            f"{s.tenant.name}: identificeer u voor uw telefoongesprek via {link} "
            f"(code {code}, {minutes} minuten geldig). Niet gevraagd? Negeer dit bericht."
        )
        try:
            await gateway.send(number, text)
            sent, told = True, "De link is per sms verstuurd."
        except SmsFailedError as exc:
            sent, told = False, f"De sms is niet verstuurd ({exc.title}). Lees de code voor."
        now = clock()
        await s.queues.conversations.db.run(
            lambda conn: audit(
                conn,
                now,
                f"agent:{s.agent.agent_id}",
                "conversation.identify_sms",
                conversation_id,
                {"sent": sent},
                tenant=s.tenant.slug,
            ),
            write=True,
        )
        return told

    async def panel(
        request: Request,
        s: Seat,
        conversation_id: str,
        *,
        reveal: str = "",
        code: str = "",
        texted: str = "",
    ) -> HTMLResponse:
        me = s.agent.agent_id
        conversation, attrs, view = await attribute_view(s, conversation_id, reveal)
        store = s.queues.conversations
        # Through our own address: the panel's HTML never holds a masked value, and each use
        # is audited.
        links_out = [
            {"label": link.label, "url": f"/agent/{s.tenant.slug}/c/{conversation_id}/record/{n}"}
            for n, link in enumerate(s.tenant.record_links)
            if link.for_attributes(attrs) is not None
        ]
        return page(
            request,
            "agent_conversation.html",
            {
                **view,
                "offer_until": _time(conversation.offer_expires),
                "chat": await chat_context(s, conversation),
                "form": await form_context(s, conversation),
                "registration": await registration_context(s, conversation),
                "record_links": links_out,
                "callback": (
                    await store.callback_number(conversation_id, actor=f"agent:{me}")
                    if conversation.callback_at is not None
                    and conversation.state in ("connected", "wrap_up")
                    else None
                ),
                "transfer": await transfer_context(s, conversation),
                "identify": identify_context(s, conversation),
                "identify_code": " ".join(code[i : i + 3] for i in range(0, len(code), 3)),
                "identify_url": f"{settings.public_url}{s.tenant.prefix}/code",
                "code_minutes": s.tenant.phone.identify_code_minutes,
                "texted": texted,
                "can_text": slug_texts(s.tenant.slug) and conversation.channel == "phone",
                "video": video_context(s, conversation),
                **await line_context(s, conversation),
            },
            s.tenant,
        )

    def is_chat(tenant: Tenant, conversation: Conversation) -> bool:
        """Whether the conversation has a chat: the chat and video plugins (the queue's
        ``channel`` says how an agent is loaded, not which plugin serves the resident)."""
        method = tenant.comm_method(conversation.comm_method)
        return method is not None and method.plugin in ("chat", "video")

    def video_context(s: Seat, conversation: Conversation) -> dict[str, object] | None:
        """The video call of a video conversation I hold, while connected."""
        found = video.get((s.tenant.slug, conversation.comm_method))
        if found is None or conversation.state != "connected":
            return None
        return video_panel("agent", "nl", relay_only=found.relay_only, phone=None)

    async def chat_context(s: Seat, conversation: Conversation) -> dict[str, object] | None:
        """The chat window of a chat conversation I hold (connected or wrapping up)."""
        if not is_chat(s.tenant, conversation) or conversation.state not in (
            "connected",
            "wrap_up",
        ):
            return None
        base = f"/agent/{s.tenant.slug}/c/{conversation.id}"
        return {
            "me": "agent",
            "state_key": f"{conversation.state}/{conversation.identify_state or ''}",
            "page": base,
            "gone": f"/agent/{s.tenant.slug}/",
            "ws": f"{base}/chat",
            "say": f"{base}/say",
            "csrf": s.csrf,
            "transcript": "",
            "can_send": conversation.state == "connected",
            "typing_text": "De inwoner typt…",
            "you": "U",
            "other": "Inwoner",
            "label": "Uw bericht",
            "send": "Versturen",
            "download": "",
            "messages": await s.queues.conversations.vault.chat_since(conversation.id),
        }

    async def transfer_context(s: Seat, conversation: Conversation) -> dict[str, object] | None:
        """Where a conversation I am in can go: another queue, or a colleague (warm)."""
        if conversation.state != "connected":
            return None
        colleagues = await s.queues.colleagues(conversation, s.agent.agent_id)
        names = {agent_id: name for agent_id, name, _ in colleagues}
        pending = (
            conversation.transfer_to is not None and (conversation.transfer_expires or 0) > clock()
        )
        return {
            "queues": [
                {"tag": q.tag, "name": q.name.nl, "current": q.tag == conversation.queue}
                for q in s.tenant.all_queues
            ],
            "colleagues": [
                {"id": a, "name": n, "state": PRESENCE_NL.get(st, st)} for a, n, st in colleagues
            ],
            "pending": names.get(conversation.transfer_to or "", "een collega")
            if pending
            else None,
            "until": _time(conversation.transfer_expires) if pending else "",
        }

    def form_desk(s: Seat, conversation: Conversation) -> Forms | None:
        """The contact form a conversation came from, when its channel is the form plugin."""
        method = s.tenant.comm_method(conversation.comm_method)
        if method is None or method.plugin != "form":
            return None
        return forms_for(settings.public_url, method.tag, s.queues.conversations, s.queues)

    async def registration_context(s: Seat, conversation: Conversation) -> dict[str, object] | None:
        """Registering the contact in Klantinteracties: the button, or how far it got."""
        desk = (registrations or {}).get(s.tenant.slug)
        if desk is None or conversation.state not in ("connected", "wrap_up"):
            return None
        status = await desk.status(conversation.id)
        return {
            "status": status.text if status is not None else None,
            "state": status.state if status is not None else None,
            "can_request": status is None or status.state == "failed",
        }

    async def form_context(s: Seat, conversation: Conversation) -> dict[str, object] | None:
        """The question of a contact form I hold, and the answer form while I have it."""
        desk = form_desk(s, conversation)
        if desk is None:
            return None
        thread = await desk.thread(conversation.id) if conversation.state == "connected" else None
        return {
            "thread": thread,
            "action": f"/agent/{s.tenant.slug}/c/{conversation.id}/answer",
            "max_answer": desk.config.max_answer,
            "answered": conversation.state == "answered",
        }

    def askable(s: Seat, conversation: Conversation) -> list[Purpose]:
        """The purposes I may ask the resident in this chat to identify for: those of its
        channel that some method can prove; none unless I am in the chat."""
        by_phone = conversation.channel == "phone" and links is not None and s.tenant.slug in links
        if conversation.state != "connected" or not (is_chat(s.tenant, conversation) or by_phone):
            return []
        return [
            p
            for p in s.tenant.purposes
            if conversation.comm_method in p.allowed_comm and p.allowed_auth
        ]

    def identify_context(s: Seat, conversation: Conversation) -> dict[str, object] | None:
        """The question to identify, and how far an earlier one got."""
        purposes = [
            {"tag": p.tag, "label": p.label.nl if p.label else p.tag}
            for p in askable(s, conversation)
        ]
        if not purposes:
            return None
        asked = s.tenant.purpose(conversation.identify_purpose or "")
        return {
            "purposes": purposes,
            "state": conversation.identify_state,
            "purpose": (asked.label.nl if asked and asked.label else conversation.identify_purpose),
            "again": conversation.identified,
        }

    @router.websocket("/{slug}/c/{conversation_id}/chat")
    async def chat(ws: WebSocket, slug: str, conversation_id: str) -> None:
        """The agent's side of a chat they hold: the same socket as the resident's."""
        # A cookie-authenticated socket: refuse other origins (cross-site WebSocket hijacking).
        agent = await directory.session(ws.cookies.get(SESSION_COOKIE, ""))
        if ws.headers.get("origin") != origin or agent is None or slug not in tenants:
            await ws.close(code=4403)
            return
        if agent.membership(slug) is None:
            await ws.close(code=4403)
            return
        tenant, queues = tenants[slug]
        try:
            conversation = await queues.held(conversation_id, agent.agent_id)
        except IdContactError:
            await ws.close(code=4404)
            return
        if not is_chat(tenant, conversation):
            await ws.close(code=4404)
            return
        await ws.accept()
        await chat_socket(
            ws,
            queues.conversations,
            bus,
            conversation_id,
            "agent",
            agent_id=agent.agent_id,
            signalling=video.get((slug, conversation.comm_method)),
        )

    @router.get("/{slug}/c/{conversation_id}/record/{n}", response_class=RedirectResponse)
    async def record(request: Request, slug: str, conversation_id: str, n: int) -> Response:
        """Open the resident's record in the contact-centre system (``record_links``)."""
        s = await seat(request, slug)
        me = s.agent.agent_id
        conversation = await s.queues.held(conversation_id, me)
        if not 0 <= n < len(s.tenant.record_links) or conversation.state not in (
            "connected",
            "wrap_up",
        ):
            raise NotFoundError("No such link")
        data = await s.queues.conversations.attributes(conversation_id, actor=f"agent:{me}")
        attrs = data.get("attributes") if data else None
        url = s.tenant.record_links[n].for_attributes(attrs if isinstance(attrs, dict) else {})
        if url is None:
            raise NotFoundError("No such link")
        return RedirectResponse(url, status_code=303, headers={"Referrer-Policy": "no-referrer"})

    @router.get("/{slug}/c/{conversation_id}/line", response_class=HTMLResponse)
    async def line(request: Request, slug: str, conversation_id: str) -> HTMLResponse:
        """The phone line of a conversation I hold, for console.js: no attributes, not audited."""
        s = await seat(request, slug)
        me = s.agent.agent_id
        conversation = await s.queues.held(conversation_id, me)
        return page(request, "agent_line.html", await line_context(s, conversation), s.tenant)

    async def line_context(s: Seat, conversation: Conversation) -> dict[str, object]:
        me = s.agent.agent_id
        return {
            "s": s,
            "c": conversation,
            "hijack_time": _time(conversation.hijack_at),
            "link": _link(conversation.link_detail),
            "phone": (
                await directory.phone_endpoint(me) if conversation.channel == "phone" else None
            ),
            "base": f"/agent/{s.tenant.slug}",
        }

    @router.get("/{slug}/c/{conversation_id}", response_class=HTMLResponse, response_model=None)
    async def conversation_page(request: Request, slug: str, conversation_id: str) -> Response:
        """The attribute panel; opening it is an audited read."""
        try:
            s = await seat(request, slug)
        except LoginRequiredError:
            return RedirectResponse("/agent/login", status_code=303)
        return await panel(request, s, conversation_id)

    @router.get("/{slug}/stats", response_model=None)
    async def stats(request: Request, slug: str, format: str = "html") -> Response:
        """Queue statistics for supervisors: counts and times, no personal data."""
        s = await seat(request, slug)
        require(s, "supervisor")
        numbers = await s.queues.stats()
        phone: dict[str, int] | None = None
        if (
            links is not None
            and slug in links
            and any(m.channel == "phone" for m in s.tenant.comm_methods)
        ):
            failed, budget = await links[slug].failures()
            phone = {"failed_links_24h": failed, "failed_link_budget": budget}
        if format == "json":
            return JSONResponse({"queues": numbers, "phone": phone})
        return page(
            request,
            "agent_stats.html",
            {"s": s, "queues": numbers, "phone": phone, "base": f"/agent/{slug}"},
            s.tenant,
        )

    @router.get("/{slug}/audit.csv")
    async def audit_csv(request: Request, slug: str) -> Response:
        """The tenant's audit log for admins (ids, actions, pseudonyms; no values)."""
        s = await seat(request, slug)
        require(s, "admin")
        rows = await s.queues.conversations.db.run(lambda conn: list(events(conn, slug)))
        out = io.StringIO()
        write_csv(rows, out)
        return Response(
            out.getvalue(),
            media_type="text/csv",
            headers={"Content-Disposition": f'attachment; filename="audit-{slug}.csv"'},
        )

    return router


CALL_STATES_NL = {
    "waiting": "in de wachtrij",
    "ringing": "uw telefoon gaat over",
    "connected": "verbonden",
    "unreachable": "uw telefoon nam niet op",
    "ended": "opgehangen",
}


def _link(detail: Mapping[str, object] | None) -> dict[str, object] | None:
    """How a phone call was linked, in words for the agent (never a number or a code)."""
    if not detail:
        return None
    if detail.get("via") in ("webhook", "demo"):
        how = "code ingevoerd in het telefoonsysteem"
    elif "shown" not in detail:
        how = "niet gekoppeld: gebeld zonder (werkende) code"
    elif detail.get("shown"):
        how = "code van een webpagina (getypt, of met de telefoon gescand)"
    else:
        how = "de wallet-app belde zelf met de code (zelfde telefoon)"
    seconds = detail.get("seconds")
    return {
        "how": how,
        "seconds": seconds if isinstance(seconds, int) else None,
        "caller": "afgeschermd" if detail.get("caller") == "withheld" else "zichtbaar",
    }


ASSURANCE_NL = {"low": "laag", "substantial": "substantieel", "high": "hoog"}


def _provenance(tenant: Tenant, data: Mapping[str, object] | None) -> dict[str, str]:
    """Where the attributes come from, for the agent; what an original token cannot say is
    looked up from the key that verified it, or shown as unknown."""
    if not data:
        return {}
    given = data.get("provenance")
    given = given if isinstance(given, dict) else {}
    method = str(given.get("method_name") or given.get("method") or "")
    assurance = str(given.get("assurance") or "")
    if not method and data.get("kid") is None:
        # An original plugin's token (no kid, no provenance): known when one remote method
        # has a fallback key configured.
        remote = [m for m in tenant.auth_methods if m.signature_key is not None]
        if len(remote) == 1:
            method, assurance = remote[0].name, remote[0].assurance
    method = method or "onbekende methode"
    received = data.get("received_at")
    return {
        "method": method,
        "assurance": ASSURANCE_NL.get(assurance, assurance or "onbekend"),
        "issuer": str(given.get("issuer") or ""),
        "credential": str(given.get("credential") or ""),
        "at": (
            datetime.fromtimestamp(float(received), UTC).astimezone(ZONE).strftime("%d-%m-%Y %H:%M")
            if isinstance(received, int | float)
            else ""
        ),
    }
