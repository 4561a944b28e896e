"""Every Redis key and channel of the policy plane (DESIGN section 5), in one place,
and how a Redis URL is shown in messages."""
from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit

PREFIX = "clidash:"
POLICY_PREFIX = PREFIX + "policy:"
FLOOR_PREFIX = PREFIX + "floor:"

POLICY_CHANGED = PREFIX + "policy-changed"   # pub/sub: {"service":..,"version":..}, a hint only
TELEMETRY_STREAM = PREFIX + "telemetry"      # stream: field `record` = telemetry JSON
TELEMETRY_GROUP = "optimizer"                # the optimizer's consumer group on TELEMETRY_STREAM
DECISIONS_STREAM = PREFIX + "decisions"      # stream: one entry per policy change
DECISIONS_MAXLEN = 10_000                    # trimmed approximately (MAXLEN ~)
PROXIES_KEY = PREFIX + "proxies"             # hash: proxy id -> {"service","policy_version","last_seen"}

# The live optimizer's own coordination keys (optimizer/live/sharing.py): several
# optimizer processes share the telemetry stream's consumer group.
OPTIMIZER_PARTIAL_PREFIX = PREFIX + "optimizer:partial:"  # hash per (service, window): consumer -> partial JSON
OPTIMIZER_OWNER_PREFIX = PREFIX + "optimizer:owner:"      # string per service: the consumer that decides it


def policy_key(service: str) -> str:
    return POLICY_PREFIX + service


def floor_key(service: str) -> str:
    return FLOOR_PREFIX + service


def optimizer_partial_key(service: str, window: int) -> str:
    return f"{OPTIMIZER_PARTIAL_PREFIX}{service}:{window}"


def optimizer_owner_key(service: str) -> str:
    return OPTIMIZER_OWNER_PREFIX + service


def service_from_key(key: str) -> str | None:
    """The service of a policy or floor key, else None."""
    for prefix in (POLICY_PREFIX, FLOOR_PREFIX):
        if key.startswith(prefix):
            return key[len(prefix):]
    return None


def redact_url(url: str) -> str:
    """`url` for logs and errors: a password becomes ***."""
    try:
        parts = urlsplit(url)
        password = parts.password
    except ValueError:
        return "<unparsable URL>"
    if not password:
        return url
    return urlunsplit(parts._replace(netloc=parts.netloc.replace(":" + password + "@", ":***@", 1)))
