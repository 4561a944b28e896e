"""clidash-sdk: tag database statements with the request's route, for the CLIDash proxy.

    from clidash_sdk import route, hooks
    hooks.sqlalchemy(engine)
    with route("product_page"):
        session.execute(...)      # ... /*application='catalog',route='product_page'*/

Zero dependencies; the driver hooks import their driver only when called.
"""
from __future__ import annotations

from . import hooks, sqlcommenter, udp
from ._route import MAX_TAG_LENGTH, configure, current_tags, route, tag
from .udp import emit

__version__ = "0.1.0"

__all__ = ["route", "current_tags", "tag", "configure", "emit", "emit_errors", "hooks", "sqlcommenter",
           "MAX_TAG_LENGTH", "__version__"]


def emit_errors() -> int:
    """How many emit() calls failed (and were swallowed) in this process so far."""
    return udp.errors
