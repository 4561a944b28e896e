"""The optimizer's action space: the consistency modes it may choose for a route.

Index order is strength order (strongest first), so "weaker than the floor" is a
suffix of the list and a mask is easy to read in logs.
"""
from __future__ import annotations

from clidash.policy import Mode, ModeSpec, is_weaker

ACTIONS: tuple[ModeSpec, ...] = (
    ModeSpec(Mode.STRONG),
    ModeSpec(Mode.READ_YOUR_WRITES),
    ModeSpec(Mode.BOUNDED, 50.0),
    ModeSpec(Mode.BOUNDED, 250.0),
    ModeSpec(Mode.BOUNDED, 1000.0),
    ModeSpec(Mode.EVENTUAL),
)
N_ACTIONS = len(ACTIONS)

_INDEX = {spec: i for i, spec in enumerate(ACTIONS)}


def action_index(spec: ModeSpec) -> int:
    """Position of `spec` in ACTIONS; ValueError for a spec the agent cannot choose
    (e.g. BOUNDED:100, which only a human can set)."""
    try:
        return _INDEX[spec]
    except KeyError:
        raise ValueError(f"{spec} is not one of the optimizer's actions: "
                         f"{', '.join(str(a) for a in ACTIONS)}") from None


def mask_for_floor(floor: ModeSpec | None) -> list[bool]:
    """True where the action is allowed: every action at least as strong as `floor`.
    STRONG is never weaker than anything, so at least one action is always allowed."""
    if floor is None:
        return [True] * N_ACTIONS
    return [not is_weaker(spec, floor) for spec in ACTIONS]
