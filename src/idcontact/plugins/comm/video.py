"""The ``video`` comm plugin: a 1:1 video call between the resident's and the agent's browser.

It is the chat channel (``plugins/comm/chat.py``) with a video call once an agent has
accepted: WebRTC between the two browsers, signalled over the chat's WebSocket of each side
(``web/video.py``), with media only through a TURN server by default, so neither side learns
the other's IP address. The chat stays: it is the way on when the camera or microphone is
refused (without a camera the call is audio only), when the connection fails, or after either
side stops the video.
"""

from __future__ import annotations

from typing import Any, ClassVar

from idcontact.conversations import Conversation
from idcontact.plugins.base import PluginContext
from idcontact.plugins.comm.chat import ChatCommPlugin
from idcontact.web.video import Signalling, panel, video_config


class VideoCommPlugin(ChatCommPlugin):
    template: ClassVar[str] = "video.html"

    def __init__(self, ctx: PluginContext, config: dict[str, Any]) -> None:
        super().__init__(ctx, config)
        settings, secret = video_config(ctx.method.tag, config)
        self._signalling = Signalling(settings, secret)

    async def _page_context(self, conversation: Conversation, lang: str) -> dict[str, object]:
        """The chat, and the video call while connected to an agent."""
        context = await super()._page_context(conversation, lang)
        if conversation.state == "connected" and self._signalling is not None:
            context["video"] = panel(
                "resident",
                lang,
                relay_only=self._signalling.relay_only,
                phone=self._ctx.tenant.phone_number,
            )
        return context
