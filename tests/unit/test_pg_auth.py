"""Unit tests for clidash.proxy.pg.auth (both sides of PostgreSQL authentication)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import random
import struct

import pytest
from scramp import ScramClient, ScramMechanism

from clidash.proxy.pg.auth import (
    AuthFailed,
    BackendAuthError,
    ClientAuthenticator,
    Credentials,
    ScramSecret,
    ServerLogin,
    authentication_cleartext_password,
    authentication_md5_password,
    authentication_ok,
    authentication_sasl,
    authentication_sasl_continue,
    authentication_sasl_final,
    md5_password_hash,
    md5_salted_response,
    password_message,
    sasl_initial_response,
    sasl_response,
)

P = ord("p")
USER, PASSWORD = "alice", "s3cret-pässword"
SALT = bytes(range(16))
CREDS = Credentials.from_password(USER, PASSWORD, salt=SALT)
FAILED = f'password authentication failed for user "{USER}"'


def counter_source():
    """Deterministic stand-in for os.urandom."""
    state = {"n": 0}

    def source(n: int) -> bytes:
        state["n"] += 1
        return bytes((state["n"] * 7 + i) % 256 for i in range(n))

    return source


def split_messages(data: bytes) -> list[tuple[int, bytes]]:
    out, pos = [], 0
    while pos < len(data):
        mtype = data[pos]
        (length,) = struct.unpack_from("!i", data, pos + 1)
        out.append((mtype, data[pos + 5 : pos + 1 + length]))
        pos += 1 + length
    assert pos == len(data)
    return out


def auth_code(body: bytes) -> int:
    return struct.unpack_from("!i", body)[0]


def exchange(server: ClientAuthenticator, client: ServerLogin) -> list[tuple[int, bytes]]:
    """Run both sides against each other in memory; returns the server's messages."""
    transcript = []
    to_client = server.start()
    while True:
        reply = None
        for mtype, body in split_messages(to_client):
            assert mtype == ord("R")
            transcript.append((mtype, body))
            out = client.receive(body)
            if out is not None:
                assert reply is None
                reply = out
        if reply is None:
            break
        (mtype, body), = split_messages(reply)
        to_client = server.receive(mtype, body)
    return transcript


def sasl_body(mechanism: bytes, data: bytes | None) -> bytes:
    return split_messages(sasl_initial_response(mechanism.decode(), data))[0][1]


# --------------------------------------------------------------------------- encodings


@pytest.mark.parametrize(
    "encoded, expected",
    [
        (authentication_ok(), b"R\x00\x00\x00\x08\x00\x00\x00\x00"),
        (authentication_cleartext_password(), b"R\x00\x00\x00\x08\x00\x00\x00\x03"),
        (authentication_md5_password(b"\x01\x02\x03\x04"), b"R\x00\x00\x00\x0c\x00\x00\x00\x05\x01\x02\x03\x04"),
        (authentication_sasl(), b"R\x00\x00\x00\x17\x00\x00\x00\x0aSCRAM-SHA-256\x00\x00"),
        (authentication_sasl_continue(b"r=ab,s=cd,i=4096"),
         b"R\x00\x00\x00\x18\x00\x00\x00\x0br=ab,s=cd,i=4096"),
        (authentication_sasl_continue(b""), b"R\x00\x00\x00\x08\x00\x00\x00\x0b"),
        (authentication_sasl_final(b"v=xyz="), b"R\x00\x00\x00\x0e\x00\x00\x00\x0cv=xyz="),
        (password_message("secret"), b"p\x00\x00\x00\x0bsecret\x00"),
        (password_message("md5" + "0" * 32), b"p\x00\x00\x00\x28md5" + b"0" * 32 + b"\x00"),
        (sasl_initial_response("SCRAM-SHA-256", b"n,,n=,r=abc"),
         b"p\x00\x00\x00\x21SCRAM-SHA-256\x00\x00\x00\x00\x0bn,,n=,r=abc"),
        (sasl_initial_response("SCRAM-SHA-256", None), b"p\x00\x00\x00\x16SCRAM-SHA-256\x00\xff\xff\xff\xff"),
        (sasl_response(b"c=biws,r=x,p=y"), b"p\x00\x00\x00\x12c=biws,r=x,p=y"),
    ],
)
def test_encodings_are_byte_exact(encoded, expected):
    assert encoded == expected


