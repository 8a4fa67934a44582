"""The queue service on a real database: offers, places, waits, opening hours, concurrency."""

from __future__ import annotations

import asyncio
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import Connection, insert, select

from idcontact.agents.directory import Membership
from idcontact.domain.lifecycle import InvalidTransitionError
from idcontact.events import LocalBus
from idcontact.queues import AHEAD_LIMIT, Place, QueueService
from idcontact.storage.db import agents, audit_events, conversations, queue_stats
from tests.conftest import CANARY_BSN, AppFactory, Instance, _reset_postgres, demo_settings
from tests.flows.test_console import waiting_conversation
from tests.flows.test_core_flows import JSON, issue
from tests.services import postgres_url

pytestmark = pytest.mark.anyio

SUNDAY_NOON = datetime(2026, 11, 29, 12, 0, tzinfo=ZoneInfo("Europe/Amsterdam")).timestamp()


async def available_agent(instance: Instance, name: str, queues: tuple[str, ...] = ("*",)) -> str:
    directory = instance.services.agents
    assert directory is not None and instance.services.db is not None
    await directory.add(name, name, [Membership("default", "agent", queues)])
    agent_id = await instance.services.db.run(
        lambda conn: conn.execute(select(agents.c.id).where(agents.c.username == name)).scalar()
    )
    await service(instance).set_presence(str(agent_id), "available")
    return str(agent_id)


def service(instance: Instance) -> QueueService:
    queues = instance.services.tenants["default"].queues
    assert queues is not None
    return queues


async def states(instance: Instance, ids: list[str]) -> list[str]:
    conversations = instance.services.conversations
    assert conversations is not None
    return [(await conversations.get(i)).state for i in ids]


async def test_places_and_expected_waits(
    make_app: AppFactory, tmp_path: Any, database: str
) -> None:
    overrides: dict[str, Any] = {}
    if database == "postgres":
        overrides["database_url"] = postgres_url()
        await _reset_postgres(overrides["database_url"])
    inst: Instance = await make_app(
        demo_settings(
            tmp_path,
            queues=[{"tag": "general", "handle_seconds": 240, "long_wait_seconds": 300}],
            **overrides,
        )
    )
    first = await waiting_conversation(inst)
    second = await waiting_conversation(inst, "123456782")
    places = await service(inst).places()
    assert places[first].position == 1 and places[second].position == 2
    assert places[first].expected_seconds is None  # nobody staffed: unknown, and said so
    assert places[first].long_wait
    assert await place_of(inst, first) == places[first]  # one resident's page: the same

    await available_agent(inst, "anna", ("other",))  # not a member of this queue
    assert (await service(inst).places())[first].expected_seconds is None
    assert (await place_of(inst, first)).expected_seconds is None

    bert = await available_agent(inst, "bert")  # takes both (chats), so count a third resident
    third = await waiting_conversation(inst, "111222333")
    await service(inst).tick()
    place = (await service(inst).places())[third]
    # Offered conversations still count as in line until accepted: third is position 3.
    assert place.position == 3
    assert place.expected_seconds == pytest.approx(3 * 240 / 1)
    assert place.long_wait  # 720 s > 300 s
    assert await place_of(inst, third) == place
    estimate = await service(inst).estimate("general")
    assert estimate.available_agents == 1 and estimate.handle_seconds == 240

    await service(inst).set_presence(bert, "paused")  # nobody left to count on
    assert (await place_of(inst, third)).expected_seconds is None
    assert (await service(inst).places())[third].expected_seconds is None


async def place_of(instance: Instance, conversation_id: str) -> Place:
    """What one resident's waiting page is told (one statement, apart from ``places()``)."""
    assert instance.services.conversations is not None
    conversation = await instance.services.conversations.get(conversation_id)
    place = await service(instance).place(conversation)
    assert place is not None
    return place


async def test_a_place_past_the_limit_is_told_as_more_than(
    make_app: AppFactory, tmp_path: Any
) -> None:
    """The count of those ahead stops at AHEAD_LIMIT (its cost grows with the line); past it a
    resident hears "more than 500", the same from place() and from places()."""
    inst: Instance = await make_app(demo_settings(tmp_path))
    last = await waiting_conversation(inst)
    assert inst.services.db is not None

    def fill_line(conn: Connection) -> None:
        row = conn.execute(select(conversations).where(conversations.c.id == last)).one()
        ahead = []
        for i in range(AHEAD_LIMIT + 1):  # all of them before the last
            values = dict(row._mapping)
            values.update(
                id=f"ahead{i:04d}", slot_hash=None, waiting_since=row.waiting_since - 1000 + i
            )
            ahead.append(values)
        conn.execute(insert(conversations), ahead)

    await inst.services.db.run(fill_line, write=True)
    conversation = await inst.services.conversations.get(last)  # type: ignore[union-attr]
    place = await service(inst).place(conversation)
    assert place is not None and place.beyond and place.position == AHEAD_LIMIT + 1
    places = await service(inst).places()
    assert places[last].beyond and places[last].position == AHEAD_LIMIT + 1
    # Within the limit the place is exact, and the same both ways.
    near = await inst.services.conversations.get("ahead0009")  # type: ignore[union-attr]
    near_place = await service(inst).place(near)
    assert near_place is not None and (near_place.position, near_place.beyond) == (10, False)
    assert (places["ahead0009"].position, places["ahead0009"].beyond) == (10, False)
    # The last one inside the limit: exactly 500 ahead would already be "more than" 499.
    edge = await inst.services.conversations.get(f"ahead{AHEAD_LIMIT - 1:04d}")  # type: ignore[union-attr]
    edge_place = await service(inst).place(edge)
    assert edge_place is not None and (edge_place.position, edge_place.beyond) == (
        AHEAD_LIMIT,
        False,
    )


