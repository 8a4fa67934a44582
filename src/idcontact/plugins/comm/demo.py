"""The ``demo`` comm plugin: a landing page that shows what arrived.

It stands in for the real channels (phone, chat, video) of later releases and exercises the
same conversation service: attr_url slots, in-band ``?result=``, the vault, ending and deletion.
"""

from __future__ import annotations

from typing import Any, ClassVar

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from pydantic import BaseModel, Field

from idcontact.conversations import Conversations
from idcontact.errors import (
    ConfigError,
    MethodNotAllowedForPurposeError,
    UnknownPurposeError,
    UnsupportedMediaTypeError,
)
from idcontact.plugins.base import Kind, PluginContext
from idcontact.settings import Purpose
from idcontact.web.pages import TOKEN_PAGE_HEADERS, language, render

MAX_TOKEN = 60_000


class StartCommRequest(BaseModel):
    purpose: str = Field(max_length=64)
    auth_result: str | None = Field(default=None, max_length=MAX_TOKEN)
    unidentified: bool = False
    """Talk without identifying (our extension; the core sends it only where allowed)."""


class StartCommResponse(BaseModel):
    client_url: str
    attr_url: str | None = None


class DemoCommPlugin:
    kind: ClassVar[Kind] = "comm"

    def __init__(self, ctx: PluginContext, config: dict[str, Any]) -> None:
        if ctx.conversations is None:
            raise ConfigError("comm plugin 'demo': needs the conversation store")
        self._ctx = ctx
        self._conversations: Conversations = ctx.conversations
        # Like the original comm-test: without attr_url, attributes arrive in-band (?result=).
        self._use_attr_url = bool(config.get("use_attr_url", True))

    def _purpose(self, tag: str) -> Purpose:
        purpose = self._ctx.tenant.purpose(tag)
        if purpose is None:
            raise UnknownPurposeError()
        return purpose

    @property
    def router(self) -> APIRouter:
        router = APIRouter(prefix=self._ctx.mount_path, tags=["comm plugin: demo"])
        ctx, conversations = self._ctx, self._conversations
        tag = ctx.method.tag

        @router.post(
            "/start_communication",
            response_model=StartCommResponse,
            response_model_exclude_none=True,
        )
        async def start_communication(body: StartCommRequest) -> StartCommResponse:
            """Create a conversation; with ``auth_result`` its attributes arrive at once."""
            purpose = self._purpose(body.purpose)
            if body.auth_result is not None:
                conversation_id = await conversations.create_with_token(
                    purpose, tag, body.auth_result
                )
                return StartCommResponse(client_url=f"{ctx.public_base}/c/{conversation_id}")
            if body.unidentified and not purpose.allow_unidentified:
                raise MethodNotAllowedForPurposeError("This topic needs identification")
            conversation_id, slot = await conversations.create(
                purpose, tag, with_slot=self._use_attr_url, unidentified=body.unidentified
            )
            if slot is None:
                return StartCommResponse(client_url=f"{ctx.public_base}/c/{conversation_id}")
            return StartCommResponse(
                client_url=f"{ctx.public_base}/c/{conversation_id}",
                attr_url=f"{ctx.internal_base}/attr/{slot}",
            )

        @router.post(
            "/attr/{slot}",
            openapi_extra={
                "requestBody": {
                    "required": True,
                    "content": {"application/jwt": {"schema": {"type": "string"}}},
                }
            },
        )
        async def receive_attributes(request: Request, slot: str) -> dict[str, str]:
            """Out-of-band delivery of an attribute token (``application/jwt``)."""
            media = request.headers.get("content-type", "").split(";")[0].strip().lower()
            if media != "application/jwt":
                raise UnsupportedMediaTypeError("Send the token as application/jwt")
            token = (await request.body()).decode("ascii", errors="replace").strip()
            state = await conversations.deliver_to_slot(slot, token)
            return {"state": state}

        @router.get("/c/{conversation_id}", response_class=HTMLResponse, response_model=None)
        async def landing(
            request: Request, conversation_id: str, result: str | None = None
        ) -> Response:
            """The resident's page; an in-band ``?result=`` is stored, then dropped from the URL."""
            if result is not None:
                conversation = await conversations.get(conversation_id)
                if conversation.state == "created":
                    await conversations.deliver(conversation_id, result)
                return RedirectResponse(
                    f"{ctx.public_base}/c/{conversation_id}",
                    status_code=303,
                    headers=TOKEN_PAGE_HEADERS,
                )
            lang = language(request, ctx.settings)
            conversation, data = await conversations.view(
                conversation_id, actor=f"comm:{tag}:landing"
            )
            purpose = self._purpose(conversation.purpose)
            attrs = data.get("attributes") if data else None
            attrs = attrs if isinstance(attrs, dict) else {}
            # In the purpose's order, as configured (name before BSN, say).
            rows = [
                (ctx.tenant.attribute_label(k, lang), str(attrs[k]))
                for k in purpose.attributes
                if k in attrs
            ]
            return render(
                ctx.templates,
                request,
                "demo_comm.html",
                {
                    "state": conversation.state,
                    "purpose_label": purpose.label.get(lang) if purpose.label else purpose.tag,
                    "rows": rows,
                    "end_action": f"{ctx.public_base}/c/{conversation_id}/end",
                },
                tenant=ctx.tenant,
                lang=lang,
                carries_token=True,
            )

        @router.post("/c/{conversation_id}/end", response_class=RedirectResponse, status_code=303)
        async def end(conversation_id: str) -> RedirectResponse:
            """End the conversation and delete its attributes now."""
            await conversations.end(conversation_id, actor=f"comm:{tag}:resident")
            return RedirectResponse(f"{ctx.public_base}/c/{conversation_id}", status_code=303)

        return router
