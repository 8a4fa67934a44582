"""The ``demo`` comm plugin: the resident's waiting room, the page every channel builds on.

It stands in for the real channels (phone, chat, video) of later releases and exercises the
same services: attr_url slots, in-band ``?result=``, the vault, the queue, ending and deletion.
When the resident opens their page the conversation joins the queue (the resident is present
now). The page says which data the agent will see, never the values, and tells the resident
their place in line and the expected wait; ``/c/{id}/events`` keeps that up to date as
Server-Sent Events (ids, states and numbers only), for a small script without which the page
still works through its "refresh" link.
"""

from __future__ import annotations

import contextlib
import json
import math
import time
from collections.abc import AsyncIterator
from typing import Any, ClassVar
from urllib.parse import urlsplit

from fastapi import APIRouter, Form, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response, StreamingResponse
from pydantic import BaseModel, Field

from idcontact.conversations import CALLBACK, Conversation, Conversations
from idcontact.domain.lifecycle import State
from idcontact.errors import (
    BadRequestError,
    ConfigError,
    MethodNotAllowedForPurposeError,
)
from idcontact.events import Bus
from idcontact.plugins.base import Kind, PluginContext
from idcontact.plugins.comm.common import add_attr_route, purpose_of
from idcontact.queues import Place, QueueService
from idcontact.settings import PHONE_PATTERN, Purpose
from idcontact.web.citizen import opening_time, wait_minutes
from idcontact.web.pages import TOKEN_PAGE_HEADERS, language, render
from idcontact.web.routing import Router

MAX_TOKEN = 60_000
HEARTBEAT_SECONDS = 15.0
TOUCH_SECONDS = 120.0
STREAM_SECONDS = 60.0
"""A stream ends after this long and the browser reconnects: uvicorn's graceful shutdown waits
for open responses, so no stream may hold it up for long."""
RETRY_MS = 3000
LIVE: frozenset[State] = frozenset({"created", "authenticated", "waiting", "offered", "connected"})
"""The states in which the resident's page can still change; in any other the stream ends."""
STREAMED = ("state", "position", "beyond", "expected_seconds", "long_wait", "open")
"""The only fields a resident's stream carries: never attributes."""
STREAM_HEADERS = {"Cache-Control": "no-store", "X-Accel-Buffering": "no"}