def test_encoder_argument_checks():
    with pytest.raises(ValueError):
        authentication_md5_password(b"abc")
    with pytest.raises(ValueError):
        password_message("a\0b")


# --------------------------------------------------------------------------- hashes


def test_md5_against_hand_computed_vector():
    user, password, salt = "postgres", "secret", b"\x93\x11\xa0\x7f"
    inner = hashlib.md5(b"secret" + b"postgres").hexdigest()
    assert md5_password_hash(user, password) == "md5" + inner
    outer = "md5" + hashlib.md5(inner.encode() + salt).hexdigest()
    assert md5_salted_response(md5_password_hash(user, password), salt) == outer


def test_scram_verifier_matches_scramp_and_round_trips():
    salt, stored, server, iterations = ScramMechanism().make_auth_info(PASSWORD, salt=SALT, iteration_count=4096)
    secret = ScramSecret.parse(CREDS.scram_verifier)
    assert (secret.salt, secret.stored_key, secret.server_key, secret.iterations) == (salt, stored, server, 4096)
    b = lambda x: base64.b64encode(x).decode()  # noqa: E731
    assert CREDS.scram_verifier == f"SCRAM-SHA-256$4096:{b(SALT)}${b(stored)}:{b(server)}"
    assert CREDS.md5_hash == "md5" + hashlib.md5((PASSWORD + USER).encode()).hexdigest()


@pytest.mark.parametrize(
    "kwargs",
    [
        {"scram_verifier": "SCRAM-SHA-256$4096:abc"},
        {"scram_verifier": "SCRAM-SHA-1$4096:AAAA$" + "A" * 44 + ":" + "A" * 44},
        {"scram_verifier": "SCRAM-SHA-256$x:AAAA$" + "A" * 44 + ":" + "A" * 44},
        {"scram_verifier": "SCRAM-SHA-256$4096:AAAA$AAAA:AAAA"},
        {"md5_hash": "md5abc"},
        {"md5_hash": "xyz" + "0" * 32},
    ],
)
def test_credentials_reject_bad_secrets(kwargs):
    with pytest.raises(ValueError):
        Credentials("u", **kwargs)


# --------------------------------------------------------------------------- SCRAM both sides


def test_scram_exchange_succeeds():
    server = ClientAuthenticator("scram-sha-256", USER, CREDS, salt_source=counter_source())
    client = ServerLogin(USER, PASSWORD)
    transcript = exchange(server, client)
    assert [auth_code(b) for _, b in transcript] == [10, 11, 12, 0]
    assert server.done and client.ok and client.method == "scram-sha-256"
    server_first = transcript[1][1][4:].decode()
    assert f",s={base64.b64encode(SALT).decode()},i=4096" in server_first


def test_scram_with_plaintext_only_credentials_uses_salt_source():
    creds = Credentials(USER, password=PASSWORD)
    server = ClientAuthenticator("scram-sha-256", USER, creds, salt_source=counter_source())
    client = ServerLogin(USER, PASSWORD)
    exchange(server, client)
    assert server.done and client.ok


def test_scram_wrong_password_fails_28P01():
    server = ClientAuthenticator("scram-sha-256", USER, CREDS)
    with pytest.raises(AuthFailed) as ei:
        exchange(server, ServerLogin(USER, "wrong"))
    assert (ei.value.sqlstate, ei.value.message, ei.value.severity) == ("28P01", FAILED, "FATAL")
    assert not server.done


