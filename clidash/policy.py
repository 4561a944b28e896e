"""Consistency modes and their order: the contract shared by proxy and optimizer."""
from __future__ import annotations

import enum
from dataclasses import dataclass


class PolicyError(ValueError):
    """A mode or policy value that cannot be used; the message says why."""


class Mode(enum.IntEnum):
    """Strongest first: a higher value is a weaker guarantee."""

    STRONG = 0
    READ_YOUR_WRITES = 1
    BOUNDED = 2
    EVENTUAL = 3

    def at_least_as_strong_as(self, other: "Mode") -> bool:
        return self <= other


@dataclass(frozen=True, slots=True)
class ModeSpec:
    """A mode plus its parameter (BOUNDED needs max_lag_ms)."""

    mode: Mode
    max_lag_ms: float | None = None

    @classmethod
    def parse(cls, text: str) -> "ModeSpec":
        """'STRONG', 'READ_YOUR_WRITES', 'EVENTUAL' or 'BOUNDED:<ms>' (case-insensitive)."""
        name, _, arg = text.strip().partition(":")
        try:
            mode = Mode[name.strip().upper().replace("-", "_")]
        except KeyError:
            valid = ", ".join(m.name for m in Mode)
            raise PolicyError(f"unknown consistency mode {text!r}; expected one of {valid} (BOUNDED:<ms>)") from None
        if mode is Mode.BOUNDED:
            try:
                lag = float(arg)
            except ValueError:
                raise PolicyError(f"BOUNDED needs a lag bound in milliseconds, e.g. BOUNDED:250 (got {text!r})") from None
            if lag < 0:
                raise PolicyError(f"BOUNDED lag bound must be >= 0 ms (got {lag})")
            return cls(mode, lag)
        if arg:
            raise PolicyError(f"mode {mode.name} takes no parameter (got {text!r})")
        return cls(mode)

    def __str__(self) -> str:
        if self.mode is Mode.BOUNDED:
            return f"BOUNDED:{self.max_lag_ms:g}"
        return self.mode.name
