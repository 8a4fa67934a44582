"""The lifecycle state machine: the allowed paths, and everything else refused."""

from __future__ import annotations

import itertools

import pytest

from idcontact.domain.lifecycle import (
    STATES,
    InvalidTransitionError,
    can_change,
    change,
    sources,
)

HAPPY = [
    "created",
    "authenticated",
    "waiting",
    "offered",
    "connected",
    "wrap_up",
    "ended",
    "purged",
]


def test_the_whole_journey_is_allowed() -> None:
    for current, target in itertools.pairwise(HAPPY):
        assert change(current, target) == target  # type: ignore[arg-type]


def test_unidentified_conversations_go_straight_to_the_queue() -> None:
    assert can_change("created", "waiting")


def test_an_offer_not_accepted_returns_to_the_queue() -> None:
    assert can_change("offered", "waiting")


@pytest.mark.parametrize("state", STATES)
def test_ending_and_purging(state: str) -> None:
    assert can_change(state, "ended") == (state not in ("ended", "purged"))  # type: ignore[arg-type]
    assert can_change(state, "purged") == (state != "purged")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("current", "target"),
    [
        ("created", "connected"),  # no skipping the queue
        ("failed", "authenticated"),  # a failed identification is not retried in place
        ("waiting", "connected"),  # only through an offer
        ("connected", "offered"),  # a transfer goes back in line, not straight to an agent
        ("ended", "waiting"),
        ("purged", "ended"),
        ("wrap_up", "connected"),
    ],
)
def test_other_steps_are_refused(current: str, target: str) -> None:
    with pytest.raises(InvalidTransitionError) as caught:
        change(current, target)  # type: ignore[arg-type]
    assert caught.value.status == 409


def test_sources_lists_exactly_the_states_that_may_change() -> None:
    assert set(sources("connected")) == {"offered"}
    assert "purged" not in sources("purged") and "ended" not in sources("ended")
