"""ID Bellen end to end, with real peers: sipp callers and baresip desk phones on a real
Asterisk 22, the app's ARI adapter, the queue and the agent console.

Every call here really crosses the PBX: digits arrive as RFC 4733 events, SIP INFO or in-band
tones; the agent's phone really rings and answers; what callers hear is read from Asterisk's
own playback events (a second ARI application that sees everything).
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text

from idcontact.agents.directory import Membership
from tests.conftest import (
    CANARY_BSN,
    CANARY_NAME,
    PUBLIC,
    AppFactory,
    Instance,
    demo_settings,
    path_of,
    until,
)
from tests.flows.test_console import Agent, enrol
from tests.flows.test_core_flows import issue
from tests.live import Receiver, receiving
from tests.plugins import test_yivi as yivi
from tests.telephony.pbx import Pbx, observe, pbx
from tests.telephony.peers import Baresip, SippCall, ports, run_baresip, sipp_call

pytestmark = [pytest.mark.anyio, pytest.mark.telephony]

DIALLED = "+31851234567"  # the demo configuration's ID Bellen number
CALLER = "+31612399887"  # a canary: no trace of it may stay anywhere
SECOND_NAME = "Second-Caller-Q7Z1"
SECOND_BSN = "999990020"
DUMP = text(
    "SELECT id, state, link_hash, link_detail, call_ref_hash, call_state, NULL FROM conversations"
    " UNION ALL SELECT actor, action, detail, conversation_id, tenant, hash, NULL"
    " FROM audit_events UNION ALL SELECT tenant, caller_key, NULL, NULL, NULL, NULL, at"
    " FROM link_failures"
)


@pytest.fixture
async def asterisk() -> AsyncIterator[Pbx]:
    """The test PBX; afterwards every call still in it is hung up (a killed sipp sends no BYE,
    and the next test's app would adopt what this one left)."""
    p = pbx()
    yield p
    await p.hang_up_everything()


async def phone_app(make_app: AppFactory, tmp_path: Path, p: Pbx, **overrides: Any) -> Instance:
    # A silent caller is taken as one without a code after 3 s (10 s by default).
    overrides.setdefault("phone", {"first_digit_seconds": 3})
    settings = demo_settings(tmp_path, telephony=p.telephony(), **overrides)
    instance: Instance = await make_app(settings)
    calls = instance.services.calls
    assert calls is not None
    await asyncio.wait_for(calls.ready.wait(), 10)
    return instance


async def phone_conversation(
    instance: Instance, name: str = CANARY_NAME, bsn: str = CANARY_BSN, *, deliver: bool = True
) -> tuple[str, str, str]:
    """A phone conversation through the channel's own start (as the core calls it): its id,
    its code and its attr_url; the attributes are delivered there unless not ``deliver``."""
    response = await instance.client.post(
        "/comm/phone/start_communication", json={"purpose": "report_move"}
    )
    assert response.status_code == 200, response.text
    started = response.json()
    number, code = started["client_url"].removeprefix("tel:").split(",", 1)
    assert number == DIALLED
    attr_url = path_of_internal(started["attr_url"])
    if deliver:
        await deliver_to(instance, attr_url, name, bsn)
    conversations = instance.services.conversations
    assert conversations is not None
    rows = await conversations.db.run(
        lambda conn: list(conn.execute(text("SELECT id FROM conversations ORDER BY created_at")))
    )
    return str(rows[-1].id), code, attr_url


def path_of_internal(url: str) -> str:
    return "/" + url.split("://", 1)[1].split("/", 1)[1]


async def deliver_to(instance: Instance, attr_url: str, name: str, bsn: str) -> None:
    token = issue(instance, {"fullname": name, "bsn": bsn})
    delivered = await instance.client.post(
        attr_url, content=token, headers={"Content-Type": "application/jwt"}
    )
    assert delivered.status_code == 200, delivered.text


async def conversation(instance: Instance, conversation_id: str) -> Any:
    conversations = instance.services.conversations
    assert conversations is not None
    return await conversations.get(conversation_id)


async def first_conversation(instance: Instance) -> str | None:
    """The id of the instance's first conversation, once there is one."""
    conversations = instance.services.conversations
    assert conversations is not None
    rows = await conversations.db.run(
        lambda conn: list(conn.execute(text("SELECT id FROM conversations")))
    )
    return str(rows[0].id) if rows else None


async def call(p: Pbx, tmp_path: Path, digits: str, **kwargs: Any) -> SippCall:
    sip_port, media_port = ports(2)
    return await sipp_call(
        p.sip, DIALLED, digits, tmp_path, sip_port=sip_port, media_port=media_port, **kwargs
    )


@pytest.fixture
async def desk_phones(tmp_path: Path, asterisk: Pbx) -> AsyncIterator[dict[str, Baresip]]:
    """Two agents' desk phones (baresip, answering by themselves), registered to the PBX."""
    phones: dict[str, Baresip] = {}
    try:
        for n in (1, 2):
            account = (
                f"<sip:agent{n}@{asterisk.sip}>;auth_pass=agent{n}-test-secret;regint=60;"
                "answermode=auto;audio_codecs=PCMU"
            )
            phones[f"agent{n}"] = await run_baresip(tmp_path / f"agent{n}", account)

            async def online(n: int = n) -> bool:
                endpoint = await asterisk.get(f"/endpoints/PJSIP/agent{n}")
                return endpoint.get("state") == "online"

            await until(online, f"agent{n}'s phone to register")
        yield phones
    finally:
        for phone in phones.values():
            await phone.stop()


async def agent_at_phone(instance: Instance, username: str, endpoint: str) -> Agent:
    agent = await enrol(instance, username, [Membership("default", "agent", ("*",))])
    assert (await agent.login()).status_code == 303
    directory = instance.services.agents
    assert directory is not None
    await directory.set_phone(username, endpoint)
    return agent


async def channel_of(instance: Instance, conversation_id: str) -> str:
    """The channel of the conversation's call. The call takes the conversation just after the
    link is stored (which is what ``_linked`` sees), so wait for it."""
    calls = instance.services.calls
    assert calls is not None

    async def found() -> str | None:
        return next(
            (c.channel for c in calls._calls.values() if c.conversation_id == conversation_id),
            None,
        )

    return str(await until(found, "the call of this conversation"))


@pytest.mark.parametrize("mode", ["rfc4733", "info", "inband"])
async def test_a_code_links_the_call_by_each_kind_of_dtmf(
    make_app: AppFactory, tmp_path: Path, asterisk: Pbx, mode: str
) -> None:
    instance = await phone_app(make_app, tmp_path, asterisk)
    conversation_id, code, _ = await phone_conversation(instance)
    caller = await call(asterisk, tmp_path, code, mode=mode)  # type: ignore[arg-type]
    try:
        linked = await until(lambda: _linked(instance, conversation_id), f"the {mode} call to link")
        assert linked.state == "waiting" and linked.call_state == "waiting"
        assert linked.link_detail == {
            "via": "pbx",
            "shown": True,
            "caller": "shown",
            "seconds": linked.link_detail["seconds"],
        }
    finally:
        caller.stop()


async def test_the_yivi_app_dials_back_with_the_code_and_that_call_links(
    make_app: AppFactory, tmp_path: Path, asterisk: Pbx
) -> None:
    """Issue #6: after the disclosure the app's return URL is ``tel:<number>,<code>``; a call
    with that code links to exactly this conversation, and the browser never saw the code."""
    instance = await phone_app(make_app, tmp_path, asterisk, **yivi.overrides(tmp_path))
    other_id, _, _ = await phone_conversation(instance, "Other-Resident-5Q", "999990020")
    setup = yivi.Setup(instance, instance.client)
    start = {"purpose": "report_move", "auth_method": "yivi", "comm_method": "phone"}
    page_url, url, pairing = await yivi.begin(setup, start)
    await instance.client.post(page_url + "/pair", data={"code": pairing})
    asked = await yivi.disclose(setup, url)
    number, code = asked["clientReturnUrl"].removeprefix("tel:").split(",", 1)
    assert number == DIALLED
    done = await instance.client.get(page_url + "/done")
    assert code not in done.text and code not in done.headers["location"]
    caller = await call(asterisk, tmp_path, code)
    try:
        conversations = instance.services.conversations
        assert conversations is not None
        rows = await conversations.db.run(
            lambda conn: list(conn.execute(text("SELECT id FROM conversations")))
        )
        mine = [str(r.id) for r in rows if str(r.id) != other_id]
        assert len(mine) == 1
        linked = await until(lambda: _linked(instance, mine[0]), "the dialled-back call to link")
        assert linked.link_detail["via"] == "pbx" and linked.link_detail["shown"] is False
        stored = await conversations.attributes(mine[0], actor="test")
        assert stored is not None and stored["attributes"]["fullname"] == "Demi Demo"
        assert (await conversation(instance, other_id)).linked_at is None
    finally:
        caller.stop()


async def _linked(instance: Instance, conversation_id: str) -> Any:
    c = await conversation(instance, conversation_id)
    return c if c.linked_at is not None else None


async def test_the_pbx_keeps_no_call_records(asterisk: Pbx) -> None:
    """No CDR or CEL back end, no recording or voicemail application is loaded (the core
    engines cannot be unloaded; cdr.conf and cel.conf switch them off)."""
    modules = {m["name"].removesuffix(".so") for m in await asterisk.get("/asterisk/modules")}
    assert "res_pjsip" in modules and "res_ari" in modules  # the list is real
    banned = {m for m in modules if m.startswith(("cdr_", "cel_"))}
    banned |= modules & {"app_mixmonitor", "app_voicemail", "app_minivm", "res_pjsip_logger"}
    assert not banned


def assert_no_trace(asterisk: Pbx, *secrets_: str) -> None:
    """Nothing Asterisk wrote to disk holds a caller number or a code."""
    for path in asterisk.log_dir.rglob("*"):
        if path.is_file():
            content = path.read_text(errors="replace")
            for secret in secrets_:
                assert secret not in content, f"{secret[:3]}… found in {path.name}"
    for folder in ("cdr-csv", "cdr-custom"):
        assert not (asterisk.log_dir / folder).exists() or not any(
            (asterisk.log_dir / folder).iterdir()
        )


async def test_two_concurrent_calls_each_reach_their_agent_with_only_their_own_data(
    make_app: AppFactory,
    tmp_path: Path,
    asterisk: Pbx,
    desk_phones: dict[str, Baresip],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level("DEBUG")
    instance = await phone_app(make_app, tmp_path, asterisk)
    anna = await agent_at_phone(instance, "anna", "PJSIP/agent1")
    bert = await agent_at_phone(instance, "bert", "PJSIP/agent2")
    first, first_code, _ = await phone_conversation(instance)
    second, second_code, _ = await phone_conversation(instance, SECOND_NAME, SECOND_BSN)
    callers = [await call(asterisk, tmp_path, first_code, mode="rfc4733", name="first")]
    # The second caller is a phone we can hang up on cue: baresip, digits by RFC 4733.
    resident = await run_baresip(
        tmp_path / "resident", f"<sip:{CALLER}@127.0.0.1>;regint=0;audio_codecs=PCMU"
    )
    try:
        await resident.command("dial", f"sip:{DIALLED}@{asterisk.sip}")
        await resident.wait_for("CALL_ESTABLISHED")
        await resident.dial_digits(second_code)
        await until(lambda: _linked(instance, first), "the first call to link")
        await until(lambda: _linked(instance, second), "the second call to link")
        for agent in (anna, bert):
            assert (
                await agent.post("/agent/default/presence", presence="available")
            ).status_code == 303

        async def both_offered() -> bool:
            return {(await conversation(instance, c)).state for c in (first, second)} == {"offered"}

        await until(both_offered, "both calls to be offered, one to each agent")
        holder = {(await conversation(instance, c)).agent_id: c for c in (first, second)}
        assert len(holder) == 2  # one call per agent: a phone is no chat
        seen = {}
        for agent, phone in ((anna, desk_phones["agent1"]), (bert, desk_phones["agent2"])):
            mine = holder[await agent_id(instance, agent.username)]
            accepted = await agent.post(f"/agent/default/c/{mine}/accept")
            assert accepted.status_code == 303
            await phone.wait_for("CALL_ESTABLISHED")  # the desk phone rang and answered
            connected = await until(
                lambda mine=mine: _call_state(instance, mine, "connected"), "the bridge"
            )
            assert connected.state == "connected"
            panel = await agent.client.get(f"/agent/default/c/{mine}")
            assert panel.status_code == 200
            assert "verbonden" in panel.text and "zichtbaar" in panel.text
            assert "/static/console.js" in panel.text  # keeps the line state live
            seen[mine] = panel.text
            line = await agent.client.get(f"/agent/default/c/{mine}/line")
            assert line.status_code == 200 and "verbonden" in line.text
            assert CANARY_NAME not in line.text and SECOND_NAME not in line.text
        # The line fragment is no read of the data: only the two panels were audited.
        db = instance.services.db
        assert db is not None
        views = await db.run(
            lambda conn: conn.execute(
                text("SELECT count(*) FROM audit_events WHERE action = 'attributes.view'")
            ).scalar_one()
        )
        assert views == 2
        other = await anna.client.get(
            f"/agent/default/c/{holder[await agent_id(instance, 'bert')]}/line"
        )
        assert other.status_code == 404  # not the holder: nothing, not even the line
        assert CANARY_NAME in seen[first] and SECOND_NAME not in seen[first]
        assert SECOND_NAME in seen[second] and CANARY_NAME not in seen[second]

        # The agent ends the first call in the console: the PBX hangs up the caller.
        first_agent = anna if holder[await agent_id(instance, "anna")] == first else bert
        finished = await first_agent.post(f"/agent/default/c/{first}/finish")
        assert finished.status_code == 303
        assert await callers[0].finished(20) == 0, callers[0].log()  # it got a BYE
        assert (await conversation(instance, first)).state == "wrap_up"
        # The second caller hangs up: wrap-up for the agent, then purge.
        assert (await conversation(instance, second)).state == "connected"
        await resident.command("hangup")
        ended = await until(lambda: _state_in(instance, second, {"wrap_up"}), "the hang-up")
        assert ended.call_state == "ended"
    finally:
        for c in callers:
            c.stop()
        await resident.stop()
    conversations = instance.services.conversations
    assert conversations is not None
    for c in (first, second):
        await conversations.end(c, actor="test")  # end the wrap-up now
    assert await conversations.purge_expired() >= 2
    assert (await conversation(instance, second)).state == "purged"
    assert await conversations.attributes(second, actor="test") is None  # the key is gone

    logged = "\n".join(r.getMessage() + str(r.__dict__) for r in caplog.records)
    for secret in (CALLER, first_code, second_code, CANARY_BSN, SECOND_BSN):
        assert secret not in logged
    dump = await conversations.db.run(lambda conn: str([list(r) for r in conn.execute(DUMP)]))
    for secret in (CALLER, first_code, second_code, CANARY_NAME, SECOND_NAME):
        assert secret not in dump
    assert_no_trace(asterisk, CALLER, first_code, second_code)


async def agent_id(instance: Instance, username: str) -> str:
    db = instance.services.db
    assert db is not None
    row = await db.run(
        lambda conn: conn.execute(
            text("SELECT id FROM agents WHERE username = :u"), {"u": username}
        ).one()
    )
    return str(row.id)


async def _call_state(instance: Instance, conversation_id: str, wanted: str) -> Any:
    c = await conversation(instance, conversation_id)
    return c if c.call_state == wanted else None


async def _state_in(instance: Instance, conversation_id: str, states: set[str]) -> Any:
    c = await conversation(instance, conversation_id)
    return c if c.state in states else None


async def test_a_wrong_code_is_prompted_again_and_a_right_one_then_links(
    make_app: AppFactory, tmp_path: Path, asterisk: Pbx
) -> None:
    instance = await phone_app(make_app, tmp_path, asterisk)
    conversation_id, code = (await phone_conversation(instance))[:2]
    wrong = "1" * len(code) if code != "1" * len(code) else "2" * len(code)
    async with observe(asterisk) as pbx_events:
        caller = await call(asterisk, tmp_path, wrong + code)
        try:
            await until(lambda: _linked(instance, conversation_id), "the second code to link")
            channel = await channel_of(instance, conversation_id)

            async def confirmed() -> list[str] | None:
                played = pbx_events.played(channel)
                return played if "sound:idcontact/nl/code-ok" in played else None

            played = await until(confirmed, "the caller to hear the code was right")
            assert "sound:idcontact/nl/code-wrong" in played  # the caller heard "try again"
            assert played.index("sound:idcontact/nl/code-wrong") < played.index(
                "sound:idcontact/nl/code-ok"
            )
        finally:
            caller.stop()
    links = instance.services.tenants["default"].links
    assert links is not None
    assert (await links.failures())[0] == 1  # the wrong code counted against the budget


async def test_a_code_before_its_attributes_does_not_link(
    make_app: AppFactory, tmp_path: Path, asterisk: Pbx
) -> None:
    instance = await phone_app(make_app, tmp_path, asterisk)
    conversation_id, code, attr_url = await phone_conversation(instance, deliver=False)
    async with observe(asterisk) as pbx_events:
        early = await call(asterisk, tmp_path, code, name="early")
        try:
            await pbx_events.wait_for(
                lambda e: (
                    e.get("type") == "PlaybackStarted"
                    and e["playback"]["media_uri"] == "sound:idcontact/nl/code-wrong"
                )
            )
            assert (await conversation(instance, conversation_id)).linked_at is None
        finally:
            early.stop()
    # Once the attributes are there, the same (unused) code links a new call.
    await deliver_to(instance, attr_url, CANARY_NAME, CANARY_BSN)
    later = await call(asterisk, tmp_path, code, name="later")
    try:
        await until(lambda: _linked(instance, conversation_id), "the code to link now")
    finally:
        later.stop()


async def test_a_used_code_again_flags_a_possible_hijack_to_the_agent(
    make_app: AppFactory, tmp_path: Path, asterisk: Pbx
) -> None:
    instance = await phone_app(make_app, tmp_path, asterisk)
    conversation_id, code = (await phone_conversation(instance))[:2]
    agent = await agent_at_phone(instance, "anna", "PJSIP/agent1")
    first = await call(asterisk, tmp_path, code, name="first")
    try:
        await until(lambda: _linked(instance, conversation_id), "the first call to link")
        second = await call(asterisk, tmp_path, code, name="second", caller="anonymous")
        try:
            flagged = await until(
                lambda: _flagged(instance, conversation_id), "the hijack flag", 30
            )
            assert flagged.state == "waiting"  # the second call linked to nothing
            calls = instance.services.calls
            assert calls is not None
            linked = [c for c in calls._calls.values() if c.conversation_id == conversation_id]
            assert len(linked) == 1
        finally:
            second.stop()
        assert (
            await agent.post("/agent/default/presence", presence="available")
        ).status_code == 303
        await until(lambda: _state_in(instance, conversation_id, {"offered"}), "the offer")
        board = await agent.client.get("/agent/default/board")
        assert "mogelijk gekaapt" in board.text
        accepted = await agent.post(f"/agent/default/c/{conversation_id}/accept")
        panel = await agent.client.get(accepted.headers["location"])
        assert 'role="alert"' in panel.text and "dezelfde code" in panel.text
        # No desk phone is registered for agent1 here: the console says so, and offers to ring.
        await until(lambda: _call_state(instance, conversation_id, "unreachable"), "no answer")
        panel = await agent.client.get(f"/agent/default/c/{conversation_id}")
        assert "uw telefoon nam niet op" in panel.text
        assert f"/c/{conversation_id}/ring" in panel.text
    finally:
        first.stop()


async def _flagged(instance: Instance, conversation_id: str) -> Any:
    c = await conversation(instance, conversation_id)
    return c if c.hijack_at is not None else None


async def test_the_wait_is_announced_and_a_long_one_said_plainly(
    make_app: AppFactory, tmp_path: Path, asterisk: Pbx, desk_phones: dict[str, Baresip]
) -> None:
    # One agent, busy with the first call; ten minutes a call: the second caller waits long.
    instance = await phone_app(
        make_app, tmp_path, asterisk, queues=[{"tag": "general", "handle_seconds": 600}]
    )
    agent = await agent_at_phone(instance, "anna", "PJSIP/agent1")
    first, first_code = (await phone_conversation(instance))[:2]
    second, second_code = (await phone_conversation(instance, SECOND_NAME, SECOND_BSN))[:2]
    async with observe(asterisk) as pbx_events:
        callers = [await call(asterisk, tmp_path, first_code, name="first")]
        try:
            await until(lambda: _linked(instance, first), "the first call to link")
            assert (
                await agent.post("/agent/default/presence", presence="available")
            ).status_code == 303
            await until(lambda: _state_in(instance, first, {"offered"}), "the offer")
            await agent.post(f"/agent/default/c/{first}/accept")
            await until(lambda: _call_state(instance, first, "connected"), "the first bridge")
            callers.append(await call(asterisk, tmp_path, second_code, name="second"))
            await until(lambda: _linked(instance, second), "the second call to link")
            channel = await channel_of(instance, second)
            await pbx_events.wait_for(
                lambda e: (
                    e.get("type") == "PlaybackStarted"
                    and e["playback"]["target_uri"] == f"channel:{channel}"
                    and "long-wait" in e["playback"]["media_uri"]
                )
            )
            played = pbx_events.played(channel)
            # Position 1, about ten minutes (1 × 600 s ÷ 1 agent), and "more than 5 minutes".
            assert (
                played[-1]
                == (
                    "sound:idcontact/nl/position-1,sound:idcontact/nl/wait-10,"
                    "sound:idcontact/nl/long-wait-5"
                )
                or "sound:idcontact/nl/long-wait-5" in played
            )
            moh = await asterisk.get(f"/channels/{channel}")
            assert moh["state"] == "Up"
        finally:
            for c in callers:
                c.stop()


async def test_outside_opening_hours_the_caller_hears_so_and_the_data_goes(
    make_app: AppFactory, tmp_path: Path, asterisk: Pbx
) -> None:
    from datetime import datetime
    from zoneinfo import ZoneInfo

    today = datetime.now(ZoneInfo("Europe/Amsterdam")).weekday()
    other = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")[(today + 3) % 7]
    instance = await phone_app(
        make_app,
        tmp_path,
        asterisk,
        queues=[{"tag": "general", "opening_hours": {other: ["09:00-10:00"]}}],
    )
    conversation_id, code = (await phone_conversation(instance))[:2]
    async with observe(asterisk) as pbx_events:
        caller = await call(asterisk, tmp_path, code)
        try:
            assert await caller.finished(40) == 0, caller.log()  # the PBX hung up on it
        finally:
            caller.stop()
        assert "sound:idcontact/nl/closed" in [
            e["playback"]["media_uri"]
            for e in pbx_events.events
            if e.get("type") == "PlaybackStarted"
        ]
    ended = await until(lambda: _state_in(instance, conversation_id, {"ended"}), "the end")
    assert ended.call_state == "ended"


async def test_a_call_without_a_code_reaches_an_agent_unidentified(
    make_app: AppFactory, tmp_path: Path, asterisk: Pbx
) -> None:
    instance = await phone_app(make_app, tmp_path, asterisk)
    caller = await call(asterisk, tmp_path, "", caller="anonymous")
    try:

        async def unidentified() -> Any:
            found = await first_conversation(instance)
            return found and await conversation(instance, found)

        waiting = await until(unidentified, "the call to queue unidentified", 30)
        assert waiting.state == "waiting" and not waiting.identified
        assert waiting.purpose == "waste_collection"  # the configured fallback purpose
        assert waiting.link_detail == {"via": "pbx", "caller": "withheld"}
    finally:
        caller.stop()


async def test_a_restart_keeps_the_waiting_caller_in_line(
    make_app: AppFactory, tmp_path: Path, asterisk: Pbx
) -> None:
    """The process that took the call stops; the next one adopts it from the PBX."""
    from idcontact.app import create_app, services_of

    settings = demo_settings(tmp_path, telephony=asterisk.telephony())
    first = create_app(settings)
    async with observe(asterisk) as pbx_events:
        async with first.router.lifespan_context(first):
            services = services_of(first)
            assert services.calls is not None
            await asyncio.wait_for(services.calls.ready.wait(), 10)
            instance = Instance(first, _client(first), services, settings)
            conversation_id, code = (await phone_conversation(instance))[:2]
            caller = await call(asterisk, tmp_path, code)
            await until(lambda: _linked(instance, conversation_id), "the call to link")
            channel = await channel_of(instance, conversation_id)
            await instance.client.aclose()
        try:
            assert caller.process.returncode is None  # stopping did not hang up on the caller
            before = len(pbx_events.played(channel))
            second: Instance = await make_app(settings)
            calls = second.services.calls
            assert calls is not None
            await asyncio.wait_for(calls.ready.wait(), 10)
            assert calls.active == 1
            await pbx_events.wait_for(
                lambda e: (
                    e.get("type") == "PlaybackStarted"
                    and e["playback"]["target_uri"] == f"channel:{channel}"
                    and "position-1" in e["playback"]["media_uri"]
                    and len(pbx_events.played(channel)) > before
                )
            )
            assert (await conversation(second, conversation_id)).state == "waiting"
        finally:
            caller.stop()


def _client(app: Any) -> Any:
    import httpx

    from tests.conftest import PUBLIC

    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=PUBLIC)


@pytest.fixture
def sms_gateway() -> Iterator[Receiver]:
    with receiving(status=202) as r:
        yield r


async def test_an_agent_has_the_caller_identify_during_the_call(
    make_app: AppFactory,
    tmp_path: Path,
    asterisk: Pbx,
    desk_phones: dict[str, Baresip],
    caplog: pytest.LogCaptureFixture,
    sms_gateway: Receiver,
) -> None:
    """Most residents just call the general number. The agent on the line makes a code and
    reads it out (and texts the caller a link with it, through the tenant's SMS gateway); the
    caller opens it on the municipality's page, identifies with the demo method, and the data
    appears in the agent's panel for that very call."""
    caplog.set_level("DEBUG")
    phone = {"first_digit_seconds": 3, "sms": {"url": sms_gateway.url, "token": "sms-token"}}
    instance = await phone_app(make_app, tmp_path, asterisk, phone=phone)
    anna = await agent_at_phone(instance, "anna", "PJSIP/agent1")
    caller = await call(asterisk, tmp_path, "", caller=CALLER)  # no code: the general number
    try:
        conversations = instance.services.conversations
        assert conversations is not None
        conversation_id = await until(
            lambda: first_conversation(instance), "the call to queue unidentified", 30
        )
        await anna.post("/agent/default/presence", presence="available")
        await until(
            lambda: _state_in(instance, conversation_id, {"offered"}), "the offer to the agent"
        )
        assert (await anna.post(f"/agent/default/c/{conversation_id}/accept")).status_code == 303
        await desk_phones["agent1"].wait_for("CALL_ESTABLISHED")
        await until(lambda: _call_state(instance, conversation_id, "connected"), "the bridge")
        panel = await anna.client.get(f"/agent/default/c/{conversation_id}")
        assert "Maak een code om te identificeren" in panel.text and CANARY_NAME not in panel.text

        assert 'name="number"' in panel.text  # the tenant has an SMS gateway
        typo = await anna.post(
            f"/agent/default/c/{conversation_id}/identify", purpose="report_move", number="123"
        )
        assert typo.status_code == 400 and not sms_gateway.received  # no code spent
        asked = await anna.post(
            f"/agent/default/c/{conversation_id}/identify", purpose="report_move", number=CALLER
        )
        assert asked.status_code == 200
        shown = re.search(r'<strong class="code">([0-9 ]+)</strong>', asked.text)
        assert shown, "the panel shows the code to read out"
        code = shown.group(1)
        assert "/code" in asked.text and "per sms verstuurd" in asked.text
        ((_, sms),) = sms_gateway.received
        assert sms["to"] == CALLER and code.replace(" ", "") in sms["text"]
        link = re.search(r"(http\S+/code\?code=\d+)", sms["text"])
        assert link and link.group(1).startswith(PUBLIC)

        # The caller, on their phone's browser: the link from the text message (the short
        # address with the code filled in, not yet used), the code, the question.
        resident = instance.client
        entry = await resident.get(path_of(link.group(1)), follow_redirects=True)
        assert entry.status_code == 200 and f'value="{code.replace(" ", "")}"' in entry.text
        wrong = await resident.post("/comm/phone/identify", data={"code": "000000"})
        assert wrong.status_code == 400 and "klopt niet" in wrong.text
        opened = await resident.post("/comm/phone/identify", data={"code": code})
        assert opened.status_code == 303
        page = opened.headers["location"]
        question = await resident.get(path_of(page))
        assert "Verhuizing doorgeven" in question.text
        assert "Identificeren met Demo-identificatie" in question.text
        again = await resident.post("/comm/phone/identify", data={"code": code})
        assert again.status_code == 400  # the code opened the page once

        started = await resident.post(path_of(page), data={"auth_method": "demo"})
        assert started.status_code == 303
        shared = await resident.post(path_of(started.headers["location"]), data={"action": "share"})
        assert shared.headers["location"] == page  # back on the page
        back = await resident.get(path_of(page))
        assert "U bent geïdentificeerd" in back.text and CANARY_NAME not in back.text

        panel = await anna.client.get(f"/agent/default/c/{conversation_id}")
        assert CANARY_NAME in panel.text  # bound to this live call
        assert (await conversation(instance, conversation_id)).call_state == "connected"
    finally:
        caller.stop()
    logged = "\n".join(r.getMessage() + str(r.__dict__) for r in caplog.records)
    for secret in (CALLER, code.replace(" ", ""), CANARY_BSN):
        assert secret not in logged
    dump = await conversations.db.run(lambda conn: str([list(r) for r in conn.execute(DUMP)]))
    assert code.replace(" ", "") not in dump and CANARY_NAME not in dump


async def test_a_call_is_transferred_warm_to_a_colleague_and_cold_to_the_queue(
    make_app: AppFactory, tmp_path: Path, asterisk: Pbx, desk_phones: dict[str, Baresip]
) -> None:
    """Warm: the colleague's phone rings while the first agent is still talking; when it
    answers, the caller is bridged to the colleague and the first agent's leg goes. Cold: back
    in line with music, and the next agent's phone rings."""
    instance = await phone_app(make_app, tmp_path, asterisk)
    anna = await agent_at_phone(instance, "anna", "PJSIP/agent1")
    bert = await agent_at_phone(instance, "bert", "PJSIP/agent2")
    conversation_id, code, _ = await phone_conversation(instance)
    caller = await call(asterisk, tmp_path, code, mode="rfc4733")
    phone1, phone2 = desk_phones["agent1"], desk_phones["agent2"]
    try:
        await until(lambda: _linked(instance, conversation_id), "the call to link")
        await anna.post("/agent/default/presence", presence="available")
        await until(lambda: _state_in(instance, conversation_id, {"offered"}), "the offer")
        await anna.post(f"/agent/default/c/{conversation_id}/accept")
        await phone1.wait_for("CALL_ESTABLISHED")
        await until(lambda: _call_state(instance, conversation_id, "connected"), "the bridge")

        offered = await anna.post(
            f"/agent/default/c/{conversation_id}/offer", target=await agent_id(instance, "bert")
        )
        assert offered.status_code == 303
        first_closed = len(phone1.events)
        assert (await bert.post(f"/agent/default/c/{conversation_id}/take")).status_code == 303
        await phone2.wait_for("CALL_ESTABLISHED")  # the colleague's phone rang and answered
        await phone1.wait_for("CALL_CLOSED", after=first_closed)  # the first agent is off
        taken = await until(
            lambda: _call_state(instance, conversation_id, "connected"), "the new bridge"
        )
        assert taken.agent_id == await agent_id(instance, "bert")
        assert CANARY_NAME in (await bert.client.get(f"/agent/default/c/{conversation_id}")).text

        await bert.post("/agent/default/presence", presence="paused")
        second_closed = len(phone2.events)
        moved = await bert.post(f"/agent/default/c/{conversation_id}/transfer", target="general")
        assert moved.status_code == 303
        await phone2.wait_for("CALL_CLOSED", after=second_closed)  # Bert's leg is gone
        back = await until(
            lambda: _state_in(instance, conversation_id, {"waiting", "offered"}), "the line"
        )
        assert back.call_state == "waiting"
        await until(lambda: _state_in(instance, conversation_id, {"offered"}), "a new offer")
        ringing = len(phone1.events)
        await anna.post(f"/agent/default/c/{conversation_id}/accept")
        await phone1.wait_for("CALL_ESTABLISHED", after=ringing)
        await until(lambda: _call_state(instance, conversation_id, "connected"), "the bridge")
        assert caller.process.returncode is None  # the caller was on the line throughout
    finally:
        caller.stop()
