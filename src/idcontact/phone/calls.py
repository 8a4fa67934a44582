"""The call logic of ID Bellen, driven by PBX events: collect the code, link, queue, connect.

One task per call reads that call's events in order: the PBX's (digits, playbacks, hang-ups,
the agent's leg) and the conversation's (accepted, ended by the agent, "ring again"). Digits
are collected from the moment the call arrives, so digits sent during the greeting count.

The queue stays in Python (``QueueService``), so phone, chat and video share one model: each
waiting caller has music on hold and hears its own announcements on its own channel. When an
agent accepts in the console, the agent's phone rings and the two legs are bridged.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from idcontact.conversations import Conversations
from idcontact.domain.lifecycle import InvalidTransitionError
from idcontact.errors import IdContactError, NotFoundError
from idcontact.events import Bus
from idcontact.phone import prompts
from idcontact.phone.ari import CONNECTED, DISCONNECTED
from idcontact.phone.codes import Caller, LinkCodes, Linked
from idcontact.queues import QueueService
from idcontact.settings import Tenant, phone_digits

log = logging.getLogger(__name__)

Clock = Callable[[], float]
ENDED_STATES = frozenset({"wrap_up", "ended", "purged"})
CALLER_ID = '"ID Bellen" <0>'
"""What the agent's phone shows: never the resident's number."""


class Pbx(Protocol):
    """What the call logic asks of the phone system (``AriClient``; a fake in unit tests)."""

    async def answer(self, channel: str) -> None: ...
    async def hangup(self, channel: str) -> None: ...
    async def play(self, channel: str, media: list[str], playback_id: str) -> None: ...
    async def stop_playback(self, playback_id: str) -> None: ...
    async def start_moh(self, channel: str) -> None: ...
    async def stop_moh(self, channel: str) -> None: ...
    async def originate(
        self, endpoint: str, channel_id: str, app_args: str, caller_id: str, ring_seconds: int
    ) -> None: ...
    async def bridge(self, bridge_id: str, channels: list[str]) -> None: ...
    async def destroy_bridge(self, bridge_id: str) -> None: ...
    async def inventory(self) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]: ...


@dataclass(frozen=True)
class PhoneLine:
    """One tenant's ID Bellen line."""

    tenant: Tenant
    conversations: Conversations
    queues: QueueService
    links: LinkCodes
    comm_method: str
    """The tenant's phone comm method (conversations of calls without a code get it too)."""

    @property
    def numbers(self) -> set[str]:
        """The digit strings the PBX may deliver as the dialled number."""
        forms = [self.tenant.phone_line, *self.tenant.phone.dialled]
        return {d for d in (phone_digits(f) for f in forms) if d}


AgentEndpoint = Callable[[str], Awaitable[str | None]]
"""agent id → the agent's phone (``PJSIP/agent1``), or None when none is set."""

Outcome = Literal["linked", "unidentified", "gone"]


@dataclass
class Call:
    """One caller's channel and what we know of it."""

    channel: str
    line: PhoneLine
    caller: Caller
    inbox: asyncio.Queue[dict[str, Any]] = field(default_factory=asyncio.Queue)
    conversation_id: str | None = None
    playback: str | None = None
    moh: bool = False
    leg: str | None = None
    """The agent's channel, while it rings or talks."""
    bridge: str | None = None
    rang: bool = False
    """The agent's phone was rung once on accept; after that only on "ring again"."""
    holder: str | None = None
    """The agent who holds the conversation (a warm transfer changes it mid-call)."""
    next_leg: str | None = None
    """The next agent's channel while it rings, during a warm transfer."""
    task: asyncio.Task[None] | None = None

    @property
    def lang(self) -> str:
        return self.line.tenant.phone.language


