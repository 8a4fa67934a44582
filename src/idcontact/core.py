"""The core role: purposes, method discovery, session start and the two compatibility shims.

Wire-compatible with the original ID Contact core (reference §3.1, §4): the same endpoints,
JSON fields, ``Accept``-based JSON-or-303 answer, 5 s plugin timeouts, tel and attr-url shims.
The core holds no attributes: it only forwards opaque tokens.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import secrets
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any
from urllib.parse import parse_qs, urlsplit, urlunsplit

import httpx
from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates
from pydantic import BaseModel

from idcontact.agents.credentials import qr_svg
from idcontact.errors import (
    InvalidStartRequestError,
    MethodNotAllowedForPurposeError,
    PluginError,
    PluginTimeoutError,
    ServiceBusyError,
    TokenError,
    UnknownPurposeError,
    UnsupportedMediaTypeError,
)
from idcontact.keyring import KeyRing
from idcontact.plugins.base import INPROC_BASE, Kind
from idcontact.settings import (
    AuthMethod,
    CommMethod,
    Method,
    Purpose,
    Settings,
    Tenant,
)
from idcontact.tokens import sign_jwt, verify_jwt
from idcontact.web.pages import LANGUAGES, TOKEN_PAGE_HEADERS, language, render
from idcontact.web.routing import Router

log = logging.getLogger(__name__)

TEL_TOKEN_LIFETIME = 3600
TEL_COOKIE = "idc_tel"
SHIM_STATE_LIFETIME = 1800


class MethodProperties(BaseModel):
    tag: str
    name: str
    image_path: str


class SessionOptions(BaseModel):
    auth_methods: list[MethodProperties]
    comm_methods: list[MethodProperties]


_START_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {
                "schema": {
                    "oneOf": [
                        {
                            "type": "object",
                            "title": "StartRequestFull",
                            "required": ["purpose", "auth_method", "comm_method"],
                            "properties": {
                                "purpose": {"type": "string"},
                                "auth_method": {"type": "string"},
                                "comm_method": {"type": "string"},
                            },
                        },
                        {
                            "type": "object",
                            "title": "StartRequestUnidentified",
                            "required": ["purpose", "comm_method"],
                            "properties": {
                                "purpose": {"type": "string"},
                                "comm_method": {"type": "string"},
                            },
                        },
                        {
                            "type": "object",
                            "title": "StartRequestCommOnly",
                            "required": ["purpose", "auth_result", "comm_method"],
                            "properties": {
                                "purpose": {"type": "string"},
                                "auth_result": {"type": "string"},
                                "comm_method": {"type": "string"},
                            },
                        },
                    ]
                }
            },
            "application/jwt": {"schema": {"type": "string", "title": "StartRequestAuthOnly"}},
            "application/x-www-form-urlencoded": {
                "schema": {
                    "type": "object",
                    "required": ["purpose", "auth_method", "comm_method"],
                    "properties": {
                        "purpose": {"type": "string"},
                        "auth_method": {"type": "string"},
                        "comm_method": {"type": "string"},
                        "lang": {"type": "string", "enum": list(LANGUAGES)},
                    },
                }
            },
        },
    },
    "responses": {
        "200": {
            "description": "Where to send the browser (with Accept: application/json)",
            "content": {
                "application/json": {
                    "schema": {
                        "type": "object",
                        "title": "ClientUrlResponse",
                        "required": ["client_url"],
                        "properties": {"client_url": {"type": "string"}},
                    }
                }
            },
        },
        "303": {"description": "Redirect to the client URL"},
        "400": {"description": "Invalid request (problem+json)"},
        "413": {"description": "Body too large (problem+json)"},
        "415": {"description": "Unsupported content type (problem+json)"},
        "502": {"description": "A plugin failed or timed out (problem+json)"},
    },
}


class Core:
    """Session start logic; routes are in :meth:`router`."""

    def __init__(
        self,
        settings: Settings,
        tenant: Tenant,
        keys: KeyRing,
        http: httpx.AsyncClient,
        templates: Jinja2Templates,
        served: set[tuple[Kind, str]],
        clock: Callable[[], float] = time.time,
        local: Callable[[str, bytes], Awaitable[tuple[int, bytes]]] | None = None,
    ) -> None:
        """``local``: how to POST to an in-process plugin (``app.local_post``); without it
        those calls go through ``http`` as well."""
        self._settings = settings
        self._local = local
        self._tenant = tenant
        self.prefix = tenant.prefix
        self._keys = keys
        self._http = http
        self._templates = templates
        self._served = served
        self._clock = clock

    # -- lookups --------------------------------------------------------------------------

    def _purpose(self, tag: object) -> Purpose:
        purpose = self._tenant.purpose(tag) if isinstance(tag, str) else None
        if purpose is None:
            raise UnknownPurposeError()
        return purpose

    def _auth(self, purpose: Purpose, tag: object) -> AuthMethod:
        method = self._tenant.auth_method(tag) if isinstance(tag, str) else None
        if method is None or method.tag not in purpose.allowed_auth:
            raise MethodNotAllowedForPurposeError(
                "This auth method is not offered for this purpose"
            )
        return method

    def _comm(self, purpose: Purpose, tag: object) -> CommMethod:
        method = self._tenant.comm_method(tag) if isinstance(tag, str) else None
        if method is None or method.tag not in purpose.allowed_comm:
            raise MethodNotAllowedForPurposeError(
                "This comm method is not offered for this purpose"
            )
        return method

    def _url(self, kind: Kind, method: Method) -> str:
        if method.plugin is not None and (kind, method.tag) in self._served:
            return f"{INPROC_BASE}{self.prefix}/{kind}/{method.tag}"
        if method.start is None:
            raise PluginError(f"The {kind} method {method.tag!r} is not served here")
        return method.start

    def options(self, purpose: Purpose) -> SessionOptions:
        def props(m: Method) -> MethodProperties:
            return MethodProperties(tag=m.tag, name=m.name, image_path=m.image_path)

        auth = [m for m in self._tenant.auth_methods if m.tag in purpose.allowed_auth]
        comm = [m for m in self._tenant.comm_methods if m.tag in purpose.allowed_comm]
        return SessionOptions(
            auth_methods=[props(m) for m in auth], comm_methods=[props(m) for m in comm]
        )

    # -- plugin calls ---------------------------------------------------------------------

    async def _call(
        self, url: str, body: Mapping[str, object], *, client_token: bool = False
    ) -> dict[str, Any]:
        timeout = self._settings.plugin_timeout
        try:
            if self._local is not None and url.startswith(INPROC_BASE):
                async with asyncio.timeout(timeout):
                    status, content = await self._local(url, json.dumps(dict(body)).encode())
            else:
                response = await self._http.post(url, json=dict(body), timeout=timeout)
                status, content = response.status_code, response.content
        except (httpx.TimeoutException, TimeoutError):
            raise PluginTimeoutError() from None
        except httpx.HTTPError:
            raise PluginError("A plugin could not be reached") from None
        if status != 200:
            log.warning("plugin refused", extra={"plugin_status": status})
            if client_token and status == 400:
                # The caller's auth_result was refused: the caller's fault, not the plugin's.
                raise TokenError("The comm method did not accept the auth_result")
            if status == 503:  # e.g. too many phone codes live: try later
                raise ServiceBusyError()
            raise PluginError(f"A plugin answered with status {status}")
        try:
            data = json.loads(content)
        except ValueError:
            raise PluginError("A plugin answered with invalid JSON") from None
        if not isinstance(data, dict) or not isinstance(data.get("client_url"), str):
            raise PluginError("A plugin answered without a client_url")
        return data

    async def _post_token(self, attr_url: str, token: str, *, strict: bool = False) -> None:
        """Deliver a token to an attr_url server-side.

        The original ignores the answer; with ``strict`` (the caller's own ``auth_result``) a
        refusal is the caller's error, so the caller hears of it instead of waiting forever.
        """
        try:
            response = await self._http.post(
                attr_url,
                content=token,
                headers={"Content-Type": "application/jwt"},
                timeout=self._settings.plugin_timeout,
            )
        except httpx.TimeoutException:
            raise PluginTimeoutError() from None
        except httpx.HTTPError:
            raise PluginError("The comm plugin could not be reached") from None
        if response.status_code >= 300:
            log.warning("attr_url refused a token", extra={"plugin_status": response.status_code})
            if strict and response.status_code == 400:
                raise TokenError("The comm method did not accept the auth_result")

    async def start_communication(
        self,
        purpose: Purpose,
        comm: CommMethod,
        auth_result: str | None = None,
        *,
        shown_on_page: bool | None = None,
    ) -> dict[str, Any]:
        """``shown_on_page`` (our extension, ignored by original plugins): whether a ``tel:``
        continuation will be shown on the tel page, or go to a wallet that dials it itself;
        the phone channel gives a code shown on a page a longer window."""
        body: dict[str, object] = {"purpose": purpose.tag}
        if auth_result is not None:
            body["auth_result"] = auth_result
        if shown_on_page is not None:
            body["shown_on_page"] = shown_on_page
        return await self._call(
            f"{self._url('comm', comm)}/start_communication",
            body,
            client_token=auth_result is not None,
        )

    async def start_authentication(
        self,
        purpose: Purpose,
        auth: AuthMethod,
        continuation: str,
        attr_url: str | None,
        *,
        browser: str | None = None,
    ) -> str:
        """Call the auth plugin, applying the tel and attr-url shims first (in that order).

        ``browser``: the hash of the starting browser's binding cookie; the tel page shows the
        code only to that browser.
        """
        if auth.shim_tel_url and continuation.startswith("tel:"):
            now = int(self._clock())
            claims: dict[str, object] = {
                "continuation": continuation,
                "iat": now,
                "exp": now + TEL_TOKEN_LIFETIME,
            }
            if browser is not None:
                claims["bind"] = browser
            token = sign_jwt(claims, self._keys.ui_signing, typ=None)
            continuation = f"{self._settings.public_url}{self.prefix}/tel/{token}"
        if auth.disable_attr_url and attr_url is not None:
            now = int(self._clock())
            state = sign_jwt(
                {
                    "attr_url": attr_url,
                    "continuation": continuation,
                    "iat": now,
                    "exp": now + SHIM_STATE_LIFETIME,
                },
                self._keys.internal_key,
            )
            continuation = f"{self._settings.public_url}{self.prefix}/auth_attr_shim/{state}"
            attr_url = None
        body: dict[str, object] = {
            "attributes": list(purpose.attributes),
            "continuation": continuation,
        }
        if attr_url is not None:
            body["attr_url"] = attr_url
        data = await self._call(f"{self._url('auth', auth)}/start_authentication", body)
        return str(data["client_url"])

    # -- the four start forms -------------------------------------------------------------

    async def start_full(
        self, body: Mapping[str, object], *, lang: str | None = None, browser: str | None = None
    ) -> str:
        """``lang``: the resident's language choice, carried to the auth and comm pages;
        ``browser``: see :meth:`start_authentication`."""
        purpose = self._purpose(body.get("purpose"))
        auth = self._auth(purpose, body.get("auth_method"))
        comm = self._comm(purpose, body.get("comm_method"))
        started = await self.start_communication(purpose, comm, shown_on_page=auth.shim_tel_url)
        attr_url = started.get("attr_url")
        client_url = await self.start_authentication(
            purpose,
            auth,
            with_language(str(started["client_url"]), lang),
            attr_url if isinstance(attr_url, str) else None,
            browser=browser,
        )
        return with_language(client_url, lang)

    async def start_unidentified(self, body: Mapping[str, object]) -> str:
        """Talk without identifying: only the channel starts (where the purpose allows it).

        An extension of the original protocol: the comm plugin gets ``"unidentified": true``,
        which original plugins ignore.
        """
        purpose = self._purpose(body.get("purpose"))
        comm = self._comm(purpose, body.get("comm_method"))
        if not purpose.allow_unidentified:
            raise MethodNotAllowedForPurposeError("This topic needs identification")
        started = await self._call(
            f"{self._url('comm', comm)}/start_communication",
            {"purpose": purpose.tag, "unidentified": True},
        )
        return str(started["client_url"])

    async def start_comm_only(self, body: Mapping[str, object]) -> str:
        purpose = self._purpose(body.get("purpose"))
        comm = self._comm(purpose, body.get("comm_method"))
        auth_result = body.get("auth_result")
        if not isinstance(auth_result, str) or not auth_result or len(auth_result) > 60_000:
            raise InvalidStartRequestError("auth_result must be a compact JWE")
        if not comm.disable_attributes_at_start:
            started = await self.start_communication(purpose, comm, auth_result)
            return str(started["client_url"])
        started = await self.start_communication(purpose, comm)
        client_url = str(started["client_url"])
        attr_url = started.get("attr_url")
        if isinstance(attr_url, str):
            await self._post_token(attr_url, auth_result, strict=True)
            return client_url
        return append_result(client_url, auth_result)

    async def start_auth_only(self, token: str) -> str:
        claims = verify_jwt(
            token,
            self._keys.authonly_request_keys,
            leeway=self._settings.token_leeway,
            clock=self._clock,
        )
        request = claims.get("request")
        if not isinstance(request, dict):
            raise InvalidStartRequestError("The signed request has no 'request' claim")
        purpose = self._purpose(request.get("purpose"))
        auth = self._auth(purpose, request.get("auth_method"))
        comm_url = request.get("comm_url")
        attr_url = request.get("attr_url")
        if not isinstance(comm_url, str) or (
            attr_url is not None and not isinstance(attr_url, str)
        ):
            raise InvalidStartRequestError("comm_url and attr_url must be strings")
        return await self.start_authentication(purpose, auth, comm_url, attr_url)

    async def attr_shim(self, state: str, result: str) -> str:
        claims = verify_jwt(
            state,
            {},
            fallback_key=self._keys.internal_key,
            leeway=self._settings.token_leeway,
            clock=self._clock,
            allowed_algs=("HS256",),
        )
        attr_url, continuation = claims.get("attr_url"), claims.get("continuation")
        if not isinstance(attr_url, str) or not isinstance(continuation, str):
            raise InvalidStartRequestError("The shim state is incomplete")
        await self._post_token(attr_url, result)
        return continuation

    def tel_continuation(self, token: str) -> tuple[str, str | None]:
        """The ``tel:`` continuation and the hash of the browser it is bound to."""
        claims = verify_jwt(
            token,
            {},
            fallback_key=self._keys.ui_signing,
            leeway=self._settings.token_leeway,
            clock=self._clock,
        )
        continuation = claims.get("continuation")
        if not isinstance(continuation, str) or not continuation.startswith("tel:"):
            raise TokenError("The tel token carries no tel: continuation")
        bind = claims.get("bind")
        return continuation, bind if isinstance(bind, str) else None

    # -- routes ---------------------------------------------------------------------------

    def router(self) -> APIRouter:
        router = Router(prefix=self.prefix, tags=["core"])

        @router.get("/session_options", response_model=dict[str, SessionOptions])
        async def all_session_options() -> dict[str, SessionOptions]:
            """Methods per purpose, for every purpose."""
            return {p.tag: self.options(p) for p in self._tenant.purposes}

        @router.get(
            "/session_options/{purpose}",
            response_model=SessionOptions,
            responses={400: {"description": "Unknown purpose (problem+json)"}},
        )
        async def session_options(purpose: str) -> SessionOptions:
            """The auth and comm methods offered for one purpose."""
            return self.options(self._purpose(purpose))

        @router.post("/start", openapi_extra=_START_BODY, response_model=None)
        async def start(request: Request) -> Response:
            """Start a session: full (JSON or form), comm-only (JSON) or auth-only (signed JWT)."""
            media = request.headers.get("content-type", "").split(";")[0].strip().lower()
            raw = await request.body()
            # The browser that starts is the only one the tel page will show a code to.
            binding = request.cookies.get(TEL_COOKIE) or ""
            fresh = not _valid_binding(binding)
            if fresh:
                binding = secrets.token_urlsafe(24)
            browser = _sha256(binding)
            if media == "application/json":
                body = _json_object(raw)
                if all(
                    isinstance(body.get(k), str) for k in ("purpose", "auth_method", "comm_method")
                ):
                    client_url = await self.start_full(body, browser=browser)
                elif all(
                    isinstance(body.get(k), str) for k in ("purpose", "auth_result", "comm_method")
                ):
                    client_url = await self.start_comm_only(body)
                elif (
                    isinstance(body.get("purpose"), str)
                    and isinstance(body.get("comm_method"), str)
                    and "auth_method" not in body
                    and "auth_result" not in body
                ):
                    client_url = await self.start_unidentified(body)
                else:
                    raise InvalidStartRequestError(
                        "Send purpose, auth_method and comm_method, "
                        "or purpose, auth_result and comm_method"
                    )
            elif media == "application/jwt":
                try:
                    token = raw.decode("ascii").strip()
                except UnicodeDecodeError:
                    raise InvalidStartRequestError(
                        "The signed request is not a compact JWS"
                    ) from None
                client_url = await self.start_auth_only(token)
            elif media == "application/x-www-form-urlencoded":
                form = _form(raw)
                # The topic page's language goes along, unless it is the default anyway.
                lang = form.get("lang")
                chosen = (
                    lang
                    if isinstance(lang, str)
                    and lang in LANGUAGES
                    and lang != self._settings.default_language
                    else None
                )
                # The topic page's "without identifying" choice sends an empty auth_method.
                if "auth_method" in form:
                    client_url = await self.start_full(form, lang=chosen, browser=browser)
                else:
                    client_url = with_language(await self.start_unidentified(form), chosen)
            else:
                raise UnsupportedMediaTypeError(
                    "Use application/json, application/jwt or application/x-www-form-urlencoded"
                )
            answer: Response
            if request.headers.get("accept") == "application/json":
                answer = JSONResponse({"client_url": client_url}, headers=TOKEN_PAGE_HEADERS)
            else:
                answer = RedirectResponse(client_url, status_code=303, headers=TOKEN_PAGE_HEADERS)
            if fresh:
                answer.set_cookie(
                    TEL_COOKIE,
                    binding,
                    max_age=TEL_TOKEN_LIFETIME,
                    path=f"{self.prefix}/tel/",
                    secure=self._settings.public_url.startswith("https://"),
                    httponly=True,
                    samesite="lax",  # sent on the auth plugin's redirect back to us
                )
            return answer

        @router.get("/auth_attr_shim/{state}", status_code=303, response_class=RedirectResponse)
        async def auth_attr_shim(state: str, result: str) -> RedirectResponse:
            """Deliver ``result`` to the attr_url sealed in ``state``, then go on."""
            continuation = await self.attr_shim(state, result)
            return RedirectResponse(continuation, status_code=303, headers=TOKEN_PAGE_HEADERS)

        @router.get("/tel/{token}", response_class=HTMLResponse)
        async def tel_page(request: Request, token: str) -> HTMLResponse:
            """The number and code to call, from a signed tel: continuation; shown only in
            the browser that started (its binding cookie), never to whoever has the link."""
            continuation, bind = self.tel_continuation(token)
            lang = language(request, self._settings)
            binding = request.cookies.get(TEL_COOKIE, "")
            if bind is None or not hmac.compare_digest(bind, _sha256(binding)):
                response = render(
                    self._templates,
                    request,
                    "tel.html",
                    {"refused": True},
                    tenant=self._tenant,
                    lang=lang,
                    carries_token=True,
                )
                response.status_code = 403
                return response
            number, code = split_tel(continuation)
            return render(
                self._templates,
                request,
                "tel.html",
                {
                    "number": number,
                    "code": code,
                    "code_groups": group_digits(code),
                    "tel_uri": continuation,
                    "qr": qr_svg(continuation, "QR-code: bel het nummer met de code"),
                },
                tenant=self._tenant,
                lang=lang,
                carries_token=True,
            )

        return router


def _json_object(raw: bytes) -> dict[str, object]:
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise InvalidStartRequestError("The body is not valid JSON") from None
    if not isinstance(body, dict):
        raise InvalidStartRequestError("The body must be a JSON object")
    return body


def _form(raw: bytes) -> dict[str, object]:
    try:
        parsed = parse_qs(raw.decode("utf-8"), max_num_fields=20, strict_parsing=False)
    except (UnicodeDecodeError, ValueError):
        raise InvalidStartRequestError("The form is not valid") from None
    return {k: v[0] for k, v in parsed.items() if v}


def append_result(url: str, token: str) -> str:
    """In-band delivery: ``?result=`` or ``&result=`` when the URL has a query already."""
    return f"{url}{'&' if '?' in url else '?'}result={token}"


def with_language(url: str, lang: str | None) -> str:
    """``url`` with ``lang=`` in its query (http(s) URLs only; ``tel:`` stays as it is)."""
    if lang is None:
        return url
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https"):
        return url
    # Added to the query as it is (not re-encoded): a plugin's own parameters stay untouched.
    query = f"{parts.query}&lang={lang}" if parts.query else f"lang={lang}"
    return urlunsplit(parts._replace(query=query))


def _sha256(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


def _valid_binding(value: str) -> bool:
    return 24 <= len(value) <= 64 and all(c.isalnum() or c in "-_" for c in value)


def group_digits(code: str) -> list[str]:
    """``1234567890`` → ``["123", "456", "7890"]``: easier to read aloud and to type."""
    if len(code) <= 4:
        return [code] if code else []
    head, rest = code[:3], code[3:]
    return [head, *group_digits(rest)] if len(rest) > 4 else [head, rest]


def split_tel(uri: str) -> tuple[str, str]:
    """``tel:+31201234567,1234567890`` → number and DTMF code (separators ``,`` ``;`` ``|``)."""
    rest = uri[len("tel:") :]
    for sep in (",", ";", "|"):
        if sep in rest:
            number, code = rest.split(sep, 1)
            return number, code.lstrip(",;|")
    return rest, ""