def test_scram_unknown_user_runs_mock_exchange_and_fails_identically():
    secret = b"k" * 32
    server = ClientAuthenticator("scram-sha-256", USER, None, mock_secret=secret)
    client = ServerLogin(USER, PASSWORD)
    start = server.start()
    assert start == authentication_sasl()
    first = client.receive(split_messages(start)[0][1])
    server_first = server.receive(*split_messages(first)[0])
    (_, body), = split_messages(server_first)
    assert auth_code(body) == 11
    r, s, i = body[4:].decode().split(",")
    assert i == "i=4096" and len(base64.b64decode(s[2:])) == 16
    final = client.receive(body)
    with pytest.raises(AuthFailed) as ei:
        server.receive(*split_messages(final)[0])
    assert (ei.value.sqlstate, ei.value.message) == ("28P01", FAILED)
    # Like PostgreSQL's mock salt: stable per user, different between users.
    again = ClientAuthenticator("scram-sha-256", USER, None, mock_secret=secret)
    other = ClientAuthenticator("scram-sha-256", "bob", None, mock_secret=secret)
    salts = []
    for auth in (again, other):
        auth.start()
        out = auth.receive(P, sasl_body(b"SCRAM-SHA-256", b"n,,n=,r=abcdef"))
        salts.append(split_messages(out)[0][1][4:].decode().split(",")[1])
    assert salts[0] == s and salts[1] != s


def test_scram_user_without_password_fails_like_unknown_user():
    server = ClientAuthenticator("scram-sha-256", USER, Credentials(USER))
    with pytest.raises(AuthFailed) as ei:
        exchange(server, ServerLogin(USER, PASSWORD))
    assert (ei.value.sqlstate, ei.value.message) == ("28P01", FAILED)
    assert "no password" in ei.value.log_detail


def test_scram_with_only_md5_hash_fails_clearly():
    creds = Credentials(USER, md5_hash=CREDS.md5_hash)
    server = ClientAuthenticator("scram-sha-256", USER, creds)
    with pytest.raises(AuthFailed) as ei:
        server.start()
    assert ei.value.sqlstate == "28P01" and ei.value.message == FAILED
    assert "only an MD5 hash" in ei.value.log_detail and "only an MD5 hash" in str(ei.value)


def test_scramp_client_against_server_side():
    server = ClientAuthenticator("scram-sha-256", USER, CREDS)
    client = ScramClient(["SCRAM-SHA-256"], USER, PASSWORD)
    assert server.start() == authentication_sasl()
    out = server.receive(P, sasl_body(b"SCRAM-SHA-256", client.get_client_first().encode()))
    (_, body), = split_messages(out)
    client.set_server_first(body[4:].decode())
    out = server.receive(P, split_messages(sasl_response(client.get_client_final().encode()))[0][1])
    (_, final), (_, ok) = split_messages(out)
    assert auth_code(final) == 12 and ok == authentication_ok()[5:]
    client.set_server_final(final[4:].decode())  # raises if our server signature were wrong
    assert server.done


def test_scramp_client_wrong_password_fails():
    server = ClientAuthenticator("scram-sha-256", USER, CREDS)
    client = ScramClient(["SCRAM-SHA-256"], USER, "nope")
    server.start()
    out = server.receive(P, sasl_body(b"SCRAM-SHA-256", client.get_client_first().encode()))
    client.set_server_first(split_messages(out)[0][1][4:].decode())
    with pytest.raises(AuthFailed) as ei:
        server.receive(P, client.get_client_final().encode())
    assert ei.value.sqlstate == "28P01"


def test_sasl_initial_response_without_data_gets_empty_challenge():
    server = ClientAuthenticator("scram-sha-256", USER, CREDS)
    server.start()
    assert server.receive(P, sasl_body(b"SCRAM-SHA-256", None)) == authentication_sasl_continue(b"")
    out = server.receive(P, b"n,,n=,r=clientnonce")
    assert split_messages(out)[0][1][4:].startswith(b"r=clientnonce")


def test_md5_method_with_only_scram_verifier_switches_to_scram():
    creds = Credentials(USER, scram_verifier=CREDS.scram_verifier)
    server = ClientAuthenticator("md5", USER, creds)
    client = ServerLogin(USER, PASSWORD)
    transcript = exchange(server, client)
    assert auth_code(transcript[0][1]) == 10 and server.done and client.ok


