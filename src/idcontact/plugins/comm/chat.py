"""The ``chat`` comm plugin: the waiting room (the demo channel's page) with a chat window.

While waiting the resident sees their place in line and the expected wait, and may already
write; the agent who accepts sees the messages in the console and answers. The window works
over a WebSocket (``web/chat.py``: typing indicators, reconnect without losing a message) and,
without JavaScript, through a form and the page itself. The resident can download the
transcript until the conversation ends; then it is destroyed with the conversation (the
messages are in the vault, under the conversation's chat key).
"""

from __future__ import annotations

import functools
from typing import Any, ClassVar

from fastapi import APIRouter, Form, Request, WebSocket
from fastapi.responses import PlainTextResponse, RedirectResponse

from idcontact.conversations import Conversation
from idcontact.domain.lifecycle import InvalidTransitionError
from idcontact.errors import (
    BadRequestError,
    IdContactError,
)
from idcontact.plugins.base import PluginContext
from idcontact.plugins.comm.common import SessionFeedback
from idcontact.plugins.comm.demo import DemoCommPlugin
from idcontact.plugins.comm.identify import identify_context, start_identification
from idcontact.settings import Purpose
from idcontact.web.chat import CHATTING, MAX_TEXT, OPEN, chat_socket, post_message
from idcontact.web.pages import TOKEN_PAGE_HEADERS, language
from idcontact.web.video import Signalling

TEXT = {
    "nl": {
        "you": "U",
        "other": "Medewerker",
        "typing": "De medewerker typt…",
        "label": "Uw bericht",
        "send": "Versturen",
        "download": "Gesprek downloaden",
        "logout": "Uitloggen",
        "logout_hint": "Uitloggen wist uw gegevens bij de medewerker; het gesprek gaat door.",
    },
    "en": {
        "you": "You",
        "other": "Employee",
        "typing": "The employee is typing…",
        "label": "Your message",
        "send": "Send",
        "download": "Download the conversation",
        "logout": "Log out",
        "logout_hint": "Logging out deletes your data at the employee; the conversation goes on.",
    },
}


