"""clidash.proxy.pg.auth against real peers.

* ServerLogin logs into a throwaway PostgreSQL cluster (started here from the
  locally installed binaries) with trust, password, md5 and scram-sha-256.
* ClientAuthenticator, fed the verifiers PostgreSQL itself stored, sits behind a
  tiny blocking socket server and is logged into by libpq (psycopg) and asyncpg.
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import struct
import subprocess
import tempfile
import threading

import pytest

from clidash.proxy.pg.auth import AuthFailed, ClientAuthenticator, Credentials, ServerLogin

pytestmark = pytest.mark.integration

PASSWORD = "live-pw-ü"
USERS = {"trust_u": "trust", "clear_u": "password", "md5_u": "md5", "scram_u": "scram-sha-256"}


def _bin_dir() -> str | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    return os.path.dirname(found[-1]) if found else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def cluster():
    bindir = _bin_dir()
    if bindir is None:
        pytest.skip("no local PostgreSQL binaries")
    as_pg = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    if as_pg and shutil.which("runuser") is None:
        pytest.skip("running as root without runuser")
    tmp = tempfile.mkdtemp(prefix="clidash-auth-")
    if as_pg:
        shutil.chown(tmp, "postgres")
    data, port = os.path.join(tmp, "data"), _free_port()
    run = lambda *cmd: subprocess.run([*as_pg, *cmd], check=True, capture_output=True, text=True)  # noqa: E731
    try:
        run(f"{bindir}/initdb", "-D", data, "-U", "postgres", "--auth-local=trust", "--auth-host=reject")
        with open(os.path.join(data, "pg_hba.conf"), "w") as f:
            f.write("local all all trust\n")
            for user, method in USERS.items():
                f.write(f"host all {user} 127.0.0.1/32 {method}\n")
        run(f"{bindir}/pg_ctl", "-D", data, "-w", "-l", os.path.join(tmp, "log"), "-o",
            f"-p {port} -k {tmp} -c listen_addresses=127.0.0.1", "start")
        sql = ("SET password_encryption = 'md5';"
               f"CREATE ROLE md5_u LOGIN PASSWORD '{PASSWORD}';"
               "SET password_encryption = 'scram-sha-256';"
               f"CREATE ROLE scram_u LOGIN PASSWORD '{PASSWORD}';"
               f"CREATE ROLE clear_u LOGIN PASSWORD '{PASSWORD}';"
               "CREATE ROLE trust_u LOGIN;")
        run(f"{bindir}/psql", "-h", tmp, "-p", str(port), "-U", "postgres", "-d", "postgres",
            "-v", "ON_ERROR_STOP=1", "-c", sql)
        out = run(f"{bindir}/psql", "-h", tmp, "-p", str(port), "-U", "postgres", "-d", "postgres", "-At",
                  "-c", "SELECT rolname || ' ' || rolpassword FROM pg_authid WHERE rolpassword IS NOT NULL")
        secrets = dict(line.split(" ", 1) for line in out.stdout.splitlines())
        yield port, secrets
    finally:
        subprocess.run([*as_pg, f"{bindir}/pg_ctl", "-D", data, "-m", "immediate", "stop"], capture_output=True)
        shutil.rmtree(tmp, ignore_errors=True)


# ------------------------------------------------------------------ wire helpers


def recv_exact(sock: socket.socket, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise ConnectionError("peer closed")
        buf += chunk
    return buf


def recv_message(sock: socket.socket) -> tuple[int, bytes]:
    head = recv_exact(sock, 5)
    (length,) = struct.unpack("!i", head[1:])
    return head[0], recv_exact(sock, length - 4)


def error_fields(body: bytes) -> dict[str, str]:
    return {f[:1].decode(): f[1:].decode() for f in body.split(b"\0") if f}


def login(port: int, user: str, password: str | None) -> tuple[ServerLogin, dict[str, str] | None]:
    """Drive ServerLogin over a plain socket until ReadyForQuery or ErrorResponse."""
    params = f"user\0{user}\0database\0postgres\0\0".encode()
    state = ServerLogin(user, password)
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(struct.pack("!ii", 8 + len(params), 196608) + params)
        while True:
            mtype, body = recv_message(sock)
            if mtype == ord("R"):
                out = state.receive(body)
                if out:
                    sock.sendall(out)
            elif mtype == ord("E"):
                return state, error_fields(body)
            elif mtype == ord("Z"):
                sock.sendall(b"X\0\0\0\4")
                return state, None


# ------------------------------------------------------------------ ServerLogin vs PostgreSQL


@pytest.mark.parametrize("user", list(USERS))
def test_server_login_against_postgres(cluster, user):
    port, _ = cluster
    state, error = login(port, user, PASSWORD if user != "trust_u" else None)
    assert error is None and state.ok and state.method == USERS[user]


@pytest.mark.parametrize("user", ["clear_u", "md5_u", "scram_u"])
def test_server_login_wrong_password_gets_28P01(cluster, user):
    port, _ = cluster
    state, error = login(port, user, "wrong")
    assert not state.ok and error is not None and error["C"] == "28P01"


# ------------------------------------------------------------------ ClientAuthenticator vs libpq / asyncpg


def serve_one(listener: socket.socket, method: str, credentials: dict[str, Credentials], result: dict) -> None:
    conn, _ = listener.accept()
    with conn:
        while True:  # SSLRequest / GSSENCRequest -> 'N', then the StartupMessage
            (length,) = struct.unpack("!i", recv_exact(conn, 4))
            payload = recv_exact(conn, length - 4)
            (code,) = struct.unpack_from("!i", payload)
            if code in (80877103, 80877104):
                conn.sendall(b"N")
                continue
            break
        fields = payload[4:].split(b"\0")
        params = dict(zip(fields[0::2], fields[1::2]))
        user = params[b"user"].decode()
        auth = ClientAuthenticator(method, user, credentials.get(user))
        try:
            conn.sendall(auth.start())
            while not auth.done:
                mtype, body = recv_message(conn)
                conn.sendall(auth.receive(mtype, body))
        except AuthFailed as e:
            body = f"SFATAL\0VFATAL\0C{e.sqlstate}\0M{e.message}\0\0".encode()
            conn.sendall(b"E" + struct.pack("!i", len(body) + 4) + body)
            result["error"] = e
            return
        except ConnectionError:
            result["closed"] = True
            return
        status = b""
        for k, v in [(b"server_version", b"15.0"), (b"client_encoding", b"UTF8"), (b"server_encoding", b"UTF8"),
                     (b"DateStyle", b"ISO, MDY"), (b"integer_datetimes", b"on"),
                     (b"standard_conforming_strings", b"on"), (b"TimeZone", b"UTC")]:
            status += b"S" + struct.pack("!i", len(k) + len(v) + 6) + k + b"\0" + v + b"\0"
        conn.sendall(status + b"K\0\0\0\x0c\0\0\0\1\0\0\0\2" + b"Z\0\0\0\5I")
        result["ok"] = True
        try:
            recv_message(conn)  # Terminate
        except (ConnectionError, OSError):
            pass


def run_client(method: str, credentials: dict[str, Credentials], connect) -> dict:
    result: dict = {}
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        thread = threading.Thread(target=serve_one, args=(listener, method, credentials, result), daemon=True)
        thread.start()
        try:
            connect(listener.getsockname()[1])
        except Exception as e:  # the client's own error
            result["client_error"] = e
        thread.join(10)
    return result


def psycopg_connect(user: str, password: str):
    psycopg = pytest.importorskip("psycopg")

    def connect(port: int) -> None:
        psycopg.connect(host="127.0.0.1", port=port, user=user, password=password, dbname="postgres",
                        sslmode="disable", gssencmode="disable", connect_timeout=5).close()
    return connect


def asyncpg_connect(user: str, password: str):
    asyncpg = pytest.importorskip("asyncpg")
    import asyncio

    async def go(port: int) -> None:
        conn = await asyncpg.connect(host="127.0.0.1", port=port, user=user, password=password,
                                     database="postgres", ssl=False, timeout=5)
        await conn.close(timeout=5)
    return lambda port: asyncio.run(go(port))


def stored_credentials(secrets: dict[str, str]) -> dict[str, Credentials]:
    return {
        "scram_u": Credentials("scram_u", scram_verifier=secrets["scram_u"]),
        "md5_u": Credentials("md5_u", md5_hash=secrets["md5_u"]),
        "clear_u": Credentials("clear_u", scram_verifier=secrets["clear_u"]),
    }


@pytest.mark.parametrize("client", [psycopg_connect, asyncpg_connect])
@pytest.mark.parametrize("method, user", [("scram-sha-256", "scram_u"), ("md5", "md5_u"),
                                          ("password", "clear_u"), ("md5", "scram_u")])
def test_real_clients_against_client_authenticator(cluster, client, method, user):
    _, secrets = cluster
    result = run_client(method, stored_credentials(secrets), client(user, PASSWORD))
    assert result.get("ok"), result


@pytest.mark.parametrize("client", [psycopg_connect, asyncpg_connect])
@pytest.mark.parametrize("method, user, password", [("scram-sha-256", "scram_u", "wrong"),
                                                    ("scram-sha-256", "nobody", PASSWORD),
                                                    ("md5", "md5_u", "wrong")])
def test_real_clients_rejected(cluster, client, method, user, password):
    _, secrets = cluster
    result = run_client(method, stored_credentials(secrets), client(user, password))
    assert result["error"].sqlstate == "28P01"
    assert "password authentication failed" in str(result["client_error"])