class Calls:
    """Every call in the Stasis application, routed to the tenant whose number was dialled."""

    def __init__(
        self,
        pbx: Pbx,
        lines: Iterable[PhoneLine],
        bus: Bus,
        agent_endpoint: AgentEndpoint,
        *,
        ring_seconds: int = 25,
        clock: Clock = time.time,
    ) -> None:
        self._pbx = pbx
        self._lines: dict[str, PhoneLine] = {}
        for line in lines:
            for number in line.numbers:
                self._lines[number] = line
        self._bus = bus
        self._agent_endpoint = agent_endpoint
        self._ring_seconds = ring_seconds
        self._clock = clock
        self._calls: dict[str, Call] = {}
        self._legs: dict[str, Call] = {}
        self.ready = asyncio.Event()
        """Set while the PBX's event stream is connected (calls can be taken)."""

    @property
    def active(self) -> int:
        return len(self._calls)

    def line_for(self, dialled: str) -> PhoneLine | None:
        line = self._lines.get(phone_digits(dialled))
        if line is None and len(self._lines) == 1 and not dialled:
            return next(iter(self._lines.values()))
        return line

    async def run(self, events: AsyncIterator[dict[str, Any]]) -> None:
        """Consume the PBX's event stream until cancelled; calls in progress stay in the PBX
        for the next process to adopt."""
        try:
            async for event in events:
                try:
                    await self.handle(event)
                except Exception:
                    log.exception("phone event handling failed", extra={"event": _kind(event)})
        finally:
            await self.close()

    async def close(self) -> None:
        calls = list(self._calls.values())
        for call in calls:
            if call.task is not None:
                call.task.cancel()
        for call in calls:
            if call.task is not None:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await call.task

    async def handle(self, event: dict[str, Any]) -> None:
        """Route one PBX event to its call (and start a call on ``StasisStart``)."""
        kind = _kind(event)
        if kind == CONNECTED:
            await self._adopt()
            self.ready.set()
            return
        if kind == DISCONNECTED:
            self.ready.clear()
            return
        channel = event.get("channel") or {}
        channel_id = str(channel.get("id", ""))
        if kind.startswith("Playback"):
            target = str((event.get("playback") or {}).get("target_uri", ""))
            channel_id = target.removeprefix("channel:")
        if kind == "StasisStart":
            args = [str(a) for a in event.get("args") or []]
            if channel_id in self._legs:
                await self._legs[channel_id].inbox.put(event)
            elif args[:1] == ["agent"]:
                await self._pbx.hangup(channel_id)  # a leg we no longer wait for
            else:
                await self._start(channel_id, channel)
            return
        call = self._calls.get(channel_id) or self._legs.get(channel_id)
        if call is not None:
            await call.inbox.put(event)

    async def _adopt(self) -> None:
        """Take over the calls a previous process left in the application (a restart, a
        deploy): a waiting caller keeps their place, a connected call stays bridged, a caller
        still typing is asked for the code again; agent legs without a caller are hung up."""
        try:
            channels, bridges = await self._pbx.inventory()
        except IdContactError:
            log.warning("could not list the calls in the PBX application")
            return
        partner: dict[str, tuple[str, str]] = {}  # channel → (bridge, the other channel)
        for bridge in bridges:
            members = [str(c) for c in bridge.get("channels", [])]
            if len(members) == 2:
                partner[members[0]] = (str(bridge["id"]), members[1])
                partner[members[1]] = (str(bridge["id"]), members[0])
        adopted = 0
        for channel in channels:
            channel_id = str(channel.get("id", ""))
            if channel_id in self._calls or channel_id in self._legs:
                continue
            exten = str((channel.get("dialplan") or {}).get("exten", ""))
            line = self._lines.get(phone_digits(exten))
            if line is None:
                continue  # an agent leg: adopted with its caller, or hung up below
            number = str((channel.get("caller") or {}).get("number", "")) or None
            call = Call(channel=channel_id, line=line, caller=Caller(number))
            conversation = await line.links.by_call(channel_id)
            if conversation is not None and conversation.state in (
                "waiting",
                "offered",
                "connected",
            ):
                call.conversation_id = conversation.id
                call.rang = conversation.state == "connected"
                call.moh = not call.rang  # it had music: the next announcement stops it
                if channel_id in partner:
                    call.bridge, call.leg = partner[channel_id]
                    self._legs[call.leg] = call
            self._calls[channel_id] = call
            call.task = asyncio.create_task(self._run(call, adopted=True))
            adopted += 1
        for channel in channels:
            channel_id = str(channel.get("id", ""))
            if channel_id not in self._calls and channel_id not in self._legs:
                await self._pbx.hangup(channel_id)
        if adopted:
            log.info("adopted calls left by a previous process", extra={"count": adopted})

    async def _start(self, channel_id: str, channel: dict[str, Any]) -> None:
        dialled = str((channel.get("dialplan") or {}).get("exten", ""))
        line = self.line_for(dialled)
        if line is None:
            log.warning("call for a number no tenant has: hung up")
            await self._pbx.hangup(channel_id)
            return
        number = str((channel.get("caller") or {}).get("number", "")) or None
        call = Call(channel=channel_id, line=line, caller=Caller(number))
        self._calls[channel_id] = call
        call.task = asyncio.create_task(self._run(call))

    # -- one call -----------------------------------------------------------------------

    async def _run(self, call: Call, *, adopted: bool = False) -> None:
        try:
            if adopted and call.conversation_id is not None:
                await self._wait_and_talk(call)
                return
            await self._pbx.answer(call.channel)
            outcome = await self._collect(call)
            if outcome == "unidentified":
                outcome = await self._unidentified(call)
            if outcome != "gone":
                await self._wait_and_talk(call)
        except asyncio.CancelledError:
            # This process stops: the call stays in the PBX application, and the next
            # process adopts it (``_adopt``) with its place in line or its bridge.
            raise
        except Exception:
            log.exception("phone call failed; hanging up")
            await self._pbx.hangup(call.channel)
            await self._end(call, actor="phone:system")
        finally:
            self._calls.pop(call.channel, None)
            if call.leg is not None:
                self._legs.pop(call.leg, None)

    async def _next(self, call: Call, wait: float | None) -> dict[str, Any] | None:
        """The call's next event, or None after ``wait`` seconds (never when ``None``)."""
        if wait is not None and wait <= 0:
            return None
        try:
            return await asyncio.wait_for(call.inbox.get(), wait)
        except TimeoutError:
            return None

    async def _say(self, call: Call, keys: Sequence[str]) -> None:
        """Start a prompt on the caller's channel (music on hold pauses while it plays)."""
        await self._quiet(call)
        playback = secrets.token_hex(8)
        call.playback = playback
        await self._pbx.play(call.channel, [prompts.media(call.lang, k) for k in keys], playback)

    async def _quiet(self, call: Call) -> None:
        if call.playback is not None:
            await self._pbx.stop_playback(call.playback)
            call.playback = None
        if call.moh:
            await self._pbx.stop_moh(call.channel)
            call.moh = False

    def _finished(self, call: Call, event: dict[str, Any]) -> bool:
        """Whether ``event`` ends the prompt now playing."""
        if _kind(event) != "PlaybackFinished":
            return False
        if str((event.get("playback") or {}).get("id", "")) != call.playback:
            return False
        call.playback = None
        return True

    def _hung_up(self, call: Call, event: dict[str, Any]) -> bool:
        kind = _kind(event)
        channel = str((event.get("channel") or {}).get("id", ""))
        return channel == call.channel and kind in ("StasisEnd", "ChannelDestroyed")

    async def _collect(self, call: Call) -> Outcome:
        """Read digits until a code links, the tries run out or the caller has none."""
        links = call.line.links
        await self._say(call, ["welcome", "enter-code"])
        digits = ""
        tries = 0
        deadline: float | None = None  # set once the prompt is over, or by a digit
        while True:
            timeout = None if deadline is None else deadline - time.monotonic()
            event = await self._next(call, timeout)
            if event is None:  # the caller stopped typing (or never started)
                if not digits and tries == 0:
                    return "unidentified"
                code, digits = digits, ""
            elif self._hung_up(call, event):
                return "gone"
            elif self._finished(call, event):
                if deadline is None:
                    deadline = time.monotonic() + call.line.tenant.phone.first_digit_seconds
                continue
            elif _kind(event) == "ChannelDtmfReceived":
                digit = str(event.get("digit", ""))
                if call.playback is not None:
                    await self._quiet(call)  # typing over the prompt is fine
                deadline = time.monotonic() + call.line.tenant.phone.next_digit_seconds
                if digit == "*":
                    digits = ""
                    continue
                if digit != "#":
                    digits += digit
                    if len(digits) < links.settings.code_length:
                        continue
                if not digits:
                    continue
                code, digits = digits, ""
            else:
                continue
            outcome = await links.link(code, call.caller, call_ref=call.channel)
            if isinstance(outcome, Linked):
                call.conversation_id = outcome.conversation.id
                await self._say(call, ["code-ok"])
                await call.line.queues.overflow(outcome.conversation)
                return "linked"
            if outcome.reason in ("budget", "caller"):
                await self._say(call, ["cannot-check"])
                return "unidentified"
            tries += 1
            if tries >= links.settings.tries_per_call:
                await self._say(call, ["code-final"])
                return "unidentified"
            await self._say(call, ["code-wrong"])
            deadline = None

    async def _unidentified(self, call: Call) -> Outcome:
        """A call without a (working) code: on to an agent without data, where allowed."""
        line = call.line
        fallback = line.tenant.phone.fallback_purpose
        purpose = line.tenant.purpose(fallback) if fallback else None
        if purpose is None:
            await self._say(call, ["identify-first"])
            await self._until_quiet(call)
            await self._pbx.hangup(call.channel)
            return "gone"
        detail = {"via": call.caller.via, "caller": "withheld" if call.caller.withheld else "shown"}
        conversation_id, _ = await line.conversations.create(
            purpose,
            line.comm_method,
            with_slot=False,
            unidentified=True,
            details={
                "call_ref_hash": line.conversations.keyed("call", call.channel),
                "call_state": "waiting",
                "link_detail": json.dumps(detail),
            },
        )
        call.conversation_id = conversation_id
        line.queues.poke()
        return "unidentified"

    async def _until_quiet(self, call: Call) -> None:
        """Wait for the prompt now playing to finish (or the caller to hang up)."""
        while call.playback is not None:
            event = await self._next(call, 60)
            if event is None or self._hung_up(call, event):
                return
            self._finished(call, event)

    async def _wait_and_talk(self, call: Call) -> None:
        """From the queue to the agent and the end of the call."""
        line, conversation_id = call.line, call.conversation_id
        if conversation_id is None:
            return
        tenant = line.tenant.slug
        async with self._bus.subscribe(
            tenant, "conversation", conversation_id, internal=True
        ) as sub:
            relay = asyncio.create_task(_relay(sub, call.inbox))
            try:
                await self._talk(call, conversation_id)
            finally:
                relay.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await relay

    async def _talk(self, call: Call, conversation_id: str) -> None:
        line = call.line
        every = line.tenant.phone.announce_every_seconds
        conversation = await line.conversations.get(conversation_id)
        state: str = conversation.state
        call.holder = conversation.agent_id
        next_announcement = time.monotonic()  # the first right after the current prompt
        closing = False
        while True:
            if state == "connected" and not call.rang:
                call.rang = True
                await self._ring(call)
            if state in ENDED_STATES:
                await self._hang_up_all(call)
                return
            timeout: float | None = None
            if state in ("waiting", "offered") and call.playback is None and not closing:
                timeout = next_announcement - time.monotonic()
            event = await self._next(call, timeout)
            if event is None:
                if closing:
                    continue
                next_announcement = time.monotonic() + every
                closing = await self._announce(call, conversation_id)
                continue
            kind = _kind(event)
            if kind == "_state":
                previous, state = state, str(event["state"])
                holder = event.get("holder")
                if previous == "connected" and state == "waiting":
                    # Place pushes say "waiting" too, and may arrive late: ask the store.
                    state = (await line.conversations.get(conversation_id)).state
                    if state in ("waiting", "offered"):
                        await self._back_in_line(call)  # transferred to a queue
                elif state == "connected" and call.rang and holder and holder != call.holder:
                    await self._ring(call, transfer=True)  # a colleague took it over
                call.holder = holder if isinstance(holder, str) else call.holder
                continue
            if kind == "_command" and event.get("command") == "ring":
                if state == "connected" and call.leg is None and call.bridge is None:
                    await self._ring(call)
                continue
            if self._hung_up(call, event):
                await self._hang_up_leg(call)
                await self._end(call, actor="phone:caller")
                return
            leg = str((event.get("channel") or {}).get("id", ""))
            if call.next_leg is not None and leg == call.next_leg:
                await self._transfer_leg(call, kind)
                continue
            if call.leg is not None and leg == call.leg:
                if kind == "StasisStart":
                    await self._connect(call)
                elif kind in ("StasisEnd", "ChannelDestroyed"):
                    if call.bridge is not None:  # the agent hung up: the call is over
                        await self._hang_up_all(call)
                        await self._end(call, actor="phone:agent")
                        return
                    self._legs.pop(leg, None)
                    call.leg = None
                    await self._unreachable(call)
                continue
            if self._finished(call, event):
                if closing:  # the data goes first, then the line
                    await self._end(call, actor="phone:closed")
                    await self._pbx.hangup(call.channel)
                    return
                if call.bridge is None:
                    await self._pbx.start_moh(call.channel)
                    call.moh = True

    async def _announce(self, call: Call, conversation_id: str) -> bool:
        """Place and expected wait (and "long" or "closed"); ``True`` when closed."""
        line = call.line
        conversation = await line.conversations.get(conversation_id)
        if conversation.state != "waiting":
            return False
        await line.conversations.touch(conversation_id)  # a caller on the line is not idle
        place = await line.queues.place(conversation)
        if place is None:
            return False
        if not place.is_open:
            await self._say(call, ["closed"])
            return True
        queue = line.queues.queue(conversation.queue)
        keys = [prompts.position_key(place.position), prompts.wait_key(place.expected_seconds)]
        if place.long_wait and queue.long_wait_seconds >= 60:
            keys.append(prompts.long_wait_key(queue.long_wait_seconds))
        await self._say(call, keys)
        return False

    async def _back_in_line(self, call: Call) -> None:
        """Transferred to a queue: the agent's leg goes, the caller waits with music again."""
        await self._hang_up_leg(call)
        await self._drop_next_leg(call)
        call.rang = False
        if call.playback is None and not call.moh:
            await self._pbx.start_moh(call.channel)
            call.moh = True

    async def _transfer_leg(self, call: Call, kind: str) -> None:
        """The colleague's phone during a warm transfer: when they pick up, they take the
        caller over from the first agent; when it gives up, the caller waits for them."""
        if kind == "StasisStart":
            await self._hang_up_leg(call)  # the first agent leaves the call
            call.leg, call.next_leg = call.next_leg, None
            await self._connect(call)
        elif kind in ("StasisEnd", "ChannelDestroyed"):
            self._legs.pop(call.next_leg or "", None)
            call.next_leg = None
            await self._hang_up_leg(call)
            await self._unreachable(call)

    async def _drop_next_leg(self, call: Call) -> None:
        if call.next_leg is not None:
            self._legs.pop(call.next_leg, None)
            await self._pbx.hangup(call.next_leg)
            call.next_leg = None

    async def _ring(self, call: Call, *, transfer: bool = False) -> None:
        """The agent accepted: ring the agent's phone (the caller hears music meanwhile). With
        ``transfer`` the first agent stays on the line until the colleague picks up."""
        line, conversation_id = call.line, call.conversation_id
        if conversation_id is None:
            return
        conversation = await line.conversations.get(conversation_id)
        endpoint = (
            await self._agent_endpoint(conversation.agent_id) if conversation.agent_id else None
        )
        if not transfer:
            await self._say(call, ["connecting"])
        if endpoint is None:
            if transfer:
                await self._hang_up_leg(call)
            await self._unreachable(call)
            return
        leg = secrets.token_hex(12)
        await self._drop_next_leg(call)
        if transfer:
            call.next_leg = leg
        else:
            call.leg = leg
        self._legs[leg] = call
        try:
            await self._pbx.originate(
                endpoint, leg, f"agent,{call.channel}", CALLER_ID, self._ring_seconds
            )
        except IdContactError:
            self._legs.pop(leg, None)
            if transfer:
                call.next_leg = None
                await self._hang_up_leg(call)
            else:
                call.leg = None
            await self._unreachable(call)
            return
        if not transfer:
            await line.conversations.annotate(conversation_id, {"call_state": "ringing"})

    async def _connect(self, call: Call) -> None:
        """The agent picked up: one bridge for the two legs."""
        if call.leg is None or call.conversation_id is None:
            return
        await self._quiet(call)
        bridge = secrets.token_hex(12)
        call.bridge = bridge
        await self._pbx.bridge(bridge, [call.channel, call.leg])
        await call.line.conversations.annotate(call.conversation_id, {"call_state": "connected"})

    async def _unreachable(self, call: Call) -> None:
        """No answer from the agent's phone: the caller keeps waiting, the console says so."""
        if call.conversation_id is not None:
            await call.line.conversations.annotate(
                call.conversation_id, {"call_state": "unreachable"}
            )
        if call.playback is None and not call.moh:
            await self._pbx.start_moh(call.channel)
            call.moh = True

    async def _hang_up_leg(self, call: Call) -> None:
        if call.leg is not None:
            self._legs.pop(call.leg, None)
            await self._pbx.hangup(call.leg)
            call.leg = None
        if call.bridge is not None:
            await self._pbx.destroy_bridge(call.bridge)
            call.bridge = None

    async def _hang_up_all(self, call: Call) -> None:
        await self._drop_next_leg(call)
        await self._hang_up_leg(call)
        await self._pbx.hangup(call.channel)

    async def _end(self, call: Call, *, actor: str) -> None:
        """The call is over: the conversation ends (wrap-up when it was connected)."""
        if call.conversation_id is None:
            return
        line = call.line
        with contextlib.suppress(InvalidTransitionError, NotFoundError):
            await line.conversations.annotate(call.conversation_id, {"call_state": "ended"})
            await line.conversations.end(call.conversation_id, actor=actor, wrap_up=True)
        line.queues.poke()


async def _relay(sub: Any, inbox: asyncio.Queue[dict[str, Any]]) -> None:
    """Conversation events → the call's inbox: state changes and console commands."""
    while True:
        try:
            event = await sub.next(30.0)
        except ConnectionResetError:  # fell behind: unlikely for one key; stop relaying
            return
        if event is None:
            continue
        if "state" in event.data:
            await inbox.put(
                {"type": "_state", "state": event.data["state"], "holder": event.data.get("holder")}
            )
        if "command" in event.data:
            await inbox.put({"type": "_command", "command": event.data["command"]})


def _kind(event: dict[str, Any]) -> str:
    return str(event.get("type", ""))