class ChatCommPlugin(DemoCommPlugin):
    template: ClassVar[str] = "chat.html"

    def __init__(self, ctx: PluginContext, config: dict[str, Any]) -> None:
        super().__init__(ctx, config)
        self._feedback = SessionFeedback(
            ctx.http,
            self._conversations,
            f"comm:{ctx.method.tag}",
            timeout=ctx.settings.plugin_timeout,
        )
        self._signalling: Signalling | None = None
        """A video channel's signalling, carried by the same socket (``plugins/comm/video``)."""

    async def _created(self, conversation_id: str, purpose: Purpose) -> None:
        # The chat key lives as long as the conversation may (its retention).
        await self._conversations.open_chat(conversation_id, purpose)

    async def _page_context(self, conversation: Conversation, lang: str) -> dict[str, object]:
        """The chat window, with the messages so far (readable without a script)."""
        t = TEXT[lang]
        base = f"{self._ctx.public_base}/c/{conversation.id}"
        can_log_out = conversation.identified and conversation.state in CHATTING
        return {
            "identify": identify_context(
                self._ctx.tenant,
                conversation,
                lang,
                action=f"{base}/identify{self._lang_query(lang)}",
                hint="hint_chat",
            ),
            "logout": {
                "action": base + "/logout" + self._lang_query(lang),
                "label": t["logout"],
                "hint": t["logout_hint"],
            }
            if can_log_out
            else None,
            "chat": {
                "state_key": f"{conversation.state}/{conversation.identify_state or ''}",
                "me": "resident",
                "page": base + self._lang_query(lang),
                "ws": f"{self._base_path}/c/{conversation.id}/ws",
                "say": base + "/say" + self._lang_query(lang),
                "transcript": base + "/transcript",
                "can_send": conversation.state in CHATTING,
                "typing_text": t["typing"],
                "you": t["you"],
                "other": t["other"],
                "label": t["label"],
                "send": t["send"],
                "download": t["download"],
                "messages": await self._conversations.vault.chat_since(conversation.id),
                "csrf": "",
            },
        }

    @property
    def router(self) -> APIRouter:
        router = super().router
        ctx, conversations = self._ctx, self._conversations
        tag = ctx.method.tag
        bus = self._bus()
        feedback = self._feedback

        def back(request: Request, conversation_id: str) -> RedirectResponse:
            lang = language(request, ctx.settings)
            return RedirectResponse(
                f"{ctx.public_base}/c/{conversation_id}{self._lang_query(lang)}",
                status_code=303,
                headers=TOKEN_PAGE_HEADERS,
            )

        @router.post("/c/{conversation_id}/identify", response_class=RedirectResponse)
        async def identify(
            request: Request,
            conversation_id: str,
            auth_method: str = Form(default="", max_length=64),
            decline: str = Form(default="", max_length=8),
        ) -> RedirectResponse:
            """The resident answers the agent's question to identify: with a method (to the
            auth plugin, and back to this page after) or "no, thank you"."""
            if decline:
                await conversations.decline_identification(
                    conversation_id, actor=f"comm:{tag}:resident"
                )
                return back(request, conversation_id)
            lang = language(request, ctx.settings)
            client_url = await start_identification(
                ctx,
                conversations,
                conversation_id,
                auth_method,
                comm_url=f"{ctx.public_base}/c/{conversation_id}{self._lang_query(lang)}",
            )
            feedback.forget(conversation_id)
            return RedirectResponse(client_url, status_code=303, headers=TOKEN_PAGE_HEADERS)

        @router.post("/c/{conversation_id}/logout", response_class=RedirectResponse)
        async def logout(request: Request, conversation_id: str) -> RedirectResponse:
            """Log out: the auth plugin hears it (§4.5) and the attributes are deleted."""
            conversation = await conversations.get(conversation_id)
            if not conversation.identified:
                raise InvalidTransitionError("There is no identification to log out of")
            await feedback.logout(conversation_id)
            await conversations.log_out(conversation_id, actor=f"comm:{tag}:resident")
            return back(request, conversation_id)

        @router.websocket("/c/{conversation_id}/ws")
        async def socket(ws: WebSocket, conversation_id: str) -> None:
            try:
                await conversations.get(conversation_id)
            except IdContactError:
                await ws.close(code=4404)
                return
            await ws.accept()
            if bus is None:
                await ws.close(code=1011)
                return
            await chat_socket(
                ws,
                conversations,
                bus,
                conversation_id,
                "resident",
                functools.partial(feedback.active, conversation_id),
                signalling=self._signalling,
            )

        @router.post("/c/{conversation_id}/say", response_class=RedirectResponse, status_code=303)
        async def say(
            request: Request, conversation_id: str, text: str = Form(max_length=MAX_TEXT)
        ) -> RedirectResponse:
            """Without JavaScript: send a message and see the page again."""
            conversation = await conversations.get(conversation_id)
            if conversation.state not in CHATTING:
                raise InvalidTransitionError("This conversation takes no more messages")
            if not text.strip():
                raise BadRequestError("The message is empty")
            await post_message(conversations, bus, conversation_id, "resident", text.strip())
            await feedback.active(conversation_id)
            return back(request, conversation_id)

        @router.get("/c/{conversation_id}/transcript", response_class=PlainTextResponse)
        async def transcript(request: Request, conversation_id: str) -> PlainTextResponse:
            """The conversation as text, for the resident to keep, until it ends."""
            conversation = await conversations.get(conversation_id)
            if conversation.state not in OPEN:
                raise InvalidTransitionError(
                    "This conversation has ended; its messages are deleted"
                )
            t = TEXT[language(request, ctx.settings)]
            lines = [
                f"{t['you'] if m.sender == 'resident' else t['other']}: {m.text}"
                for m in await conversations.vault.chat_since(conversation_id)
            ]
            return PlainTextResponse(
                "\n".join(lines) + "\n",
                headers={
                    "Content-Disposition": f'attachment; filename="{tag}-{conversation_id}.txt"',
                    "Cache-Control": "no-store",
                },
            )

        return router