# --------------------------------------------------------------------------- md5 / cleartext / trust


@pytest.mark.parametrize("creds", [CREDS, Credentials(USER, password=PASSWORD),
                                   Credentials(USER, md5_hash=CREDS.md5_hash)])
def test_md5_both_ways(creds):
    server = ClientAuthenticator("md5", USER, creds, salt_source=lambda n: b"\x01\x02\x03\x04"[:n])
    client = ServerLogin(USER, PASSWORD)
    transcript = exchange(server, client)
    assert transcript[0][1] == b"\x00\x00\x00\x05\x01\x02\x03\x04"
    assert server.done and client.ok and client.method == "md5"


def test_md5_client_sends_hand_computed_response():
    client = ServerLogin("postgres", "secret")
    out = client.receive(struct.pack("!i", 5) + b"abcd")
    inner = hashlib.md5(b"secretpostgres").hexdigest()
    assert out == password_message("md5" + hashlib.md5(inner.encode() + b"abcd").hexdigest())


@pytest.mark.parametrize("method", ["md5", "password"])
@pytest.mark.parametrize("user_known", [True, False])
def test_wrong_password_or_unknown_user_fails_28P01(method, user_known):
    server = ClientAuthenticator(method, USER, CREDS if user_known else None)
    with pytest.raises(AuthFailed) as ei:
        exchange(server, ServerLogin(USER, "wrong" if user_known else PASSWORD))
    assert (ei.value.sqlstate, ei.value.message) == ("28P01", FAILED)


@pytest.mark.parametrize("creds", [CREDS, Credentials(USER, password=PASSWORD),
                                   Credentials(USER, scram_verifier=CREDS.scram_verifier),
                                   Credentials(USER, md5_hash=CREDS.md5_hash)])
def test_cleartext_both_ways(creds):
    server = ClientAuthenticator("password", USER, creds)
    client = ServerLogin(USER, PASSWORD)
    transcript = exchange(server, client)
    assert [auth_code(b) for _, b in transcript] == [3, 0]
    assert server.done and client.ok and client.method == "password"


def test_cleartext_client_sends_password():
    assert ServerLogin(USER, PASSWORD).receive(struct.pack("!i", 3)) == password_message(PASSWORD)


def test_empty_cleartext_password_is_rejected():
    server = ClientAuthenticator("password", USER, Credentials(USER, password=PASSWORD))
    server.start()
    with pytest.raises(AuthFailed) as ei:
        server.receive(P, b"\0")
    assert ei.value.sqlstate == "28P01"


def test_trust():
    server = ClientAuthenticator("trust", USER, None)
    assert server.start() == authentication_ok() and server.done
    client = ServerLogin(USER, None)
    assert client.receive(struct.pack("!i", 0)) is None and client.ok and client.method == "trust"


def test_constructor_and_state_misuse():
    with pytest.raises(ValueError):
        ClientAuthenticator("gss", USER, None)
    with pytest.raises(ValueError):
        ClientAuthenticator("md5", "bob", CREDS)
    server = ClientAuthenticator("md5", USER, CREDS)
    with pytest.raises(RuntimeError):
        server.receive(P, b"x\0")


# --------------------------------------------------------------------------- malformed input, server side


