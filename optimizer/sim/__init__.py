"""Window-level simulator of a primary + replicas under per-route consistency modes
(training and evaluation ground for the optimizer). See env.SimEnv and scenarios.SCENARIOS."""
from .env import SimEnv, WindowResult
from .model import LagProcess, Multiplier, Route, Scenario, Server, erlang_c
from .scenarios import SCENARIOS

__all__ = ["SimEnv", "WindowResult", "LagProcess", "Multiplier", "Route", "Scenario", "Server",
           "erlang_c", "SCENARIOS"]