TEXT: dict[str, dict[str, str]] = {
    "nl": {
        "demo": "Demokanaal: hier wacht u op een medewerker.",
        "agent_sees": "De medewerker ziet deze gegevens van u:",
        "not_shown": "Uw gegevens staan niet op deze pagina.",
        "unidentified": "U praat zonder u te identificeren. De medewerker ziet geen gegevens "
        "van u.",
        "overflowed": "De medewerkers voor dit onderwerp zijn nu niet bereikbaar. Een algemene "
        "medewerker helpt u; uw gegevens zijn daarom gewist en die medewerker ziet ze niet.",
        "created": "We wachten op uw gegevens…",
        "authenticated": "Uw gegevens zijn aangekomen.",
        "in_line": "U staat in de rij.",
        "position": "U bent nummer {n} in de rij.",
        "position_beyond": "Er staan meer dan {n} mensen voor u in de rij.",
        "wait": "Verwachte wachttijd: ongeveer {n} minuten.",
        "wait_one": "Verwachte wachttijd: ongeveer 1 minuut.",
        "wait_unknown": "Verwachte wachttijd: onbekend, want er is nu geen medewerker vrij.",
        "long": "U moet waarschijnlijk langer dan {m} wachten. U kunt ook bellen, of later "
        "terugkomen.",
        "minutes": "{n} minuten",
        "minute": "1 minuut",
        "long_short": "U moet waarschijnlijk lang wachten. U kunt ook bellen, of later terugkomen.",
        "closed": "We zijn nu gesloten. Een medewerker kan u pas helpen als we weer open zijn.",
        "closed_until": "We zijn nu gesloten. We zijn weer open vanaf {when}.",
        "offered": "Een medewerker neemt uw gesprek aan.",
        "connected": "U bent verbonden met een medewerker.",
        "ended": "Dit gesprek is beëindigd; uw gegevens zijn gewist.",
        "wrap_up": "Dit gesprek is beëindigd. De medewerker rondt het gesprek af en ziet uw "
        "gegevens daarvoor nog ten hoogste {n} minuten. Daarna worden ze gewist.",
        "failed": "Identificeren is geannuleerd of mislukt.",
        "ineligible": "Sorry, deze dienst is alleen voor inwoners van deelnemende gemeenten.",
        "retry": "Opnieuw proberen",
        "back": "Terug naar de onderwerpen",
        "refresh": "Vernieuwen",
        "call_us": "Ons telefoonnummer is {phone}.",
        "end": "Gesprek beëindigen",
        "callback_offer": "Liever niet wachten? Laat uw telefoonnummer achter; een medewerker "
        "belt u terug zodra u aan de beurt bent.",
        "callback_label": "Uw telefoonnummer",
        "callback_send": "Bel mij terug",
        "callback_done": "We bellen u terug op het nummer dat eindigt op {end}. U kunt deze "
        "pagina sluiten.",
    },
    "en": {
        "demo": "Demo channel: here you wait for an agent.",
        "agent_sees": "The agent will see this data about you:",
        "not_shown": "Your data is not shown on this page.",
        "unidentified": "You are talking without identifying. The agent sees no data about you.",
        "overflowed": "The employees for this topic cannot be reached now. A general employee "
        "helps you; your data has therefore been deleted and that employee does not see it.",
        "created": "Waiting for your data…",
        "authenticated": "Your data has arrived.",
        "in_line": "You are in the queue.",
        "position": "You are number {n} in the queue.",
        "position_beyond": "More than {n} people are ahead of you in the queue.",
        "wait": "Expected wait: about {n} minutes.",
        "wait_one": "Expected wait: about 1 minute.",
        "wait_unknown": "Expected wait: unknown, because no agent is free right now.",
        "long": "You will probably wait more than {m}. You can also call us, or come back later.",
        "minutes": "{n} minutes",
        "minute": "1 minute",
        "long_short": "You will probably wait a long time. You can also call us, or come back "
        "later.",
        "closed": "We are closed now. An agent can only help you once we are open again.",
        "closed_until": "We are closed now. We are open again from {when}.",
        "offered": "An agent is taking your conversation.",
        "connected": "You are connected to an agent.",
        "ended": "This conversation has ended; your data has been deleted.",
        "wrap_up": "This conversation has ended. The agent is finishing it and sees your data "
        "for at most {n} more minutes. Then it is deleted.",
        "failed": "Identification was cancelled or failed.",
        "ineligible": "Sorry, this service is only for residents of participating municipalities.",
        "retry": "Try again",
        "back": "Back to the topics",
        "refresh": "Refresh",
        "call_us": "Our phone number is {phone}.",
        "end": "End conversation",
        "callback_offer": "Rather not wait? Leave your phone number; an employee calls you back "
        "when it is your turn.",
        "callback_label": "Your phone number",
        "callback_send": "Call me back",
        "callback_done": "We will call you back on the number ending in {end}. You can close "
        "this page.",
    },
}


class StartCommRequest(BaseModel):
    purpose: str = Field(max_length=64)
    auth_result: str | None = Field(default=None, max_length=MAX_TOKEN)
    unidentified: bool = False
    """Talk without identifying (our extension; the core sends it only where allowed)."""


class StartCommResponse(BaseModel):
    client_url: str
    attr_url: str | None = None


def waiting_text(texts: dict[str, str], place: Place | None) -> str:
    """The live line of a waiting resident, from the texts of :meth:`DemoCommPlugin._texts`;
    ``waiting.js`` builds the same line from the same texts."""
    if place is None:
        return texts["in_line"]
    parts = [
        texts["position_beyond"].format(n=place.position - 1)
        if place.beyond
        else texts["position"].format(n=place.position)
    ]
    if not place.is_open:
        parts.append(texts["closed"])
    elif place.expected_seconds is None:
        parts.append(texts["wait_unknown"])
    else:
        minutes = wait_minutes(place.expected_seconds)
        parts.append(texts["wait_one"] if minutes == 1 else texts["wait"].format(n=minutes))
    if place.is_open and place.long_wait:
        parts.append(texts["long"])
    return " ".join(parts)


