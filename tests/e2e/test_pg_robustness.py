"""Bad input and bad backends through the proxy: auth failures, garbage bytes, servers down, cancels."""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import os
import random
import secrets
import shutil
import socket
import struct
import subprocess
import threading
import time

import asyncpg
import psycopg
import pytest

pytestmark = pytest.mark.e2e

WHERE_SQL = "SELECT pg_is_in_recovery(), inet_server_port()"
PROTOCOL_3_0 = 196608
ANSWER_TIMEOUT_S = 5.0


# --------------------------------------------------------------------------- helpers


def closed_port() -> int:
    """A loopback port nothing listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def psql(dsn: str, sql: str) -> subprocess.CompletedProcess:
    return subprocess.run(["psql", dsn, "-X", "-A", "-t", "-q", "-v", "ON_ERROR_STOP=1", "-c", sql],
                          capture_output=True, text=True, timeout=30,
                          env={**os.environ, "PGCONNECT_TIMEOUT": "10"})


def assert_still_serving(proxy, direct, expect: str = "replica") -> None:
    """A new client gets a correct answer from the proxy (and the proxy process is alive)."""
    assert proxy.process.poll() is None, f"proxy exited with {proxy.process.returncode}"
    with psycopg.connect(proxy.dsn(), autocommit=True, connect_timeout=10) as conn:
        assert direct.where(*conn.execute(WHERE_SQL).fetchone()) == expect
    if shutil.which("psql"):
        proc = psql(proxy.dsn(), WHERE_SQL)
        assert proc.returncode == 0, proc.stderr
        assert direct.where(*proc.stdout.strip().split("|")) == expect


def startup_packet(**params: str) -> bytes:
    body = struct.pack("!I", PROTOCOL_3_0)
    body += b"".join(k.encode() + b"\0" + v.encode() + b"\0" for k, v in params.items()) + b"\0"
    return struct.pack("!I", len(body) + 4) + body


def message(kind: bytes, body: bytes) -> bytes:
    return kind + struct.pack("!I", len(body) + 4) + body


class RawClient:
    """Just enough of the frontend protocol to log in and then misbehave."""

    def __init__(self, host: str, port: int):
        self.sock = socket.create_connection((host, port), timeout=ANSWER_TIMEOUT_S)

    def close(self) -> None:
        self.sock.close()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _recv_exact(self, n: int) -> bytes | None:
        data = b""
        while len(data) < n:
            try:
                chunk = self.sock.recv(n - len(data))
            except (ConnectionResetError, BrokenPipeError):
                return None
            if not chunk:
                return None
            data += chunk
        return data

    def recv(self) -> tuple[bytes, bytes] | None:
        """(type, body) of the next backend message; None once the connection is closed."""
        header = self._recv_exact(5)
        if header is None:
            return None
        (length,) = struct.unpack("!I", header[1:])
        assert 4 <= length < 1 << 24, f"implausible backend message {header[:1]!r} of length {length}"
        body = self._recv_exact(length - 4)
        if body is None:
            return None
        return header[:1], body

    def login(self, user: str, password: str, database: str) -> None:
        import scramp

        self.send(startup_packet(user=user, database=database))
        scram = None
        while True:
            msg = self.recv()
            assert msg is not None, "proxy closed the connection during login"
            kind, body = msg
            if kind == b"E":
                raise AssertionError(f"login refused: {error_fields(body)}")
            if kind == b"Z":
                return
            if kind != b"R":
                continue  # ParameterStatus, BackendKeyData, NoticeResponse
            (code,) = struct.unpack("!I", body[:4])
            if code == 0:
                continue
            if code == 3:
                self.send(message(b"p", password.encode() + b"\0"))
            elif code == 5:
                inner = hashlib.md5((password + user).encode()).hexdigest()
                outer = hashlib.md5(inner.encode() + body[4:8]).hexdigest()
                self.send(message(b"p", b"md5" + outer.encode() + b"\0"))
            elif code == 10:
                mechanisms = [m.decode() for m in body[4:].split(b"\0") if m]
                scram = scramp.ScramClient(mechanisms, user, password)
                first = scram.get_client_first().encode()
                self.send(message(b"p", scram.mechanism_name.encode() + b"\0" + struct.pack("!i", len(first)) + first))
            elif code == 11:
                scram.set_server_first(body[4:].decode())
                self.send(message(b"p", scram.get_client_final().encode()))
            elif code == 12:
                scram.set_server_final(body[4:].decode())
            else:
                raise AssertionError(f"unsupported authentication request {code}")

    def outcome(self) -> str:
        """'closed', or the SQLSTATE of the ErrorResponse the proxy answered with (it must close after it)."""
        try:
            while True:
                msg = self.recv()
                if msg is None:
                    return "closed"
                kind, body = msg
                if kind == b"N":
                    continue
                if kind != b"E":
                    return f"unexpected {kind!r} message"
                code = error_fields(body).get("C", "?")
                after = self.recv()
                if after is not None:
                    return f"{code}, then the connection stayed open ({after[0]!r} followed)"
                return code
        except socket.timeout:
            return f"no answer and no close within {ANSWER_TIMEOUT_S:.0f}s"


def error_fields(body: bytes) -> dict[str, str]:
    fields = {}
    for part in body.split(b"\0"):
        if part:
            fields[chr(part[0])] = part[1:].decode(errors="replace")
    return fields


def cluster_with(pg_cluster, primary=None, replicas=None):
    """A copy of the session cluster description with some servers swapped (nothing is started)."""
    return type(pg_cluster)(primary=primary or pg_cluster.primary,
                            replicas=list(pg_cluster.replicas if replicas is None else replicas),
                            source="env")


# =========================================================================== authentication


async def test_wrong_password_asyncpg(eventual_proxy, pg_cluster):
    user = pg_cluster.primary.user
    with pytest.raises(asyncpg.InvalidPasswordError) as excinfo:
        await asyncpg.connect(eventual_proxy.dsn(password="not-the-password"), timeout=10)
    assert excinfo.value.sqlstate == "28P01"
    assert f'password authentication failed for user "{user}"' in str(excinfo.value)


async def test_unknown_user_gets_the_same_answer(eventual_proxy):
    with pytest.raises(asyncpg.InvalidPasswordError) as excinfo:
        await asyncpg.connect(eventual_proxy.dsn(user="e2e_nobody", password="whatever"), timeout=10)
    assert excinfo.value.sqlstate == "28P01"
    assert 'password authentication failed for user "e2e_nobody"' in str(excinfo.value)


def test_wrong_password_psycopg_and_psql(eventual_proxy, pg_cluster, direct):
    user = pg_cluster.primary.user
    expected = f'password authentication failed for user "{user}"'
    bad_dsn = eventual_proxy.dsn(password="not-the-password")
    with pytest.raises(psycopg.OperationalError) as excinfo:
        psycopg.connect(bad_dsn, connect_timeout=10)
    assert expected in str(excinfo.value)
    proc = psql(bad_dsn, "SELECT 1")
    assert proc.returncode == 2 and expected in proc.stderr, proc.stderr
    assert_still_serving(eventual_proxy, direct)


# =========================================================================== garbage on the wire


GARBAGE_BEFORE_STARTUP = {
    "random_bytes": random.Random(20241204).randbytes(512),
    "http_request": b"GET / HTTP/1.1\r\nHost: clidash\r\n\r\n",
    "startup_length_too_small": struct.pack("!I", 7) + b"\x00\x03\x00",
    "startup_length_huge": struct.pack("!II", 0x7FFFFFFF, PROTOCOL_3_0) + b"user\0clidash\0\0",
    "startup_params_unterminated": struct.pack("!II", 4 + 4 + 12, PROTOCOL_3_0) + b"user\0clidash",
}


@pytest.mark.parametrize("case", list(GARBAGE_BEFORE_STARTUP))
def test_garbage_instead_of_startup(case, eventual_proxy, direct):
    bystander = psycopg.connect(eventual_proxy.dsn(), autocommit=True, connect_timeout=10)
    client = RawClient(eventual_proxy.host, eventual_proxy.port)
    try:
        client.send(GARBAGE_BEFORE_STARTUP[case])
        outcome = client.outcome()
    finally:
        client.close()
    assert outcome in ("closed", "08P01"), f"{case}: {outcome}"
    with bystander:  # a client connected before the garbage is unaffected
        assert direct.where(*bystander.execute(WHERE_SQL).fetchone()) == "replica"
    assert_still_serving(eventual_proxy, direct)


def test_truncated_startup_then_half_close(eventual_proxy, direct):
    client = RawClient(eventual_proxy.host, eventual_proxy.port)
    try:
        client.send(struct.pack("!II", 100, PROTOCOL_3_0) + b"user\0")
        client.sock.shutdown(socket.SHUT_WR)
        outcome = client.outcome()
    finally:
        client.close()
    assert outcome in ("closed", "08P01"), outcome
    assert_still_serving(eventual_proxy, direct)


GARBAGE_AFTER_STARTUP = {
    "oversized_length": b"Q" + struct.pack("!I", 0x7FFFFFF0) + b"SELECT 1\0",
    "length_below_four": b"Q" + struct.pack("!I", 2) + b"SELECT 1\0",
    "unknown_message_type": message(b"\x7f", b"garbage"),
    "second_startup_packet": startup_packet(user="clidash", database="clidash"),
}


@pytest.mark.parametrize("case", list(GARBAGE_AFTER_STARTUP))
def test_garbage_after_startup(case, eventual_proxy, direct, pg_cluster):
    primary = pg_cluster.primary
    client = RawClient(eventual_proxy.host, eventual_proxy.port)
    try:
        client.login(primary.user, primary.password, primary.dbname)
        # the raw session works before the garbage
        client.send(message(b"Q", b"SELECT 1\0"))
        kinds = []
        while not kinds or kinds[-1] != b"Z":
            msg = client.recv()
            assert msg is not None, "proxy closed the connection after a valid query"
            kinds.append(msg[0])
        assert b"D" in kinds and b"E" not in kinds, kinds
        client.send(GARBAGE_AFTER_STARTUP[case])
        outcome = client.outcome()
    finally:
        client.close()
    assert outcome in ("closed", "08P01"), f"{case}: {outcome}"
    assert_still_serving(eventual_proxy, direct)


# =========================================================================== servers down


async def test_primary_down_error_names_primary(pg_cluster, start_proxy, direct):
    cluster = cluster_with(pg_cluster, primary=dataclasses.replace(pg_cluster.primary, port=closed_port()))
    proxy = start_proxy(mode="STRONG", cluster=cluster)
    started = time.monotonic()
    with pytest.raises(Exception) as excinfo:
        conn = await asyncpg.connect(proxy.dsn(), timeout=10)
        try:
            await conn.fetchval("SELECT 1", timeout=10)
        finally:
            conn.terminate()
    error = excinfo.value
    assert isinstance(error, asyncpg.PostgresError), f"expected an ErrorResponse, got {error!r}"
    assert "primary" in str(error).lower(), f"error does not name the primary: {error.sqlstate} {error}"
    assert time.monotonic() - started < 10

    if shutil.which("psql"):
        proc = psql(proxy.dsn(), "SELECT 1")
        assert proc.returncode != 0 and "primary" in proc.stderr.lower(), proc.stderr
    assert proxy.process.poll() is None, "proxy exited after its primary was unreachable"


async def test_replica_down_reads_served_by_primary(pg_cluster, start_proxy, direct):
    dead_replica = dataclasses.replace(pg_cluster.replicas[0], port=closed_port())
    proxy = start_proxy(mode="EVENTUAL", cluster=cluster_with(pg_cluster, replicas=[dead_replica]))
    started = time.monotonic()
    conn = await asyncpg.connect(proxy.dsn(), timeout=10, command_timeout=10)
    try:
        for _ in range(10):
            assert direct.where(*await conn.fetchrow(WHERE_SQL)) == "primary"
        rows = await conn.fetch("SELECT oid::int, datname FROM pg_database ORDER BY oid")
        assert [tuple(r) for r in rows] == direct.primary_all("SELECT oid::int, datname FROM pg_database ORDER BY oid")
    finally:
        await conn.close(timeout=2)
    assert time.monotonic() - started < 10
    if shutil.which("psql"):
        proc = psql(proxy.dsn(), WHERE_SQL)
        assert proc.returncode == 0, proc.stderr
        assert direct.where(*proc.stdout.strip().split("|")) == "primary"


# =========================================================================== cancel


def _sleepers(direct, token: str) -> list[tuple]:
    sql = "SELECT pid, state FROM pg_stat_activity WHERE query LIKE %s AND state = 'active' AND pid <> pg_backend_pid()"
    pattern = f"%pg_sleep%{token}%"
    return direct.primary_all(sql, (pattern,)) + direct.replica_all(sql, (pattern,))


@pytest.mark.parametrize("in_transaction", [False, True], ids=["replica_read", "primary_transaction"])
async def test_cancel_asyncpg(in_transaction, eventual_proxy, direct):
    token = secrets.token_hex(4)
    conn = await asyncpg.connect(eventual_proxy.dsn(), timeout=10)
    try:
        tx = conn.transaction() if in_transaction else None
        if tx:
            await tx.start()
        started = time.monotonic()
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(conn.fetchval(f"SELECT pg_sleep(10), '{token}'"), 0.5)
        # asyncpg sent a CancelRequest; the next statement waits until the cancelled one has ended.
        if tx:
            await tx.rollback()
        assert await asyncio.wait_for(conn.fetchval("SELECT 42"), 5) == 42
        assert time.monotonic() - started < 3, "the cancel did not stop pg_sleep(10) promptly"
        assert _sleepers(direct, token) == []
    finally:
        conn.terminate()


@pytest.mark.parametrize("method", ["cancel", "cancel_safe"])
@pytest.mark.parametrize("mode", ["EVENTUAL", "STRONG"])
def test_cancel_psycopg(mode, method, eventual_proxy, strong_proxy, direct):
    proxy = eventual_proxy if mode == "EVENTUAL" else strong_proxy
    token = secrets.token_hex(4)
    with psycopg.connect(proxy.dsn(), autocommit=True, connect_timeout=10) as conn:
        timer = threading.Timer(0.5, getattr(conn, method))
        started = time.monotonic()
        timer.start()
        try:
            with pytest.raises(psycopg.errors.QueryCanceled) as excinfo:
                conn.execute(f"SELECT pg_sleep(10), '{token}'")
        finally:
            timer.join()
        assert time.monotonic() - started < 3
        assert excinfo.value.sqlstate == "57014"
        assert conn.execute("SELECT 7").fetchone() == (7,)  # the connection stays usable
        where = direct.where(*conn.execute(WHERE_SQL).fetchone())
        assert where == ("replica" if mode == "EVENTUAL" else "primary")
    assert _sleepers(direct, token) == []
