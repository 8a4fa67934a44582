"""The call logic without Asterisk: ARI events recorded from a real call are replayed into
``Calls`` against a fake PBX that records what it is asked to do.

``ari_inbound_call.json`` is a real inbound call (Asterisk 22, sipp, RFC 4733): the caller
typed ``1``, ``2``, ``*`` (start again) and then a ten-digit code, partly during the greeting.
Replays put the code of the test's own conversation in place of the recorded digits, and
the ids of the fake's playbacks in place of the recorded ones.
"""

from __future__ import annotations

import asyncio
import copy
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from idcontact.agents.directory import Membership
from idcontact.events import Event
from idcontact.phone.calls import Calls, PhoneLine
from idcontact.phone.codes import Caller, Linked
from tests.conftest import AppFactory, Instance, demo_settings, until
from tests.phone.test_codes import new_code

pytestmark = pytest.mark.anyio

RECORDED: list[dict[str, Any]] = json.loads(
    (Path(__file__).parent / "ari_inbound_call.json").read_text()
)
CHANNEL = RECORDED[0]["channel"]["id"]


class FakePbx:
    """Records every request; ``wait_for`` waits for a request (a condition, with a deadline)."""

    def __init__(self) -> None:
        self.ops: list[tuple[Any, ...]] = []
        self.playing: dict[str, str] = {}  # channel → its current playback id
        self.changed = asyncio.Event()
        self.fail_originate = False
        self.left: tuple[list[dict[str, Any]], list[dict[str, Any]]] = ([], [])
        """What ``inventory`` reports: channels and bridges a previous process left."""

    def _record(self, *op: Any) -> None:
        self.ops.append(op)
        self.changed.set()

    async def answer(self, channel: str) -> None:
        self._record("answer", channel)

    async def hangup(self, channel: str) -> None:
        self._record("hangup", channel)

    async def play(self, channel: str, media: list[str], playback_id: str) -> None:
        self.playing[channel] = playback_id
        self._record("play", channel, tuple(m.rsplit("/", 1)[1] for m in media))

    async def stop_playback(self, playback_id: str) -> None:
        self._record("stop_playback", playback_id)

    async def start_moh(self, channel: str) -> None:
        self._record("moh", channel)

    async def stop_moh(self, channel: str) -> None:
        self._record("moh_off", channel)

    async def originate(
        self, endpoint: str, channel_id: str, app_args: str, caller_id: str, ring_seconds: int
    ) -> None:
        if self.fail_originate:
            from idcontact.phone.ari import PbxError

            raise PbxError("ARI POST /channels/{id}: HTTP 500")
        self._record("originate", endpoint, channel_id, app_args, caller_id)

    async def bridge(self, bridge_id: str, channels: list[str]) -> None:
        self._record("bridge", tuple(channels))

    async def destroy_bridge(self, bridge_id: str) -> None:
        self._record("destroy_bridge")

    async def inventory(self) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        return self.left

    def prompts(self) -> list[tuple[str, ...]]:
        return [op[2] for op in self.ops if op[0] == "play"]

    async def wait_for(self, match: Callable[[tuple[Any, ...]], bool], timeout: float = 5) -> Any:
        loop = asyncio.get_running_loop()
        end = loop.time() + timeout
        while True:
            for op in self.ops:
                if match(op):
                    return op
            self.changed.clear()
            if loop.time() > end:
                raise AssertionError(f"the PBX was not asked for it; it was asked: {self.ops}")
            try:
                await asyncio.wait_for(self.changed.wait(), end - loop.time())
            except TimeoutError:
                pass


def played(prompt: str) -> Callable[[tuple[Any, ...]], bool]:
    return lambda op: op[0] == "play" and prompt in op[2]


async def setup(
    make_app: AppFactory, tmp_path: Path, **phone: Any
) -> tuple[Instance, FakePbx, Calls, PhoneLine]:
    phone = {"number": "+31851234567", "first_digit_seconds": 2, "next_digit_seconds": 1, **phone}
    settings = demo_settings(tmp_path, phone=phone)
    instance: Instance = await make_app(settings)
    t = instance.services.tenants["default"]
    assert t.conversations and t.queues and t.links
    line = PhoneLine(t.tenant, t.conversations, t.queues, t.links, "phone")
    pbx = FakePbx()
    agents = instance.services.agents
    assert agents is not None
    calls = Calls(pbx, [line], instance.services.bus, agents.phone_endpoint)
    return instance, pbx, calls, line


