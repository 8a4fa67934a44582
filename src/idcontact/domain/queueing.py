"""Queue rules shared by every channel: opening hours, who is next, who may take it, how long.

Pure functions and small value objects with an explicit clock, so the same rules serve the
in-process model, the database-backed one and the tests. Nothing here knows about phones,
chats or HTTP: channels only plug into these rules.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, time, timedelta
from typing import Literal
from zoneinfo import ZoneInfo

Channel = Literal["phone", "chat", "video", "form"]
AgentState = Literal["available", "busy", "wrap_up", "paused"]
WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
AMSTERDAM = ZoneInfo("Europe/Amsterdam")


@dataclass(frozen=True)
class Period:
    """One opening period on a weekday, ``start`` inclusive, ``end`` exclusive."""

    weekday: int  # 0 = Monday
    start: time
    end: time


@dataclass(frozen=True)
class OpeningHours:
    """A weekly schedule in the municipality's time zone, with closed dates (holidays)."""

    periods: tuple[Period, ...]
    zone: ZoneInfo = AMSTERDAM
    closed_dates: frozenset[str] = frozenset()  # ISO dates, e.g. "2026-12-25"

    @classmethod
    def parse(
        cls,
        weekly: dict[str, Sequence[str]],
        zone: str = "Europe/Amsterdam",
        closed_dates: Iterable[str] = (),
    ) -> OpeningHours:
        """``{"mon": ["08:30-12:00", "13:00-17:00"], …}``; raises ValueError on bad input."""
        periods = []
        for day, ranges in weekly.items():
            if day not in WEEKDAYS:
                raise ValueError(f"unknown weekday {day!r}; use {', '.join(WEEKDAYS)}")
            for text in ranges:
                start_text, sep, end_text = text.partition("-")
                if not sep:
                    raise ValueError(f"{day}: {text!r} is not HH:MM-HH:MM")
                start, end = time.fromisoformat(start_text), time.fromisoformat(end_text)
                if start >= end:
                    raise ValueError(f"{day}: {text!r} ends before it starts")
                periods.append(Period(WEEKDAYS.index(day), start, end))
        return cls(tuple(periods), ZoneInfo(zone), frozenset(closed_dates))

    def is_open(self, at: datetime) -> bool:
        local = at.astimezone(self.zone)
        if local.date().isoformat() in self.closed_dates:
            return False
        now = local.time()
        return any(p.weekday == local.weekday() and p.start <= now < p.end for p in self.periods)

    def next_opening(self, at: datetime) -> datetime | None:
        """When the queue opens next (``at`` itself when open); ``None`` without periods."""
        if self.is_open(at):
            return at
        local = at.astimezone(self.zone)
        for days in range(15):
            day = (local + timedelta(days=days)).date()
            if day.isoformat() in self.closed_dates:
                continue
            starts = sorted(p.start for p in self.periods if p.weekday == day.weekday())
            for start in starts:
                candidate = datetime.combine(day, start, self.zone)
                if candidate > local:
                    return candidate
        return None


@dataclass(frozen=True)
class Waiting:
    """A conversation in a queue; ``since`` is kept when an offer fails, so it stays first."""

    conversation_id: str
    channel: Channel
    since: float


@dataclass(frozen=True)
class Agent:
    agent_id: str
    state: AgentState
    calls: int = 0
    chats: int = 0
    videos: int = 0
    idle_since: float = 0.0


def can_take(agent: Agent, channel: Channel, *, max_chats: int) -> bool:
    """Several chats at once (up to ``max_chats``) but one call or video, and never both."""
    if agent.state != "available":
        return False
    if channel in ("phone", "video"):
        return agent.calls == 0 and agent.videos == 0 and agent.chats == 0
    if channel == "chat":
        return agent.calls == 0 and agent.videos == 0 and agent.chats < max_chats
    return True  # the contact form is answered asynchronously


def next_offer(
    waiting: Iterable[Waiting], agents: Iterable[Agent], *, max_chats: int
) -> tuple[Waiting, Agent] | None:
    """The longest-waiting conversation some agent can take, and the agent idle longest."""
    pool = list(agents)
    for item in sorted(waiting, key=lambda w: (w.since, w.conversation_id)):
        able = [a for a in pool if can_take(a, item.channel, max_chats=max_chats)]
        if able:
            return item, min(able, key=lambda a: (a.idle_since, a.agent_id))
    return None


def position(waiting: Iterable[Waiting], conversation_id: str) -> int | None:
    """1 for the first in line; ``None`` when not waiting."""
    order = sorted(waiting, key=lambda w: (w.since, w.conversation_id))
    for index, item in enumerate(order, start=1):
        if item.conversation_id == conversation_id:
            return index
    return None


def expected_wait(position: int, handle_seconds: float, available_agents: int) -> float | None:
    """Position × average handle time ÷ available agents; ``None`` when nobody is available."""
    if position < 1:
        raise ValueError("position starts at 1")
    if available_agents <= 0:
        return None
    return position * handle_seconds / available_agents


@dataclass(frozen=True)
class HandleTime:
    """A moving average of handle times, seeded from configuration (no history yet)."""

    seconds: float
    weight: float = 0.1  # of each new finished conversation

    def add(self, handled_seconds: float) -> HandleTime:
        if not math.isfinite(handled_seconds) or handled_seconds < 0:
            return self  # a broken measurement never moves the estimate
        return HandleTime(
            self.seconds + self.weight * (handled_seconds - self.seconds), self.weight
        )


def announce_long_wait(expected_seconds: float | None, threshold_seconds: float) -> bool:
    """Whether to tell the resident the wait is long (unknown counts as long)."""
    return expected_seconds is None or expected_seconds > threshold_seconds