def sse(data: dict[str, object], *, retry: int | None = None) -> str:
    """One Server-Sent Event (a single ``data:`` line: the JSON has no newlines)."""
    head = f"retry: {retry}\n" if retry is not None else ""
    return f"{head}data: {json.dumps(data, separators=(',', ':'))}\n\n"


class DemoCommPlugin:
    kind: ClassVar[Kind] = "comm"
    template: ClassVar[str] = "demo_comm.html"
    """The resident's page; a channel built on this one extends it."""
    unidentified: ClassVar[bool] = True
    """Whether the channel can serve a resident who does not identify (where allowed)."""

    def __init__(self, ctx: PluginContext, config: dict[str, Any]) -> None:
        if ctx.conversations is None:
            raise ConfigError("comm plugin 'demo': needs the conversation store")
        self._ctx = ctx
        self._conversations: Conversations = ctx.conversations
        self._queues: QueueService | None = ctx.queues
        # Like the original comm-test: without attr_url, attributes arrive in-band (?result=).
        self._use_attr_url = bool(config.get("use_attr_url", True))
        self._base_path = urlsplit(ctx.public_base).path

    def _purpose(self, tag: str) -> Purpose:
        return purpose_of(self._ctx.tenant, tag)

    async def _created(self, conversation_id: str, purpose: Purpose) -> None:
        """A conversation of this channel was created (a channel sets up its own parts)."""

    async def _opened(self, conversation: Conversation) -> Conversation:
        """The resident opened their page: they are present now, so it joins the queue (an
        asynchronous channel joins later)."""
        if conversation.state == "authenticated" and self._queues is not None:
            return await self._queues.enqueue(
                conversation.id,
                actor=f"comm:{self._ctx.method.tag}:resident",
                current=conversation,
            )
        return conversation

    async def _page_context(self, conversation: Conversation, lang: str) -> dict[str, object]:
        """What a channel adds to the resident's page."""
        return {}

    def _lang_query(self, lang: str) -> str:
        """``?lang=en`` when the resident chose another language than the default."""
        return "" if lang == self._ctx.settings.default_language else f"?lang={lang}"

    async def _place(self, conversation: Conversation) -> Place | None:
        if self._queues is None or conversation.state != "waiting":
            return None
        return await self._queues.place(conversation)

    def _bus(self) -> Bus | None:
        # QueueService does not expose its bus yet; it is the bus the conversations publish on.
        return self._queues.bus if self._queues is not None else None

    def _texts(self, conversation: Conversation, lang: str) -> dict[str, str]:
        """The sentences of the live line, with this queue's numbers filled in."""
        t = TEXT[lang]
        queue = self._ctx.tenant.all_queues[0]
        if self._queues is not None:
            queue = self._queues.queue(conversation.queue)
        n = queue.long_wait_seconds // 60  # "more than": rounded down stays true
        m = t["minute"] if n == 1 else t["minutes"].format(n=n)
        phone = self._ctx.tenant.phone_number
        call_us = f" {t['call_us'].format(phone=phone)}" if phone else ""
        return {
            "in_line": t["in_line"],
            "position": t["position"],
            "position_beyond": t["position_beyond"],
            "wait": t["wait"],
            "wait_one": t["wait_one"],
            "wait_unknown": t["wait_unknown"],
            "long": (t["long"].format(m=m) if n else t["long_short"]) + call_us,
            "closed": t["closed"],
        }

    async def _closed_text(self, conversation: Conversation, lang: str) -> str:
        t = TEXT[lang]
        if self._queues is None:
            return t["closed"]
        estimate = await self._queues.estimate(conversation.queue)
        queue = self._queues.queue(conversation.queue)
        when = opening_time(estimate.opens_at, queue.time_zone, lang)
        return t["closed_until"].format(when=when) if when else t["closed"]

    async def _callback_context(
        self, conversation: Conversation, lang: str
    ) -> dict[str, object] | None:
        """While waiting: the offer to be called back instead, or that it was asked."""
        if conversation.state != "waiting":
            return None
        t = TEXT[lang]
        if conversation.callback_at is not None:
            found = await self._conversations.vault.chat_since(conversation.id, senders=(CALLBACK,))
            end = found[-1].text[-2:] if found else "…"
            return {"done": t["callback_done"].format(end=end)}
        return {
            "offer": t["callback_offer"],
            "label": t["callback_label"],
            "send": t["callback_send"],
            "action": f"{self._ctx.public_base}/c/{conversation.id}/callback"
            + self._lang_query(lang),
        }

    async def _snapshot(self, conversation_id: str) -> dict[str, object]:
        conversation = await self._conversations.get(conversation_id)
        if conversation.state in ("waiting", "offered") and (
            time.time() - conversation.last_activity > TOUCH_SECONDS
        ):
            # The page is open (the browser reconnects every STREAM_SECONDS): not idle.
            await self._conversations.touch(conversation_id)
        data: dict[str, object] = {"state": conversation.state}
        place = await self._place(conversation)
        if place is not None:
            data.update(
                position=place.position,
                beyond=place.beyond,
                expected_seconds=place.expected_seconds,
                long_wait=place.long_wait,
                open=place.is_open,
            )
        return data

    async def _stream(self, conversation_id: str, bus: Bus | None) -> AsyncIterator[str]:
        """The first event is the current state; then every change, until the state is final."""
        tenant = self._ctx.tenant.slug
        async with contextlib.AsyncExitStack() as stack:
            sub = None
            if bus is not None:  # subscribed before the snapshot, so no change falls between
                sub = await stack.enter_async_context(
                    bus.subscribe(tenant, "conversation", conversation_id)
                )
            last = await self._snapshot(conversation_id)
            yield sse(last, retry=RETRY_MS)
            if sub is None:
                return
            deadline = time.monotonic() + STREAM_SECONDS
            while last["state"] in LIVE and time.monotonic() < deadline:
                try:
                    event = await sub.next(HEARTBEAT_SECONDS)
                except ConnectionResetError:  # fell behind: end; the browser reconnects
                    return
                if event is None:
                    yield ": keep-alive\n\n"
                    continue
                data = {k: event.data[k] for k in STREAMED if k in event.data}
                if data.get("state") == "waiting" and "position" not in data:
                    data = await self._snapshot(conversation_id)  # back in line: where now?
                if "state" in data and data != last:
                    last = data
                    yield sse(data)

    @property
    def router(self) -> APIRouter:
        router = Router(prefix=self._ctx.mount_path, tags=["comm plugin: demo"])
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
                await self._created(conversation_id, purpose)
                return StartCommResponse(client_url=f"{ctx.public_base}/c/{conversation_id}")
            if body.unidentified and not (purpose.allow_unidentified and self.unidentified):
                raise MethodNotAllowedForPurposeError("This topic needs identification")
            conversation_id, slot = await conversations.create(
                purpose, tag, with_slot=self._use_attr_url, unidentified=body.unidentified
            )
            await self._created(conversation_id, purpose)
            if slot is None:
                return StartCommResponse(client_url=f"{ctx.public_base}/c/{conversation_id}")
            return StartCommResponse(
                client_url=f"{ctx.public_base}/c/{conversation_id}",
                attr_url=f"{ctx.internal_base}/attr/{slot}",
            )

        add_attr_route(router, conversations)

        @router.get("/c/{conversation_id}", response_class=HTMLResponse, response_model=None)
        async def landing(
            request: Request, conversation_id: str, result: str | None = None
        ) -> Response:
            """The waiting room; an in-band ``?result=`` is stored, then dropped from the URL.

            Opening it joins the queue: the resident is present now.
            """
            lang = language(request, ctx.settings)
            page = f"{ctx.public_base}/c/{conversation_id}{self._lang_query(lang)}"
            if result is not None:
                conversation = await conversations.get(conversation_id)
                if conversation.state == "created":
                    await conversations.deliver(conversation_id, result)
                return RedirectResponse(page, status_code=303, headers=TOKEN_PAGE_HEADERS)
            conversation = await self._opened(await conversations.get(conversation_id))
            purpose = self._purpose(conversation.purpose)
            t = TEXT[lang]
            texts = self._texts(conversation, lang)
            live_text = ""
            if conversation.state == "waiting":
                place = await self._place(conversation)
                if place is not None and not place.is_open:
                    texts["closed"] = await self._closed_text(conversation, lang)
                live_text = waiting_text(texts, place)
            wrap_up_minutes = max(1, math.ceil(ctx.tenant.wrap_up_seconds / 60))
            return render(
                ctx.templates,
                request,
                self.template,
                {
                    **await self._page_context(conversation, lang),
                    "state": conversation.state,
                    "identified": conversation.identified,
                    "overflowed": conversation.identify_state == "overflowed",
                    "purpose_label": purpose.label.get(lang) if purpose.label else purpose.tag,
                    # Which data the agent sees, in the purpose's order; never the values.
                    "labels": [ctx.tenant.attribute_label(k, lang) for k in purpose.attributes],
                    "t": t,
                    "texts": texts,
                    "live_text": live_text,
                    "wrap_up_text": t["wrap_up"].format(n=wrap_up_minutes),
                    "live": conversation.state in LIVE,
                    "events_url": f"{self._base_path}/c/{conversation_id}/events",
                    "refresh_url": page,
                    "home_url": f"{ctx.tenant.prefix}/{self._lang_query(lang)}",
                    "home": f"{ctx.tenant.prefix}/{self._lang_query(lang)}",
                    "end_action": (
                        f"{ctx.public_base}/c/{conversation_id}/end{self._lang_query(lang)}"
                    ),
                    "callback": await self._callback_context(conversation, lang),
                },
                tenant=ctx.tenant,
                lang=lang,
                carries_token=True,
            )

        # Not in the OpenAPI document: a stream that stays open is no API to generate calls
        # for (a fuzzer following the end redirect to a live conversation would hang on it).
        @router.get(
            "/c/{conversation_id}/events",
            response_class=StreamingResponse,
            include_in_schema=False,
        )
        async def events(conversation_id: str) -> StreamingResponse:
            """The waiting room's live updates, for ``waiting.js``: Server-Sent Events with the
            state, place in line and expected wait (never attributes), a comment every 15 s;
            the stream ends when the state is final. Unknown conversation: 404 problem+json."""
            await conversations.get(conversation_id)  # 404 before any stream starts
            return StreamingResponse(
                self._stream(conversation_id, self._bus()),
                media_type="text/event-stream",
                headers=STREAM_HEADERS,
            )

        @router.post(
            "/c/{conversation_id}/callback", response_class=RedirectResponse, status_code=303
        )
        async def callback(
            request: Request,
            conversation_id: str,
            number: str = Form(max_length=32, pattern=PHONE_PATTERN, min_length=3),
        ) -> RedirectResponse:
            """Rather called back than waiting: the number is kept sealed with the
            conversation, which keeps its place in line."""
            if sum(c.isdigit() for c in number) < 6:
                raise BadRequestError("That is not a phone number")
            await conversations.request_callback(
                conversation_id, number.strip(), actor=f"comm:{tag}:resident"
            )
            lang = language(request, ctx.settings)
            return RedirectResponse(
                f"{ctx.public_base}/c/{conversation_id}{self._lang_query(lang)}",
                status_code=303,
                headers=TOKEN_PAGE_HEADERS,
            )

        @router.post("/c/{conversation_id}/end", response_class=RedirectResponse, status_code=303)
        async def end(request: Request, conversation_id: str) -> RedirectResponse:
            """End the conversation: its data is deleted now, or after the agent's wrap-up."""
            await conversations.end(conversation_id, actor=f"comm:{tag}:resident", wrap_up=True)
            if self._queues is not None:
                self._queues.poke()  # the others in line move up
            lang = language(request, ctx.settings)
            return RedirectResponse(
                f"{ctx.public_base}/c/{conversation_id}{self._lang_query(lang)}", status_code=303
            )

        return router
