"""Queue rules: opening hours, order, capacity, expected wait, handle time."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from idcontact.domain.queueing import (
    Agent,
    HandleTime,
    OpeningHours,
    Waiting,
    announce_long_wait,
    can_take,
    expected_wait,
    next_offer,
    position,
)

HOURS = OpeningHours.parse(
    {"mon": ["08:30-12:00", "13:00-17:00"], "fri": ["08:30-12:00"]}, closed_dates=["2026-12-25"]
)


def amsterdam(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=HOURS.zone)


def test_opening_hours_in_local_time() -> None:
    assert HOURS.is_open(amsterdam("2026-11-30T08:30"))  # a Monday, opening minute
    assert not HOURS.is_open(amsterdam("2026-11-30T12:30"))  # lunch
    assert not HOURS.is_open(amsterdam("2026-11-30T17:00"))  # closing is exclusive
    # 07:45 UTC is 08:45 in Amsterdam in winter: open.
    assert HOURS.is_open(datetime(2026, 11, 30, 7, 45, tzinfo=UTC))


def test_next_opening_skips_closed_days_and_holidays() -> None:
    assert HOURS.next_opening(amsterdam("2026-11-30T12:30")) == amsterdam("2026-11-30T13:00")
    assert HOURS.next_opening(amsterdam("2026-11-30T17:30")) == amsterdam("2026-12-04T08:30")
    # 2026-12-25 is a Friday and closed: the next opening is Monday the 28th.
    assert HOURS.next_opening(amsterdam("2026-12-24T20:00")) == amsterdam("2026-12-28T08:30")
    assert OpeningHours(()).next_opening(amsterdam("2026-11-30T10:00")) is None


@pytest.mark.parametrize(
    "weekly",
    [{"someday": ["09:00-10:00"]}, {"mon": ["10:00-09:00"]}, {"mon": ["0900"]}, {"mon": ["9-x"]}],
)
def test_bad_opening_hours_are_refused(weekly: dict[str, list[str]]) -> None:
    with pytest.raises(ValueError):
        OpeningHours.parse(weekly)


def test_an_agent_holds_several_chats_but_one_call() -> None:
    free = Agent("a", "available")
    assert can_take(free, "phone", max_chats=3) and can_take(free, "chat", max_chats=3)
    two_chats = Agent("a", "available", chats=2)
    assert can_take(two_chats, "chat", max_chats=3)
    assert not can_take(two_chats, "chat", max_chats=2)
    assert not can_take(two_chats, "phone", max_chats=3)
    on_call = Agent("a", "available", calls=1)
    assert not can_take(on_call, "chat", max_chats=3) and not can_take(
        on_call, "video", max_chats=3
    )
    for state in ("busy", "wrap_up", "paused"):
        assert not can_take(Agent("a", state), "chat", max_chats=3)  # type: ignore[arg-type]


def test_longest_waiting_first_to_the_longest_idle_agent() -> None:
    waiting = [Waiting("late", "chat", 30.0), Waiting("early", "phone", 10.0)]
    agents = [Agent("x", "available", idle_since=5.0), Agent("y", "available", idle_since=1.0)]
    offer = next_offer(waiting, agents, max_chats=2)
    assert offer is not None
    assert offer[0].conversation_id == "early" and offer[1].agent_id == "y"


def test_a_call_waits_while_chat_agents_are_full_but_a_chat_goes_ahead() -> None:
    waiting = [Waiting("call", "phone", 1.0), Waiting("chat", "chat", 2.0)]
    agents = [Agent("x", "available", chats=1)]
    offer = next_offer(waiting, agents, max_chats=3)
    assert offer is not None and offer[0].conversation_id == "chat"
    assert next_offer(waiting, [Agent("x", "paused")], max_chats=3) is None


def test_a_refused_offer_keeps_its_place() -> None:
    first = Waiting("first", "chat", 1.0)
    waiting = [Waiting("second", "chat", 2.0), first]  # back in the queue with its old 'since'
    assert position(waiting, "first") == 1 and position(waiting, "second") == 2
    assert position(waiting, "gone") is None


def test_expected_wait_and_announcement() -> None:
    assert expected_wait(3, 240.0, 2) == 360.0
    assert expected_wait(1, 240.0, 0) is None
    with pytest.raises(ValueError):
        expected_wait(0, 240.0, 1)
    assert announce_long_wait(360.0, 300.0) and not announce_long_wait(240.0, 300.0)
    assert announce_long_wait(None, 300.0)  # nobody available: say so


def test_handle_time_is_a_moving_average_from_a_seed() -> None:
    aht = HandleTime(300.0)
    assert aht.add(400.0).seconds == pytest.approx(310.0)
    assert aht.add(float("nan")) == aht and aht.add(-1.0) == aht
    for _ in range(200):
        aht = aht.add(120.0)
    assert aht.seconds == pytest.approx(120.0, abs=0.01)
