"""One side of a chat over a WebSocket: the resident's (the ``chat`` channel) or the agent's (the
console). Both run :func:`chat_socket`.

Frames are JSON. From the browser: ``{"type": "message", "text": …}`` and ``{"type":
"typing"}``. To it: ``{"type": "message", "seq", "from", "text", "at"}``, ``{"type":
"typing", "from"}`` and ``{"type": "state", "state"}``. A browser that (re)connects with
``?after=<last seq it has>`` gets what it missed first, so a reconnect loses nothing. A video
conversation's sockets carry its WebRTC signalling too (``signal`` and ``ice`` frames, see
``web/video.py``): one authenticated socket per side.

Messages are stored encrypted in the vault; the bus carries only their numbers, so the text
never leaves this process except to the two browsers (and never reaches Redis or a log).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Literal

from fastapi import WebSocket, WebSocketDisconnect

from idcontact.conversations import Conversations
from idcontact.errors import IdContactError
from idcontact.events import Bus, Event
from idcontact.storage.vault import ChatMessage
from idcontact.web.video import MAX_SIGNAL, SIGNALS_PER_MINUTE, Signalling

Side = Literal["resident", "agent"]
MAX_TEXT = 2000
MAX_FRAME = 8192
CHATTING = frozenset({"waiting", "offered", "connected"})
"""States in which messages may be sent (a waiting resident may already write)."""
OPEN = frozenset({"created", "authenticated", "waiting", "offered", "connected", "wrap_up"})


@dataclass
class _Seen:
    """A socket's view of its conversation: its state and who holds it."""

    state: str
    holder: str | None


async def chat_socket(
    ws: WebSocket,
    conversations: Conversations,
    bus: Bus,
    conversation_id: str,
    side: Side,
    activity: Callable[[], Awaitable[None]] | None = None,
    *,
    agent_id: str | None = None,
    signalling: Signalling | None = None,
) -> None:
    """Serve one accepted WebSocket until either side leaves or the conversation closes;
    ``activity`` is awaited after each message this side sends (session feedback). The agent's
    socket (``agent_id``) closes with 4404 as soon as the conversation is transferred away.
    With ``signalling``, relay a video call's signals between the two sides too."""
    tenant = conversations.tenant.slug
    try:
        after = max(0, int(ws.query_params.get("after", "0")))
    except ValueError:
        after = 0
    # The room keeps what is posted here, for this socket and the other side's: a message
    # announced on the bus then needs no read of the vault.
    with conversations.vault.chat_room(conversation_id):
        async with bus.subscribe(tenant, "conversation", conversation_id) as sub:
            current = await conversations.get(conversation_id)
            state: str = current.state
            # Kept current by the conversation's own events (every change publishes its state and
            # holder), so a message needs no read of the conversation.
            seen = _Seen(state, current.agent_id)
            await ws.send_json(_state_frame(state, current.identify_state))
            if signalling is not None and state == "connected":
                await ws.send_json(signalling.ice())
            after = await _send_since(ws, conversations, conversation_id, after)
            if state not in OPEN:
                await ws.close()
                return
            # One task reads the browser; this one waits on the bus alone. The reader wakes it
            # when the browser leaves: no task per event, and nothing promoted to the collector's
            # oldest generation per message (its full walks are what stalled the chat, see
            # docs/operations.md).
            reader = asyncio.create_task(
                _read(
                    ws,
                    conversations,
                    bus,
                    conversation_id,
                    side,
                    activity,
                    agent_id,
                    signalling,
                    seen,
                )
            )
            reader.add_done_callback(lambda _: sub.wake())
            try:
                while not reader.done():
                    try:
                        event = await sub.next()
                    except ConnectionResetError:
                        break  # fell behind: the browser reconnects and catches up
                    if event is None:
                        continue
                    if agent_id is not None and event.data.get("holder", agent_id) != agent_id:
                        with contextlib.suppress(RuntimeError):
                            await ws.close(code=4404)
                        break
                    if "chat" in event.data:
                        upto = event.data["chat"]
                        after = await _send_since(
                            ws,
                            conversations,
                            conversation_id,
                            after,
                            upto if isinstance(upto, int) else None,
                        )
                    elif event.data.get("typing") and event.data["typing"] != side:
                        await ws.send_json({"type": "typing", "from": event.data["typing"]})
                    elif "signal" in event.data:
                        if event.data.get("from") != side:
                            await ws.send_json({"type": "signal", "data": event.data["signal"]})
                    elif "state" in event.data:
                        state = str(event.data["state"])
                        seen.state = state
                        holder = event.data.get("holder")
                        seen.holder = str(holder) if holder is not None else None
                        await ws.send_json(_state_frame(state, event.data.get("identify")))
                        if signalling is not None and state == "connected":
                            await ws.send_json(signalling.ice())
                        if state not in OPEN:
                            break
            except (WebSocketDisconnect, RuntimeError):
                pass
            finally:
                reader.cancel()
                with contextlib.suppress(asyncio.CancelledError, WebSocketDisconnect, RuntimeError):
                    await reader
                # The browser may have gone already (it closed the socket): nothing to close then.
                with contextlib.suppress(RuntimeError, WebSocketDisconnect):
                    await ws.close()