def replay(code: str) -> list[dict[str, Any]]:
    """The recorded call with ``code`` as the digits typed after ``*``."""
    events = copy.deepcopy(RECORDED)
    digits = iter(code)
    after_star = False
    for event in events:
        if event["type"] == "ChannelDtmfReceived":
            if after_star:
                event["digit"] = next(digits)
            after_star = after_star or event["digit"] == "*"
    return events


async def feed(calls: Calls, pbx: FakePbx, events: list[dict[str, Any]]) -> None:
    """Hand events to ``calls`` as the PBX would, a playback's events naming our playback."""
    for event in events:
        if event["type"].startswith("Playback"):
            await pbx.wait_for(lambda op: op[0] == "play")
            event = copy.deepcopy(event)
            event["playback"]["id"] = pbx.playing[CHANNEL]
        await calls.handle(event)


def until_event(events: list[dict[str, Any]], kind: str, n: int = 1) -> list[dict[str, Any]]:
    """The events up to and including the ``n``-th of ``kind``."""
    seen = 0
    for i, event in enumerate(events):
        seen += event["type"] == kind
        if seen == n:
            return events[: i + 1]
    raise AssertionError(f"no {kind} #{n} in the recording")


async def test_the_recorded_call_links_with_digits_typed_over_the_greeting(
    make_app: AppFactory, tmp_path: Path
) -> None:
    instance, pbx, calls, line = await setup(make_app, tmp_path)
    conversation_id, code = await new_code(instance)
    events = replay(code)
    # "1" arrives while the greeting plays: the greeting stops, and the digit counts.
    assert [e["type"] for e in events[:4]][-1] == "ChannelDtmfReceived"
    await feed(calls, pbx, until_event(events, "ChannelDtmfReceived", 13))
    await pbx.wait_for(played("code-ok"))
    assert pbx.ops[0] == ("answer", CHANNEL)
    assert any(op[0] == "stop_playback" for op in pbx.ops[:4])  # typing over the greeting
    linked = await line.conversations.get(conversation_id)
    assert linked.state == "waiting" and linked.call_state == "waiting"
    assert linked.link_detail == {"via": "pbx", "shown": True, "caller": "shown", "seconds": 0}
    await calls.close()


async def test_wrong_codes_are_prompted_again_then_the_call_goes_on_unidentified(
    make_app: AppFactory, tmp_path: Path
) -> None:
    _, pbx, calls, line = await setup(
        make_app, tmp_path, fallback_purpose="waste_collection", tries_per_call=2
    )
    start = RECORDED[0]
    await calls.handle(start)
    for attempt in range(2):
        for digit in "0000000000":
            await calls.handle(dtmf(digit))
        await pbx.wait_for(played("code-wrong" if attempt == 0 else "code-final"))

    async def queued() -> Any:
        return await line.conversations.db.run(
            lambda conn: list(conn.exec_driver_sql("SELECT state, purpose FROM conversations"))
        )

    rows = await until(queued, "the unidentified conversation")
    assert [tuple(r) for r in rows] == [("waiting", "waste_collection")]
    links = line.links
    assert (await links.failures())[0] == 2
    await calls.close()


def dtmf(digit: str, channel: str = CHANNEL) -> dict[str, Any]:
    event = copy.deepcopy(next(e for e in RECORDED if e["type"] == "ChannelDtmfReceived"))
    event["digit"] = digit
    event["channel"]["id"] = channel
    return event


def ended(channel: str = CHANNEL) -> dict[str, Any]:
    event = copy.deepcopy(next(e for e in RECORDED if e["type"] == "StasisEnd"))
    event["channel"]["id"] = channel
    return event


