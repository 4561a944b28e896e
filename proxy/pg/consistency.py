"""One client session's consistency state: the stronger mode it asked for, and
its read-your-writes bookkeeping. No IO; the clock is read where a commit or a
wait happens."""
from __future__ import annotations

import re
from time import monotonic

from clidash.policy import ModeSpec, is_weaker

from . import requests

_HINT_SETTING = re.compile(r"clidash\.consistency\s*(?:=|\bto\b)\s*'?([A-Za-z_]+(?::[0-9.]+)?)'?", re.I)
_HINT_RESET = re.compile(r"\breset\s+(?:all|clidash\.consistency)\b", re.I)
_HINT_OPTION = re.compile(r"clidash\.consistency=([A-Za-z_]+(?::[0-9.]+)?)")


class SessionConsistency:
    def __init__(self, stats, ryw_wait_ms: float = 0.0):
        self.stats = stats
        self.ryw_wait_s = ryw_wait_ms / 1000
        self.hint: ModeSpec | None = None        # SET clidash.consistency / startup options
        self.commit_time: float | None = None    # when the last write committed (its ReadyForQuery 'I')
        self.token: int | None = None            # the WAL position resolved from commit_time
        self.wrote_in_transaction = False
        self._wait_deadline: float | None = None

    # -- which mode a request is served in ------------------------------------

    def mode_for(self, req, service: str, policy: ModeSpec) -> ModeSpec:
        """The route's policy, or a stronger mode the statement or session asked for.
        A weaker request is ignored and counted: a route's floor always holds."""
        hint = req.hint or self.hint
        if req.bad_hint:
            self.stats.record_error("bad_consistency_hint")
        if hint is None or hint == policy:
            return policy
        if is_weaker(policy, hint):
            return hint
        if is_weaker(hint, policy):
            self.stats.hints_ignored[service] += 1
        return policy

    def session_sql(self, sql: str) -> None:
        """A session-level statement ran: SET/RESET clidash.consistency, RESET ALL."""
        lowered = sql.lower()
        if "clidash.consistency" not in lowered and "reset all" not in lowered:
            return
        for statement in sql.split(";"):
            if _HINT_RESET.search(statement):
                self.hint = None
            elif match := _HINT_SETTING.search(statement):
                self.hint = requests.parse_mode_hint(match.group(1))

    def startup_options(self, options: str) -> None:
        """`options=-c clidash.consistency=STRONG` at connect."""
        match = _HINT_OPTION.search(options or "")
        self.hint = requests.parse_mode_hint(match.group(1)) if match else None

    # -- read-your-writes ----------------------------------------------------

    def request_done(self, wrote: bool, transaction_ended: bool) -> None:
        """Called at each ReadyForQuery. A write counts once its transaction has
        ended: an extended-protocol autocommit write commits at Sync, not at
        its CommandComplete."""
        if not transaction_ended:
            self.wrote_in_transaction = self.wrote_in_transaction or wrote
        elif wrote or self.wrote_in_transaction:
            self.commit_time = monotonic()
            self._wait_deadline = None
            self.wrote_in_transaction = False

    def resolve_token(self, lag) -> int | None:
        """The session's WAL token: the first primary sample taken after its last
        commit. None while no such sample exists yet (or nothing is sampled)."""
        if self.commit_time is not None:
            token = lag.token_after(self.commit_time) if lag is not None else None
            if token is None:
                return None
            self.commit_time = None
            self.token = token
        return self.token

    @property
    def token_pending(self) -> bool:
        return self.commit_time is not None

    @property
    def has_written(self) -> bool:
        """This session committed a write earlier: its reads are exposed to read-your-writes."""
        return self.commit_time is not None or self.token is not None

    def may_wait(self) -> bool:
        """--ryw-wait-ms: whether a read-your-writes read may still wait for a
        replica to catch up (the window opens at the first wait after a commit)."""
        if not self.ryw_wait_s:
            return False
        now = monotonic()
        if self._wait_deadline is None:
            self._wait_deadline = now + self.ryw_wait_s
        return now < self._wait_deadline

    def discard_all(self) -> None:
        self.hint = None