async def post_message(
    conversations: Conversations, bus: Bus | None, conversation_id: str, side: Side, text: str
) -> ChatMessage:
    """Store a message (which marks the conversation active: not idle) and tell both sides its
    number; the socket and the forms without script all send through here."""
    message = await conversations.vault.append_chat(conversation_id, side, text)
    if bus is not None:
        event = Event(
            conversations.tenant.slug,
            "conversation",
            conversation_id,
            {"chat": message.seq, "from": side},
            message.at,
        )
        await bus.publish(event)
    return message


async def _send_since(
    ws: WebSocket,
    conversations: Conversations,
    conversation_id: str,
    after: int,
    upto: int | None = None,
) -> int:
    """Send the messages after number ``after`` (up to ``upto``, the number the bus announced,
    when known: the room may hold them); returns the last number sent."""
    messages = await conversations.vault.chat_since(conversation_id, after, upto=upto)
    for m in messages:
        await ws.send_json(
            {"type": "message", "seq": m.seq, "from": m.sender, "text": m.text, "at": m.at}
        )
        after = m.seq
    return after


def _state_frame(state: str, identify: object) -> dict[str, object]:
    """The conversation's state, with how far an identification asked in it is: the page
    shows other things for each (the browser asks the server for it again)."""
    frame: dict[str, object] = {"type": "state", "state": state}
    if identify is not None:
        frame["identify"] = identify
    return frame


async def _read(
    ws: WebSocket,
    conversations: Conversations,
    bus: Bus,
    conversation_id: str,
    side: Side,
    activity: Callable[[], Awaitable[None]] | None,
    agent_id: str | None,
    signalling: Signalling | None,
    seen: _Seen,
) -> None:
    """What the browser sends, until it leaves; a bad frame gets an error frame, not a drop.
    Its leaving ends this task with no exception: a task that ends in one holds its traceback,
    whose frames hold the task, and that cycle keeps the whole socket for a full collection."""
    tenant = conversations.tenant.slug
    limit = MAX_FRAME if signalling is None else MAX_SIGNAL
    signals: list[float] = []
    while True:
        try:
            raw = await ws.receive_text()
        except (WebSocketDisconnect, RuntimeError):
            return
        try:
            frame = json.loads(raw) if len(raw) <= limit else None
        except ValueError:
            frame = None
        kind = frame.get("type") if isinstance(frame, dict) else None
        if kind == "signal" and signalling is not None and isinstance(frame, dict):
            now = time.monotonic()
            signals[:] = [t for t in signals if now - t < 60.0] + [now]
            error = (
                "too-many-signals"
                if len(signals) > SIGNALS_PER_MINUTE
                else await _relay(
                    conversations, bus, conversation_id, side, signalling, frame, agent_id
                )
            )
            if error:
                await ws.send_json({"type": "error", "error": error})
            continue
        if kind == "typing":
            await bus.publish(
                Event(tenant, "conversation", conversation_id, {"typing": side}, time.time())
            )
            continue
        text = frame.get("text") if isinstance(frame, dict) else None
        text = text.strip() if isinstance(text, str) else None
        if kind != "message" or not text or len(text) > MAX_TEXT:
            await ws.send_json({"type": "error", "error": "bad-frame"})
            continue
        try:
            if seen.state not in CHATTING or (agent_id is not None and seen.holder != agent_id):
                await ws.send_json({"type": "error", "error": "closed"})
                continue
            await post_message(conversations, bus, conversation_id, side, text)
            if activity is not None:
                await activity()
        except IdContactError:
            await ws.send_json({"type": "error", "error": "closed"})


async def _relay(
    conversations: Conversations,
    bus: Bus,
    conversation_id: str,
    side: Side,
    signalling: Signalling,
    frame: dict[str, object],
    agent_id: str | None,
) -> str | None:
    """Pass one signal to the other side (never stored, never logged); the error, if any.
    An agent's socket relays only while that agent holds the conversation."""
    data = signalling.clean(frame.get("data"))
    if data is None:
        return "bad-signal"
    try:
        conversation = await conversations.get(conversation_id)
    except IdContactError:
        return "closed"
    if conversation.state != "connected" or (
        agent_id is not None and conversation.agent_id != agent_id
    ):
        return "not-connected"
    await bus.publish(
        Event(
            conversations.tenant.slug,
            "conversation",
            conversation_id,
            {"signal": data, "from": side},
            time.time(),
        )
    )
    return None