def scram_server_at_final():
    server = ClientAuthenticator("scram-sha-256", USER, CREDS)
    server.start()
    out = server.receive(P, sasl_body(b"SCRAM-SHA-256", b"n,,n=,r=abcdef"))
    nonce = split_messages(out)[0][1][4:].decode().split(",")[0][2:]
    return server, nonce


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"SCRAM-SHA-256",                              # no NUL
        b"SCRAM-SHA-256\0",                            # no length
        b"SCRAM-SHA-256\0\0\0",                        # truncated length
        b"SCRAM-SHA-256\0\0\0\0\x10n,,n=,r=x",          # length too long
        b"SCRAM-SHA-256\0\0\0\0\x02n,,n=,r=x",          # length too short
        b"SCRAM-SHA-256\0\xff\xff\xff\xfeabc",          # negative length
        b"SCRAM-SHA-256\0\xff\xff\xff\xffabc",          # -1 with data
        sasl_body(b"SCRAM-SHA-256-PLUS", b"p=tls-server-end-point,,n=,r=abc"),
        sasl_body(b"SCRAM-SHA-1", b"n,,n=,r=abc"),
        sasl_body(b"SCRAM-SHA-256", b"\xff\xfe"),
        sasl_body(b"SCRAM-SHA-256", b"n,,n="),
        sasl_body(b"SCRAM-SHA-256", b"p=tls-server-end-point,,n=,r=abc"),
        sasl_body(b"SCRAM-SHA-256", b"x,,n=,r=abc"),
        sasl_body(b"SCRAM-SHA-256", b"n,z,n=,r=abc"),
        sasl_body(b"SCRAM-SHA-256", b"n,,r=abc,n="),
        sasl_body(b"SCRAM-SHA-256", b"n,,n=,r="),
        sasl_body(b"SCRAM-SHA-256", b"n,,n=,r=a\x7fb"),
        sasl_body(b"SCRAM-SHA-256", b"n,,n=,r=abc,junk"),
    ],
)
def test_malformed_sasl_initial_response_is_08P01(body):
    server = ClientAuthenticator("scram-sha-256", USER, CREDS)
    server.start()
    with pytest.raises(AuthFailed) as ei:
        server.receive(P, body)
    assert ei.value.sqlstate == "08P01"


@pytest.mark.parametrize("data", [b"n,a=bob,n=,r=abc", b"n,,m=ext,n=,r=abc"])
def test_unsupported_scram_features_are_0A000(data):
    server = ClientAuthenticator("scram-sha-256", USER, CREDS)
    server.start()
    with pytest.raises(AuthFailed) as ei:
        server.receive(P, sasl_body(b"SCRAM-SHA-256", data))
    assert ei.value.sqlstate == "0A000"


def test_plus_mechanism_is_08P01_with_postgres_message():
    server = ClientAuthenticator("scram-sha-256", USER, CREDS)
    server.start()
    with pytest.raises(AuthFailed) as ei:
        server.receive(P, sasl_body(b"SCRAM-SHA-256-PLUS", b"p=tls-server-end-point,,n=,r=abc"))
    assert ei.value.message == "client selected an invalid SASL authentication mechanism"


PROOF = base64.b64encode(bytes(32)).decode()


@pytest.mark.parametrize(
    "template",
    [
        "",
        "c=biws,r={n}",                         # no proof
        "c=biws,r={n},p=",                      # empty proof
        "c=biws,r={n},p=!!!!",                  # not base64
        "c=biws,r={n},p=AAAA",                  # short proof
        "c=biws,p=" + PROOF,                    # no nonce
        "r={n},c=biws,p=" + PROOF,              # wrong order
        "c=eSws,r={n},p=" + PROOF,              # binding header y,, but client sent n,,
        "c=!!,r={n},p=" + PROOF,                # bad base64 binding
        "c=biws,r={n},x,p=" + PROOF,            # bad extension
        "c=biws,r={n},p=" + PROOF + "\udcff",   # non-UTF-8 (encoded below)
    ],
)
def test_malformed_client_final_is_08P01(template):
    server, nonce = scram_server_at_final()
    data = template.format(n=nonce).encode("utf-8", "surrogateescape")
    with pytest.raises(AuthFailed) as ei:
        server.receive(P, data)
    assert ei.value.sqlstate == "08P01"


def test_wrong_nonce_in_client_final_is_auth_failure():
    server, nonce = scram_server_at_final()
    with pytest.raises(AuthFailed) as ei:
        server.receive(P, f"c=biws,r={nonce}x,p={PROOF}".encode())
    assert ei.value.sqlstate == "28P01"


@pytest.mark.parametrize("method", ["md5", "password"])
@pytest.mark.parametrize("body", [b"", b"secret", b"sec\0ret\0", b"\0\0"])
def test_malformed_password_message_is_08P01(method, body):
    server = ClientAuthenticator(method, USER, CREDS)
    server.start()
    with pytest.raises(AuthFailed) as ei:
        server.receive(P, body)
    assert ei.value.sqlstate == "08P01"


