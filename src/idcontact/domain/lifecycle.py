"""The conversation lifecycle, one state machine for every channel.

::

    created ──► authenticated ──► waiting ──► offered ──► connected ──► wrap_up ──► ended ──► purged
       │  └──► failed / ineligible             ▲ ▲  │           │
       └──► waiting (talk without identifying) │ └──┘ offer not accepted in time: back to the queue
                                               └────────────────┘ transferred to a queue

Any state before ``ended`` may end (the resident hangs up or cancels); any state may be purged
by the sweeper except a live connection, which is never counted as idle.
"""

from __future__ import annotations

from typing import Literal, get_args

from idcontact.errors import IdContactError

State = Literal[
    "created",
    "authenticated",
    "failed",
    "ineligible",
    "waiting",
    "offered",
    "connected",
    "wrap_up",
    "ended",
    "purged",
]
STATES: tuple[State, ...] = get_args(State)

_NEXT: dict[State, frozenset[State]] = {
    "created": frozenset({"authenticated", "failed", "ineligible", "waiting"}),
    "authenticated": frozenset({"waiting"}),
    "failed": frozenset(),
    "ineligible": frozenset(),
    "waiting": frozenset({"offered"}),
    "offered": frozenset({"connected", "waiting"}),
    "connected": frozenset({"wrap_up", "waiting"}),
    "wrap_up": frozenset(),
    "ended": frozenset({"purged"}),
    "purged": frozenset(),
}
FINAL: frozenset[State] = frozenset({"ended", "purged"})
LIVE: frozenset[State] = frozenset({"connected"})
"""States in which the resident is talking to an agent: never purged as idle."""
HOLDS_ATTRIBUTES: frozenset[State] = frozenset(
    {"authenticated", "waiting", "offered", "connected", "wrap_up"}
)


class InvalidTransitionError(IdContactError):
    status = 409
    slug = "invalid-transition"
    title = "The conversation cannot change to that state now"


def can_change(current: State, target: State) -> bool:
    if target == "ended":
        return current not in FINAL
    if target == "purged":
        return current != "purged"
    return target in _NEXT[current]


def change(current: State, target: State) -> State:
    """Check one step of the lifecycle; returns ``target`` or raises (nothing changes)."""
    if not can_change(current, target):
        raise InvalidTransitionError(f"A conversation that is {current} cannot become {target}")
    return target


def sources(target: State) -> tuple[State, ...]:
    """Every state that may change to ``target`` (for guarded SQL updates)."""
    return tuple(s for s in STATES if can_change(s, target))
