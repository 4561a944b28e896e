"""Safety rules applied OUTSIDE the learner to each proposed action.

The agent proposes an action index (ACTIONS, strongest first: a higher index is
weaker); `Guardrails.decide` returns what is actually applied. Order of checks:

  tripwire    audited stale rate > stale_tripwire x budget: revert to STRONG and
              freeze the route for `freeze_windows` windows, the tripping one
              included (the revert counts as a change and is
              never rate-limited). A budget of 0 trips on any stale read.
  frozen      while frozen the route stays STRONG whatever is proposed, and
              `is_frozen(route)` tells the agent not to learn from it.
  floor       a proposal weaker than the operator's floor is raised to the
              weakest allowed action at least as strong as the proposal. The
              mask is a prefix of the strength order, so this also tightens a
              route whose floor was raised under it.
  tighten     a stronger action applies at once: safety must never wait.
  dwell       a weaker action is held back until the route has spent
              `dwell_windows` completed windows at its current action.
  step        relaxing moves at most one step weaker per decision; from STRONG toward
              a BOUNDED or EVENTUAL target the step is BOUNDED:50, not READ_YOUR_WRITES
              (which bounds nothing for sessions without writes).
  rate_limit  at most `max_changes_per_window` changes per window; tightenings
              still apply (and count), relaxations beyond the limit are deferred.

Each firing is returned as an event `(kind, route, detail)` and counted in
`fired[kind]`. Call `end_window()` once per decision window.
"""
from __future__ import annotations

from collections import Counter
from typing import Sequence

from .actions import ACTIONS, N_ACTIONS

STRONG_INDEX = 0
RYW_INDEX = 1
Event = tuple[str, str, str]


class Guardrails:
    def __init__(self, dwell_windows: int = 3, max_changes_per_window: int = 5,
                 stale_tripwire: float = 3.0, freeze_windows: int = 10) -> None:
        self.dwell_windows = dwell_windows
        self.max_changes_per_window = max_changes_per_window
        self.stale_tripwire = stale_tripwire
        self.freeze_windows = freeze_windows
        self.fired: Counter[str] = Counter()
        self._changes = 0                       # changes applied in the current window
        self._index: dict[str, int] = {}        # action we last saw/applied per route
        self._dwell: dict[str, int] = {}        # completed windows at that action
        self._frozen: dict[str, int] = {}       # windows of freeze left

    def is_frozen(self, route: str) -> bool:
        return self._frozen.get(route, 0) > 0

    def dwell(self, route: str) -> int:
        return self._dwell.get(route, 0)

    def decide(self, route: str, proposed_index: int, current_index: int,
               floor_mask: Sequence[bool] | None, stale_rate: float | None,
               stale_budget: float | None) -> tuple[int, list[Event]]:
        events: list[Event] = []
        mask = list(floor_mask) if floor_mask is not None else [True] * N_ACTIONS
        mask[STRONG_INDEX] = True               # STRONG always satisfies any floor
        if self._index.get(route) != current_index:
            # New route or changed behind our back (operator, restart): start the
            # dwell clock afresh, so relaxing waits a full dwell period.
            self._index[route] = current_index
            self._dwell[route] = 0

        def emit(kind: str, detail: str) -> None:
            events.append((kind, route, detail))
            self.fired[kind] += 1

        if stale_rate is not None and stale_budget is not None:
            limit = self.stale_tripwire * stale_budget
            if stale_rate > limit:
                emit("tripwire", f"audited stale rate {stale_rate:.4f} > {self.stale_tripwire:g} x budget "
                                 f"{stale_budget:.4f}; revert to {ACTIONS[STRONG_INDEX]}, "
                                 f"freeze {self.freeze_windows} windows")
                self._frozen[route] = self.freeze_windows
                return self._apply(route, current_index, STRONG_INDEX), events

        if self.is_frozen(route):
            emit("frozen", f"{self._frozen[route]} windows of freeze left; held at {ACTIONS[STRONG_INDEX]}")
            return self._apply(route, current_index, STRONG_INDEX), events

        target = min(max(int(proposed_index), 0), N_ACTIONS - 1)
        if not mask[target]:
            raised = max(i for i in range(target + 1) if mask[i])
            emit("floor", f"{ACTIONS[target]} is weaker than the floor; raised to {ACTIONS[raised]}")
            target = raised

        if target <= current_index:             # tightening or no change: immediate
            return self._apply(route, current_index, target), events

        if self._dwell.get(route, 0) < self.dwell_windows:
            emit("dwell", f"{self._dwell.get(route, 0)}/{self.dwell_windows} windows at "
                          f"{ACTIONS[current_index]}; relaxing to {ACTIONS[target]} deferred")
            return current_index, events
        next_step = self._next_step(current_index, target)
        if target > next_step:
            emit("step", f"relax limited to one step: {ACTIONS[next_step]} instead of {ACTIONS[target]}")
            target = next_step
        if self._changes >= self.max_changes_per_window:
            emit("rate_limit", f"{self._changes}/{self.max_changes_per_window} changes this window; "
                               f"relaxing to {ACTIONS[target]} deferred")
            return current_index, events
        return self._apply(route, current_index, target), events

    @staticmethod
    def _next_step(current: int, target: int) -> int:
        """The one step a relaxation may take toward `target`. READ_YOUR_WRITES is skipped on
        the way to a lag-bounded mode: for sessions that do not write it bounds nothing,
        so passing through it would expose them to any lag on the way to a bound."""
        step = current + 1
        if step == RYW_INDEX and target > RYW_INDEX:
            step += 1
        return step

    def _apply(self, route: str, current: int, final: int) -> int:
        if final != current:
            self._changes += 1
            self._index[route] = final
            self._dwell[route] = 0
        return final

    def end_window(self) -> None:
        """Close a decision window: routes dwell one more window, freezes tick down,
        and the change budget resets."""
        self._changes = 0
        for route in self._dwell:
            self._dwell[route] += 1
        for route in list(self._frozen):
            self._frozen[route] -= 1
            if self._frozen[route] <= 0:
                del self._frozen[route]