@pytest.mark.parametrize("method", ["md5", "password", "scram-sha-256"])
@pytest.mark.parametrize("msg_type", [ord("Q"), ord("X"), 0])
def test_wrong_message_type_is_08P01(method, msg_type):
    server = ClientAuthenticator(method, USER, CREDS)
    server.start()
    with pytest.raises(AuthFailed) as ei:
        server.receive(msg_type, password_message("x")[5:])
    assert ei.value.sqlstate == "08P01"


@pytest.mark.parametrize("stage", ["password", "md5", "sasl_initial", "sasl_first", "sasl_final"])
def test_random_garbage_only_ever_raises_auth_failed(stage):
    rng = random.Random(stage)
    alphabet = b"nrcpmsvia=,\0\xff-SCRAM256biws"
    for _ in range(300):
        if stage == "sasl_final":
            server, _ = scram_server_at_final()
        else:
            server = ClientAuthenticator("md5" if stage == "md5" else
                                         "password" if stage == "password" else "scram-sha-256", USER, CREDS)
            server.start()
            if stage == "sasl_first":
                server.receive(P, sasl_body(b"SCRAM-SHA-256", None))
        body = bytes(rng.choice(alphabet) for _ in range(rng.randrange(0, 40)))
        if stage == "sasl_initial" and rng.random() < 0.5:
            body = b"SCRAM-SHA-256\0" + struct.pack("!i", rng.randrange(-2, 40)) + body
        try:
            server.receive(P, body)
        except AuthFailed as e:
            assert e.sqlstate in ("08P01", "28P01", "0A000")


# --------------------------------------------------------------------------- client side


class HandServer:
    """A SCRAM server computed by hand in the test, to check ServerLogin independently."""

    salt, iterations = b"0123456789abcdef", 4096

    def __init__(self, password: str):
        salted = hashlib.pbkdf2_hmac("sha256", password.encode(), self.salt, self.iterations)
        self.client_key = hmac.digest(salted, b"Client Key", "sha256")
        self.server_key = hmac.digest(salted, b"Server Key", "sha256")

    def first(self, initial: bytes) -> bytes:
        (_, body), = split_messages(initial)
        mech, rest = body.split(b"\0", 1)
        assert mech == b"SCRAM-SHA-256" and rest[4:].startswith(b"n,,n=,r=")
        self.bare = rest[4 + 3:].decode()
        self.nonce = self.bare.split("r=")[1] + "SERVERNONCE"
        self.server_first = f"r={self.nonce},s={base64.b64encode(self.salt).decode()},i={self.iterations}"
        return struct.pack("!i", 11) + self.server_first.encode()

    def final(self, response: bytes) -> bytes:
        (_, body), = split_messages(response)
        without_proof, proof = body.decode().split(",p=")
        assert without_proof == f"c=biws,r={self.nonce}"
        auth_message = f"{self.bare},{self.server_first},{without_proof}".encode()
        stored = hashlib.sha256(self.client_key).digest()
        signature = hmac.digest(stored, auth_message, "sha256")
        assert base64.b64decode(proof) == bytes(a ^ b for a, b in zip(self.client_key, signature))
        v = hmac.digest(self.server_key, auth_message, "sha256")
        return struct.pack("!i", 12) + b"v=" + base64.b64encode(v)


def client_at_final(password=PASSWORD):
    hand, client = HandServer(password), ServerLogin(USER, password)
    initial = client.receive(struct.pack("!i", 10) + b"SCRAM-SHA-256-PLUS\0SCRAM-SHA-256\0\0")
    response = client.receive(hand.first(initial))
    return hand, client, hand.final(response)


def test_client_scram_against_hand_computed_server():
    _, client, final = client_at_final()
    assert client.receive(final) is None and not client.ok
    assert client.receive(struct.pack("!i", 0)) is None and client.ok


