"""The ``demo`` auth plugin: shares fixed demo attributes after the resident says yes.

It shows exactly which attributes will be shared, with "share" and "cancel"; cancel yields a
``failed`` result. It keeps no server-side state: the pending step is sealed into the URL.

With ``session_feedback = true`` its tokens carry a ``session_url`` (protocol §4.5), as a
login with a session at an identity provider would: the channel then reports the resident's
activity and logout there, and this plugin logs each report (its type only).
"""

from __future__ import annotations

import logging
import secrets
from typing import Any, ClassVar, Literal

from fastapi import APIRouter, Form, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse

from idcontact.errors import ConfigError
from idcontact.plugins.auth.common import (
    ClientUrl,
    StartAuthRequest,
    check_keys,
    deliver,
    provenance,
)
from idcontact.plugins.base import Kind, PluginContext
from idcontact.tokens import AuthResult
from idcontact.web.pages import TOKEN_PAGE_HEADERS, language, render
from idcontact.web.routing import Router

log = logging.getLogger(__name__)

DEFAULT_ATTRIBUTES = {
    "fullname": "Demi de Demo",
    "bsn": "999990019",
    "postcode": "6811AA",
    "city": "Arnhem",
    "municipality": "Arnhem",
    "birthyear": "1980",
    "over18": "yes",
    "email": "demi@example.org",
}
SEAL = "auth-demo"


class DemoAuthPlugin:
    kind: ClassVar[Kind] = "auth"

    def __init__(self, ctx: PluginContext, config: dict[str, Any]) -> None:
        check_keys(ctx, "demo")
        values = config.get("attributes", DEFAULT_ATTRIBUTES)
        if not isinstance(values, dict) or not all(isinstance(v, str) for v in values.values()):
            raise ConfigError("plugins.auth.demo.attributes: must map attribute tags to strings")
        self._ctx = ctx
        self._values: dict[str, str] = dict(values)
        self._session_feedback = bool(config.get("session_feedback", False))

    @property
    def router(self) -> APIRouter:
        router = Router(prefix=self._ctx.mount_path, tags=["auth plugin: demo"])
        ctx = self._ctx

        @router.post("/start_authentication", response_model=ClientUrl)
        async def start_authentication(body: StartAuthRequest) -> ClientUrl:
            """Start a demo disclosure of ``attributes``; answer where to send the browser."""
            body.check_for(self._values)
            state = ctx.sealer.seal(SEAL, body.model_dump(), max_age=900)
            return ClientUrl(client_url=f"{ctx.public_base}/confirm/{state}")

        @router.get("/confirm/{state}", response_class=HTMLResponse)
        async def confirm(request: Request, state: str) -> HTMLResponse:
            """The consent page: exactly what will be shared."""
            pending = ctx.sealer.unseal(SEAL, state)
            names = [str(a) for a in pending["attributes"]]  # type: ignore[attr-defined]
            lang = language(request, ctx.settings)
            rows = [(ctx.tenant.attribute_label(a, lang), self._values[a]) for a in names]
            return render(
                ctx.templates,
                request,
                "demo_auth_confirm.html",
                {"rows": rows, "action": f"{ctx.public_base}/confirm/{state}"},
                tenant=ctx.tenant,
                lang=lang,
                carries_token=True,
            )

        @router.post("/confirm/{state}", response_class=RedirectResponse, status_code=303)
        async def decide(
            state: str, action: Literal["share", "cancel"] = Form(...)
        ) -> RedirectResponse:
            """Share (success) or cancel (failed), then deliver and continue."""
            pending = StartAuthRequest.model_validate(ctx.sealer.unseal(SEAL, state))
            if action == "share":
                result = AuthResult(
                    status="success",
                    attributes={a: self._values[a] for a in pending.attributes},
                    provenance=provenance(ctx, issuer="demo"),
                    session_url=(
                        f"{ctx.internal_base}/session/{secrets.token_urlsafe(16)}"
                        if self._session_feedback
                        else None
                    ),
                )
            else:
                result = AuthResult(status="failed", attributes=None)
            target = await deliver(ctx, result, pending)
            return RedirectResponse(target, status_code=303, headers=TOKEN_PAGE_HEADERS)

        @router.post("/session/{session_id}", status_code=204, include_in_schema=False)
        async def session(
            session_id: str, type: Literal["user_active", "logout"] = Query()
        ) -> None:
            """Session feedback from a channel; the demo has no session to extend or end."""
            log.info("demo session feedback", extra={"feedback": type})

        return router