async def test_places_go_only_to_residents_still_waiting(
    make_app: AppFactory, tmp_path: Any
) -> None:
    """An offered resident was told "offered"; a place push saying "waiting" would undo that
    (and, once the agent accepted, even "connected": the chat bench saw exactly that)."""
    inst: Instance = await make_app(
        demo_settings(tmp_path, queues=[{"tag": "general", "max_chats": 1}])
    )
    first = await waiting_conversation(inst)
    second = await waiting_conversation(inst, "123456782")
    await available_agent(inst, "bert")  # one chat at a time: takes first, second waits
    await service(inst).tick()
    assert await states(inst, [first, second]) == ["offered", "waiting"]
    bus = service(inst).bus
    async with (
        bus.subscribe("default", "conversation", first) as offered,
        bus.subscribe("default", "conversation", second) as waiting,
    ):
        await service(inst).tick()
        pushed = await waiting.next(5.0)
        assert pushed is not None and pushed.data["state"] == "waiting"
        assert pushed.data["position"] == 2  # the offered one is still ahead in line
        told = [e.data.get("state") for e in offered.drain()]
        assert "waiting" not in told


async def test_closed_queue_makes_no_offers_and_says_when_it_opens(
    make_app: AppFactory, tmp_path: Any
) -> None:
    settings = demo_settings(
        tmp_path, queues=[{"tag": "general", "opening_hours": {"mon": ["08:30-17:00"]}}]
    )
    inst: Instance = await make_app(settings, clock=lambda: SUNDAY_NOON)
    conversation_id = await waiting_conversation(inst)
    await available_agent(inst, "anna")
    await service(inst).tick()
    assert await states(inst, [conversation_id]) == ["waiting"]
    estimate = await service(inst).estimate("general")
    assert not estimate.is_open and estimate.opens_at is not None
    opens = datetime.fromtimestamp(estimate.opens_at, ZoneInfo("Europe/Amsterdam"))
    assert (opens.weekday(), opens.hour, opens.minute) == (0, 8, 30)


async def test_handle_time_moves_with_finished_conversations(
    make_app: AppFactory, tmp_path: Any
) -> None:
    now = [SUNDAY_NOON]
    inst: Instance = await make_app(
        demo_settings(tmp_path, queues=[{"tag": "general", "handle_seconds": 300}]),
        clock=lambda: now[0],
    )
    conversation_id = await waiting_conversation(inst)
    agent_id = await available_agent(inst, "anna")
    await service(inst).tick()
    await service(inst).accept(conversation_id, agent_id)
    now[0] += 100  # a 100-second conversation
    await service(inst).close(conversation_id, agent_id)
    estimate = await service(inst).estimate("general")
    assert estimate.handle_seconds == pytest.approx(300 + 0.1 * (100 - 300))
    # A waiting resident's expected wait uses the learned handle time too (read with the place).
    now[0] += 3600  # past any wrap-up: the agent is free again
    waiting = await inst.services.conversations.get(await waiting_conversation(inst))  # type: ignore[union-attr]
    place = await service(inst).place(waiting)
    assert place is not None and place.position == 1
    assert place.expected_seconds == pytest.approx(estimate.handle_seconds)


async def one_chat_each_on_postgres(make_app: AppFactory, tmp_path: Any) -> Instance:
    """An instance on a fresh PostgreSQL database where every agent holds one chat at most."""
    url = postgres_url()
    await _reset_postgres(url)
    settings = demo_settings(
        tmp_path, database_url=url, queues=[{"tag": "general", "max_chats": 1}]
    )
    inst: Instance = await make_app(settings)
    return inst


