"""The ``chat`` comm plugin: the waiting room (the demo channel's page) with a chat window.

While waiting the resident sees their place in line and the expected wait, and may already
write; the agent who accepts sees the messages in the console and answers. The window works
over a WebSocket (``web/chat.py``: typing indicators, reconnect without losing a message) and,
without JavaScript, through a form and the page itself. The resident can download the
transcript until the conversation ends; then it is destroyed with the conversation (the
messages are in the vault, under the conversation's chat key).
"""

from __future__ import annotations

from typing import Any, ClassVar

from fastapi import APIRouter, Form, Request, WebSocket
from fastapi.responses import PlainTextResponse, RedirectResponse

from idcontact.conversations import Conversation
from idcontact.domain.lifecycle import InvalidTransitionError
from idcontact.errors import BadRequestError, IdContactError
from idcontact.plugins.base import PluginContext
from idcontact.plugins.comm.demo import DemoCommPlugin
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
    },
    "en": {
        "you": "You",
        "other": "Employee",
        "typing": "The employee is typing…",
        "label": "Your message",
        "send": "Send",
        "download": "Download the conversation",
    },
}


class ChatCommPlugin(DemoCommPlugin):
    template: ClassVar[str] = "chat.html"

    def __init__(self, ctx: PluginContext, config: dict[str, Any]) -> None:
        super().__init__(ctx, config)
        self._signalling: Signalling | None = None
        """A video channel's signalling, carried by the same socket (``plugins/comm/video``)."""

    async def _created(self, conversation_id: str, purpose: Purpose) -> None:
        # The chat key lives as long as the conversation may (its retention).
        await self._conversations.vault.open_chat(conversation_id, purpose.retention_minutes * 60)

    async def _page_context(self, conversation: Conversation, lang: str) -> dict[str, object]:
        """The chat window, with the messages so far (readable without a script)."""
        t = TEXT[lang]
        base = f"{self._ctx.public_base}/c/{conversation.id}"
        return {
            "chat": {
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
            }
        }

    @property
    def router(self) -> APIRouter:
        router = super().router
        ctx, conversations = self._ctx, self._conversations
        tag = ctx.method.tag
        bus = self._bus()

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
            await chat_socket(ws, conversations, bus, conversation_id, "resident", self._signalling)

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
            lang = language(request, ctx.settings)
            return RedirectResponse(
                f"{ctx.public_base}/c/{conversation_id}{self._lang_query(lang)}",
                status_code=303,
                headers=TOKEN_PAGE_HEADERS,
            )

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
