"""Backend addresses from DSNs (postgresql://user:pw@host:port/db?application_name=...)."""
from __future__ import annotations

from dataclasses import dataclass, field
from urllib.parse import parse_qsl, unquote, urlsplit

_DEFAULT_PORTS = {"postgresql": 5432, "postgres": 5432, "mysql": 3306, "mariadb": 3306}


class DsnError(ValueError):
    pass


@dataclass(frozen=True, slots=True)
class BackendAddress:
    name: str              # "primary", "replica-1", ...: how errors and metrics name it
    role: str              # "primary" | "replica"
    host: str
    port: int
    user: str
    password: str | None
    dbname: str | None
    options: dict = field(default_factory=dict, hash=False, compare=False)

    def describe(self) -> str:
        return f"{self.name} ({self.host}:{self.port})"


def parse_dsn(dsn: str, name: str, role: str) -> BackendAddress:
    parts = urlsplit(dsn)
    scheme = parts.scheme.lower()
    if scheme not in _DEFAULT_PORTS:
        raise DsnError(f"{name}: unsupported DSN scheme {parts.scheme!r} in {redact(dsn)!r}")
    if not parts.hostname:
        raise DsnError(f"{name}: DSN {redact(dsn)!r} has no host")
    try:
        port = parts.port or _DEFAULT_PORTS[scheme]
    except ValueError:
        raise DsnError(f"{name}: DSN {redact(dsn)!r} has an invalid port") from None
    if not parts.username:
        raise DsnError(f"{name}: DSN {redact(dsn)!r} has no user")
    dbname = unquote(parts.path.lstrip("/")) or None
    return BackendAddress(
        name=name, role=role, host=parts.hostname, port=port,
        user=unquote(parts.username),
        password=unquote(parts.password) if parts.password is not None else None,
        dbname=dbname, options=dict(parse_qsl(parts.query)),
    )


def redact(dsn: str) -> str:
    """The DSN with its password replaced, for messages and logs."""
    parts = urlsplit(dsn)
    if parts.password is None:
        return dsn
    netloc = parts.netloc.replace(":" + parts.password + "@", ":***@", 1)
    return parts._replace(netloc=netloc).geturl()