def test_client_detects_tampered_server_signature():
    _, client, final = client_at_final()
    sig = bytearray(base64.b64decode(final[6:]))
    sig[0] ^= 1
    with pytest.raises(BackendAuthError, match="SCRAM server signature mismatch"):
        client.receive(final[:6] + base64.b64encode(bytes(sig)))


def test_client_rejects_ok_before_scram_completes():
    client = ServerLogin(USER, PASSWORD)
    client.receive(struct.pack("!i", 10) + b"SCRAM-SHA-256\0\0")
    with pytest.raises(BackendAuthError, match="before completing"):
        client.receive(struct.pack("!i", 0))


def test_client_rejects_foreign_server_nonce():
    client = ServerLogin(USER, PASSWORD)
    client.receive(struct.pack("!i", 10) + b"SCRAM-SHA-256\0\0")
    with pytest.raises(BackendAuthError, match="nonce"):
        client.receive(struct.pack("!i", 11) + b"r=someoneelse,s=QUJDRA==,i=4096")


def test_client_reports_server_error_in_final():
    _, client, _ = client_at_final()
    with pytest.raises(BackendAuthError, match="invalid-proof"):
        client.receive(struct.pack("!i", 12) + b"e=invalid-proof")


@pytest.mark.parametrize("code, name", [(7, "GSS"), (9, "SSPI"), (2, "KerberosV5"), (6, "SCM credentials"),
                                        (8, "GSSContinue"), (42, "unknown")])
def test_client_unsupported_methods(code, name):
    with pytest.raises(BackendAuthError) as ei:
        ServerLogin(USER, PASSWORD).receive(struct.pack("!i", code))
    assert str(ei.value) == f"server requested unsupported authentication method {name} ({code})"


@pytest.mark.parametrize("body", [struct.pack("!i", 3), struct.pack("!i", 5) + b"salt",
                                  struct.pack("!i", 10) + b"SCRAM-SHA-256\0\0"])
def test_client_without_password(body):
    with pytest.raises(BackendAuthError) as ei:
        ServerLogin(USER, None).receive(body)
    assert str(ei.value) == f'server requested a password but none was configured for user "{USER}"'


def test_client_only_plus_offered():
    with pytest.raises(BackendAuthError, match="only SCRAM-SHA-256 is supported"):
        ServerLogin(USER, PASSWORD).receive(struct.pack("!i", 10) + b"SCRAM-SHA-256-PLUS\0\0")


@pytest.mark.parametrize(
    "bodies",
    [
        [b""], [b"\0\0"], [struct.pack("!i", 5) + b"abc"], [struct.pack("!i", 10) + b"SCRAM-SHA-256"],
        [struct.pack("!i", 10) + b"\0"], [struct.pack("!i", 11) + b"r=x,s=y,i=1"],
        [struct.pack("!i", 12) + b"v=abc"],
        [struct.pack("!i", 10) + b"SCRAM-SHA-256\0\0", struct.pack("!i", 11) + b"garbage"],
        [struct.pack("!i", 10) + b"SCRAM-SHA-256\0\0", struct.pack("!i", 11) + b"\xff\xfe"],
        [struct.pack("!i", 3), struct.pack("!i", 3)],
        [struct.pack("!i", 0), struct.pack("!i", 0)],
    ],
)
def test_client_malformed_or_out_of_order(bodies):
    client = ServerLogin(USER, PASSWORD)
    with pytest.raises(BackendAuthError):
        for body in bodies:
            client.receive(body)


def test_client_garbage_only_ever_raises_backend_auth_error():
    rng = random.Random(1)
    for _ in range(300):
        client = ServerLogin(USER, PASSWORD)
        client.receive(struct.pack("!i", 10) + b"SCRAM-SHA-256\0\0")
        nonce = client._client_nonce
        tail = bytes(rng.choice(b"rsiev=,ABC/+\0\xff") for _ in range(rng.randrange(0, 30)))
        body = struct.pack("!i", rng.choice([11, 12])) + rng.choice([b"", f"r={nonce}".encode()]) + tail
        try:
            client.receive(body)
        except BackendAuthError:
            pass