async def test_without_a_fallback_purpose_a_call_without_code_is_told_and_ended(
    make_app: AppFactory, tmp_path: Path
) -> None:
    _, pbx, calls, line = await setup(make_app, tmp_path, fallback_purpose=None)
    await calls.handle(RECORDED[0])
    await pbx.wait_for(played("enter-code"))
    await calls.handle(finished(pbx))  # the greeting ends; no digit comes
    await pbx.wait_for(played("identify-first"))
    await calls.handle(finished(pbx))
    await pbx.wait_for(lambda op: op == ("hangup", CHANNEL))
    count = await line.conversations.db.run(
        lambda conn: conn.exec_driver_sql("SELECT count(*) FROM conversations").scalar_one()
    )
    assert count == 0
    await calls.close()


def finished(pbx: FakePbx, channel: str = CHANNEL) -> dict[str, Any]:
    event = copy.deepcopy(next(e for e in RECORDED if e["type"] == "PlaybackFinished"))
    event["playback"]["id"] = pbx.playing[channel]
    event["playback"]["target_uri"] = f"channel:{channel}"
    return event


async def test_a_call_for_a_number_no_tenant_has_is_hung_up(
    make_app: AppFactory, tmp_path: Path
) -> None:
    _, pbx, calls, _ = await setup(make_app, tmp_path)
    stranger = copy.deepcopy(RECORDED[0])
    stranger["channel"]["dialplan"]["exten"] = "+31209999999"
    await calls.handle(stranger)
    assert pbx.ops == [("hangup", CHANNEL)]
    assert calls.active == 0


async def test_accept_rings_the_agent_bridges_and_a_hang_up_ends_with_wrap_up(
    make_app: AppFactory, tmp_path: Path
) -> None:
    instance, pbx, calls, line = await setup(make_app, tmp_path)
    anna = await agent_with_phone(instance, "anna", "PJSIP/agent1")
    conversation_id, code = await new_code(instance)
    await feed(calls, pbx, until_event(replay(code), "ChannelDtmfReceived", 13))
    await pbx.wait_for(played("code-ok"))
    await calls.handle(finished(pbx))
    await pbx.wait_for(lambda op: op[0] == "play" and "position-1" in op[2])  # the wait
    queues = line.queues
    await queues.set_presence(anna, "available")
    await queues.tick()
    await queues.accept(conversation_id, anna)
    ring = await pbx.wait_for(lambda op: op[0] == "originate")
    _, endpoint, leg, args, caller_id = ring
    assert endpoint == "PJSIP/agent1" and args == f"agent,{CHANNEL}"
    assert "+316" not in caller_id  # the desk phone never shows the resident's number
    await until(lambda: call_state(line, conversation_id, "ringing"), "the console to say so")
    answered = copy.deepcopy(RECORDED[0])
    answered["channel"]["id"] = leg
    answered["args"] = ["agent", CHANNEL]
    await calls.handle(answered)
    await pbx.wait_for(lambda op: op == ("bridge", (CHANNEL, leg)))
    await until(lambda: call_state(line, conversation_id, "connected"), "the bridge")
    await calls.handle(ended())  # the resident hangs up
    await pbx.wait_for(lambda op: op == ("hangup", leg))
    await pbx.wait_for(lambda op: op[0] == "destroy_bridge")
    done = await until(lambda: state(line, conversation_id, "wrap_up"), "the wrap-up")
    assert done.call_state == "ended"
    await calls.close()


async def call_state(line: PhoneLine, conversation_id: str, wanted: str) -> Any:
    c = await line.conversations.get(conversation_id)
    return c if c.call_state == wanted else None


async def state(line: PhoneLine, conversation_id: str, wanted: str) -> Any:
    c = await line.conversations.get(conversation_id)
    return c if c.state == wanted else None


async def agent_with_phone(instance: Instance, username: str, endpoint: str) -> str:
    """An agent of every queue with a desk phone; their id."""
    agents = instance.services.agents
    assert agents is not None
    await agents.add(username, username.title(), [Membership("default", "agent", ("*",))])
    await agents.set_phone(username, endpoint)
    db = instance.services.db
    assert db is not None
    row = await db.run(
        lambda conn: conn.exec_driver_sql(
            "SELECT id FROM agents WHERE username = ?", (username,)
        ).one()
    )
    return str(row.id)