@pytest.mark.postgres
async def test_two_dispatchers_never_offer_one_conversation_twice(
    make_app: AppFactory, tmp_path: Any
) -> None:
    inst = await one_chat_each_on_postgres(make_app, tmp_path)
    ids = [await waiting_conversation(inst, CANARY_BSN) for _ in range(6)]
    for name in ("anna", "bert", "carla"):
        await available_agent(inst, name)
    other = QueueService(service(inst).conversations, LocalBus())  # a second instance
    await asyncio.gather(*(q.tick() for q in (service(inst), other, service(inst), other)))
    found = await asyncio.gather(*(service(inst).conversations.get(i) for i in ids))
    holders = [c.agent_id for c in found if c.state == "offered"]
    assert len(holders) == 3 and len(set(holders)) == 3  # one each, none twice
    assert [c.state for c in found].count("waiting") == 3

    def offers(conn: Connection) -> list[str]:
        query = select(audit_events.c.conversation_id).where(
            audit_events.c.action == "conversation.offered"
        )
        return [str(c) for c in conn.execute(query).scalars()]

    made = await inst.services.db.run(offers)  # type: ignore[union-attr]
    assert sorted(made) == sorted(c.id for c in found if c.state == "offered")  # none re-offered


@pytest.mark.postgres
async def test_agents_closing_at_once_both_count_in_the_handle_time(
    make_app: AppFactory, tmp_path: Any
) -> None:
    inst = await one_chat_each_on_postgres(make_app, tmp_path)
    ids = [await waiting_conversation(inst, CANARY_BSN) for _ in range(4)]
    agent_ids = [await available_agent(inst, name) for name in ("anna", "bert", "carla", "dirk")]
    await service(inst).tick()
    held = {c.agent_id: c.id for c in [await service(inst).conversations.get(i) for i in ids]}
    assert set(held) == set(agent_ids)  # one each
    for agent_id, conversation_id in held.items():
        await service(inst).accept(conversation_id, agent_id)
    # The first finished conversations of the queue, closed at the same moment.
    await asyncio.gather(*(service(inst).close(c, a) for a, c in held.items()))
    assert inst.services.db is not None
    handled = await inst.services.db.run(
        lambda conn: conn.execute(select(queue_stats.c.handled)).scalar_one()
    )
    assert handled == 4


async def test_pokes_close_together_share_a_tick(make_app: AppFactory, tmp_path: Any) -> None:
    inst: Instance = await make_app(demo_settings(tmp_path))
    queues = QueueService(service(inst).conversations, LocalBus())
    loop = asyncio.get_running_loop()
    ticked: asyncio.Queue[float] = asyncio.Queue()

    async def tick() -> int:
        ticked.put_nowait(loop.time())
        return 0

    queues.tick = tick  # type: ignore[method-assign]
    runner = asyncio.create_task(queues.run(interval=60.0, gap=0.5))
    try:
        poked = loop.time()
        queues.poke()
        first = await asyncio.wait_for(ticked.get(), 5)
        for _ in range(5):  # a burst right after a tick
            queues.poke()
        second = await asyncio.wait_for(ticked.get(), 5)
        assert first - poked < 0.5  # poked after a quiet moment: at once
        assert second - first >= 0.5  # not sooner than the gap, and all five in one tick:
        assert ticked.empty() and not queues._dirty.is_set()
    finally:
        runner.cancel()
        with pytest.raises(asyncio.CancelledError):
            await runner


async def test_joining_with_a_stale_read_changes_nothing(
    make_app: AppFactory, tmp_path: Any
) -> None:
    """The resident's page joins the queue guarded by the state it just read, without reading it
    again: if another request moved it first, the step is a race (409), never a second join."""
    inst: Instance = await make_app(demo_settings(tmp_path))
    conversations_ = inst.services.conversations
    assert conversations_ is not None
    token = issue(inst, {"fullname": "Demi", "bsn": CANARY_BSN})
    body = {"purpose": "report_move", "auth_result": token, "comm_method": "demo"}
    started = await inst.client.post("/start", json=body, headers=JSON)
    conversation_id = str(started.json()["client_url"].rsplit("/", 1)[1])
    stale = await conversations_.get(conversation_id)
    assert stale.state == "authenticated"
    joined = await service(inst).enqueue(conversation_id, actor="test")  # another request first
    assert joined.state == "waiting" and joined.waiting_since is not None

    with pytest.raises(InvalidTransitionError):
        await conversations_.transition(conversation_id, "waiting", actor="test", current=stale)
    again = await service(inst).enqueue(conversation_id, actor="test", current=stale)
    assert again.state == "waiting" and again.waiting_since == joined.waiting_since

    def joins(conn: Connection) -> int:
        query = select(audit_events.c.id).where(
            audit_events.c.conversation_id == conversation_id,
            audit_events.c.action == "conversation.waiting",
        )
        return len(conn.execute(query).all())

    assert await inst.services.db.run(joins) == 1  # type: ignore[union-attr]
    with pytest.raises(ValueError):  # someone else's read never guards this one
        other = await conversations_.get(await waiting_conversation(inst))
        await conversations_.transition(conversation_id, "waiting", actor="test", current=other)