async def test_an_unreachable_desk_phone_is_told_to_the_console_and_rings_again_on_request(
    make_app: AppFactory, tmp_path: Path
) -> None:
    instance, pbx, calls, line = await setup(make_app, tmp_path)
    bert = await agent_with_phone(instance, "bert", "PJSIP/agent2")
    conversation_id, code = await new_code(instance)
    pbx.fail_originate = True
    await feed(calls, pbx, until_event(replay(code), "ChannelDtmfReceived", 13))
    await pbx.wait_for(played("code-ok"))
    await line.queues.set_presence(bert, "available")
    await line.queues.tick()
    await line.queues.accept(conversation_id, bert)
    await until(lambda: call_state(line, conversation_id, "unreachable"), "no answer")
    pbx.fail_originate = False
    await instance.services.bus.publish(
        Event("default", "conversation", conversation_id, {"command": "ring"}, 0.0)
    )
    await pbx.wait_for(lambda op: op[0] == "originate" and op[1] == "PJSIP/agent2")
    await calls.close()


def test_a_caller_without_number_counts_as_withheld() -> None:
    assert Caller(None).withheld and Caller("anonymous").withheld and Caller("").withheld
    assert not Caller("+31612399887").withheld


async def test_after_a_restart_calls_are_adopted_not_dropped(
    make_app: AppFactory, tmp_path: Path
) -> None:
    """A new process finds calls in the application: the waiting caller keeps their place,
    the connected call stays bridged (no second ring), a caller who had not linked yet is
    asked again, and an agent leg whose caller is gone is hung up."""
    instance, pbx, old_calls, line = await setup(make_app, tmp_path)
    waiting_id, waiting_code = await new_code(instance)
    talking_id, talking_code = await new_code(instance)
    anna = await agent_with_phone(instance, "anna", "PJSIP/agent1")
    links = line.links
    assert isinstance(
        await links.link(waiting_code, Caller("+31600000001"), call_ref="c-wait"), Linked
    )
    assert isinstance(
        await links.link(talking_code, Caller("+31600000002"), call_ref="c-talk"), Linked
    )
    await line.queues.set_presence(anna, "available")
    await line.queues.tick()
    offered = [
        c for c in (waiting_id, talking_id) if (await line.conversations.get(c)).state == "offered"
    ]
    assert len(offered) == 1
    await line.queues.accept(offered[0], anna)
    connected_ref = "c-wait" if offered[0] == waiting_id else "c-talk"
    queued_ref = "c-talk" if connected_ref == "c-wait" else "c-wait"

    def channel(channel_id: str, exten: str = "+31851234567") -> dict[str, Any]:
        found = copy.deepcopy(RECORDED[0]["channel"])
        found["id"] = channel_id
        found["dialplan"]["exten"] = exten
        return found

    pbx.left = (
        [channel(queued_ref), channel(connected_ref), channel("leg-1", "s"), channel("c-new"),
         channel("leg-stray", "s")],
        [{"id": "bridge-1", "channels": [connected_ref, "leg-1"]}],
    )  # fmt: skip
    calls = Calls(pbx, [line], instance.services.bus, line_endpoint(instance))
    await calls.handle({"type": "IdContactConnected"})
    assert calls.ready.is_set() and calls.active == 3
    await pbx.wait_for(lambda op: op == ("hangup", "leg-stray"))
    await pbx.wait_for(lambda op: op[:2] == ("play", queued_ref) and "position-1" in op[2])
    await pbx.wait_for(lambda op: op[:2] == ("play", "c-new") and "enter-code" in op[2])
    assert not any(op[0] == "originate" for op in pbx.ops)  # the connected call is not rung
    assert ("hangup", "leg-1") not in pbx.ops
    # The adopted connected call still ends properly when the agent's leg hangs up.
    leg_gone = copy.deepcopy(next(e for e in RECORDED if e["type"] == "StasisEnd"))
    leg_gone["channel"]["id"] = "leg-1"
    await calls.handle(leg_gone)
    await pbx.wait_for(lambda op: op == ("hangup", connected_ref))
    await until(lambda: state(line, offered[0], "wrap_up"), "the wrap-up")
    await calls.close()
    await old_calls.close()


def line_endpoint(instance: Instance) -> Any:
    agents = instance.services.agents
    assert agents is not None
    return agents.phone_endpoint
