"""PostgreSQL authentication, both directions, sans-IO.

``ClientAuthenticator`` plays the server towards a connecting client;
``ServerLogin`` plays the client towards a real PostgreSQL server. Both take
message bodies and return complete encoded messages to send. No sockets, no
asyncio, no logging, no clocks; randomness comes from injectable sources.

SCRAM-SHA-256 (RFC 5802/7677) is implemented here directly, not through
scramp's ScramServer/ScramClient: PostgreSQL ignores the SCRAM username and
libpq sends an empty one (``n=,r=...``), which scramp rejects. Passwords are
SASLprep'ed with a fallback to the raw bytes, as PostgreSQL does.
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import hmac
import os
import struct
from collections.abc import Callable
from dataclasses import dataclass

from scramp.utils import ScramException, saslprep

from .messages import message

# Authentication request codes (the int32 after the 'R' type byte).
AUTH_OK = 0
AUTH_CLEARTEXT_PASSWORD = 3
AUTH_MD5_PASSWORD = 5
AUTH_SASL = 10
AUTH_SASL_CONTINUE = 11
AUTH_SASL_FINAL = 12
_UNSUPPORTED_AUTH = {2: "KerberosV5", 6: "SCM credentials", 7: "GSS", 8: "GSSContinue", 9: "SSPI"}

SCRAM_SHA_256 = "SCRAM-SHA-256"
SCRAM_SHA_256_PLUS = "SCRAM-SHA-256-PLUS"
DEFAULT_SCRAM_ITERATIONS = 4096  # PostgreSQL's scram_iterations default
SCRAM_SALT_LEN = 16
SCRAM_NONCE_LEN = 18
METHODS = ("scram-sha-256", "md5", "password", "trust")

INVALID_PASSWORD = "28P01"
PROTOCOL_VIOLATION = "08P01"
FEATURE_NOT_SUPPORTED = "0A000"

_PASSWORD_MESSAGE = ord("p")
_INT32 = struct.Struct("!i")
_MOCK_SECRET = os.urandom(32)  # per process, like PostgreSQL's mock_auth_nonce

# --------------------------------------------------------------------------
# Encoders


def _auth_request(code: int, payload: bytes = b"") -> bytes:
    return message(b"R", _INT32.pack(code) + payload)


def authentication_ok() -> bytes:
    return _auth_request(AUTH_OK)


def authentication_cleartext_password() -> bytes:
    return _auth_request(AUTH_CLEARTEXT_PASSWORD)


def authentication_md5_password(salt: bytes) -> bytes:
    if len(salt) != 4:
        raise ValueError("MD5 salt must be 4 bytes")
    return _auth_request(AUTH_MD5_PASSWORD, salt)


def authentication_sasl(mechanisms: tuple[str, ...] = (SCRAM_SHA_256,)) -> bytes:
    return _auth_request(AUTH_SASL, b"".join(m.encode("ascii") + b"\0" for m in mechanisms) + b"\0")


def authentication_sasl_continue(data: bytes) -> bytes:
    return _auth_request(AUTH_SASL_CONTINUE, data)


def authentication_sasl_final(data: bytes) -> bytes:
    return _auth_request(AUTH_SASL_FINAL, data)


def password_message(password: str | bytes) -> bytes:
    raw = password.encode("utf-8") if isinstance(password, str) else password
    if b"\0" in raw:
        raise ValueError("password must not contain NUL")
    return message(b"p", raw + b"\0")


def sasl_initial_response(mechanism: str, data: bytes | None) -> bytes:
    length = _INT32.pack(-1) if data is None else _INT32.pack(len(data)) + data
    return message(b"p", mechanism.encode("ascii") + b"\0" + length)


def sasl_response(data: bytes) -> bytes:
    return message(b"p", data)


# --------------------------------------------------------------------------
# Password hashing


def md5_password_hash(user: str, password: str | bytes) -> str:
    """pg_authid format: "md5" + md5(password + user)."""
    raw = password.encode("utf-8") if isinstance(password, str) else password
    return "md5" + hashlib.md5(raw + user.encode("utf-8")).hexdigest()


def md5_salted_response(md5_hash: str, salt: bytes) -> str:
    """What the client sends for AuthenticationMD5Password, from the stored hash."""
    return "md5" + hashlib.md5(md5_hash[3:].encode("ascii") + salt).hexdigest()


def _normalize_password(raw: bytes) -> bytes:
    """SASLprep, or the raw bytes when not valid UTF-8 or prohibited (as PostgreSQL)."""
    try:
        prepped = saslprep(raw.decode("utf-8"))
    except (UnicodeDecodeError, ScramException):
        return raw
    return prepped.encode("utf-8") if prepped or not raw else raw


def _salted_password(password: bytes, salt: bytes, iterations: int) -> bytes:
    return hashlib.pbkdf2_hmac("sha256", _normalize_password(password), salt, iterations)


@functools.lru_cache(maxsize=64)
def _client_salted_password(password: bytes, salt: bytes, iterations: int) -> bytes:
    """Memoized for ServerLogin: a server reuses one salt per role, so pooled logins skip PBKDF2."""
    return _salted_password(password, salt, iterations)


def _hmac(key: bytes, msg: bytes) -> bytes:
    return hmac.digest(key, msg, "sha256")


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.b64decode(text.encode("ascii"), validate=True)  # ValueError on junk


@dataclass(frozen=True, slots=True)
class ScramSecret:
    iterations: int
    salt: bytes
    stored_key: bytes
    server_key: bytes

    @classmethod
    def from_password(cls, password: str | bytes, salt: bytes, iterations: int = DEFAULT_SCRAM_ITERATIONS) -> ScramSecret:
        raw = password.encode("utf-8") if isinstance(password, str) else password
        salted = _salted_password(raw, salt, iterations)
        stored = hashlib.sha256(_hmac(salted, b"Client Key")).digest()
        return cls(iterations, salt, stored, _hmac(salted, b"Server Key"))

    @classmethod
    def parse(cls, verifier: str) -> ScramSecret:
        """Parse "SCRAM-SHA-256$<iter>:<salt>$<StoredKey>:<ServerKey>"; ValueError if invalid."""
        try:
            scheme, iter_salt, keys = verifier.split("$")
            iterations, salt = iter_salt.split(":")
            stored, server = keys.split(":")
            secret = cls(int(iterations), _unb64(salt), _unb64(stored), _unb64(server))
        except (ValueError, UnicodeEncodeError) as e:
            raise ValueError("invalid SCRAM-SHA-256 verifier") from e
        if scheme != SCRAM_SHA_256 or secret.iterations <= 0 or not secret.salt \
                or len(secret.stored_key) != 32 or len(secret.server_key) != 32:
            raise ValueError("invalid SCRAM-SHA-256 verifier")
        return secret

    def __str__(self) -> str:
        return (f"{SCRAM_SHA_256}${self.iterations}:{_b64(self.salt)}"
                f"${_b64(self.stored_key)}:{_b64(self.server_key)}")


@dataclass(frozen=True)
class Credentials:
    """What the proxy knows about a user (any of the three forms)."""

    user: str
    password: str | None = None
    scram_verifier: str | None = None
    md5_hash: str | None = None

    def __post_init__(self) -> None:
        if self.scram_verifier is not None:
            ScramSecret.parse(self.scram_verifier)
        if self.md5_hash is not None and not (
            len(self.md5_hash) == 35 and self.md5_hash.startswith("md5")
            and all(c in "0123456789abcdef" for c in self.md5_hash[3:])
        ):
            raise ValueError("invalid md5 password hash (expected 'md5' + 32 lowercase hex digits)")

    @classmethod
    def from_password(cls, user: str, password: str, *, iterations: int = DEFAULT_SCRAM_ITERATIONS,
                      salt: bytes | None = None) -> Credentials:
        """Plaintext plus precomputed md5 hash and SCRAM verifier (PBKDF2 once, not per login)."""
        secret = ScramSecret.from_password(password, salt or os.urandom(SCRAM_SALT_LEN), iterations)
        return cls(user, password, str(secret), md5_password_hash(user, password))


# --------------------------------------------------------------------------
# Server side: the proxy authenticating a client


class AuthFailed(Exception):
    """The IO shell sends this as an ErrorResponse and closes the connection.

    ``detail`` goes to the client (ErrorResponse 'D'); ``log_detail`` is for the
    proxy's log only, like PostgreSQL's logdetail.
    """

    def __init__(self, sqlstate: str, message: str, *, severity: str = "FATAL",
                 detail: str | None = None, log_detail: str | None = None) -> None:
        super().__init__(message)
        self.sqlstate, self.message, self.severity = sqlstate, message, severity
        self.detail, self.log_detail = detail, log_detail

    def __str__(self) -> str:
        extra = "".join(f"; {d}" for d in (self.detail, self.log_detail) if d)
        return f"{self.severity} {self.sqlstate}: {self.message}{extra}"


def _malformed(detail: str) -> AuthFailed:
    return AuthFailed(PROTOCOL_VIOLATION, "malformed SCRAM message", detail=detail)


def _scram_attr(part: str, name: str, what: str) -> str:
    if not part.startswith(name + "="):
        raise _malformed(f"Expected attribute \"{name}\" in {what}.")
    return part[2:]


def _check_extensions(parts: list[str], what: str) -> None:
    for part in parts:
        if len(part) < 2 or part[1] != "=" or not (part[0].isascii() and part[0].isalpha()):
            raise _malformed(f"Malformed attribute in {what}.")


def _valid_nonce(nonce: str) -> bool:
    return bool(nonce) and all(0x21 <= ord(c) <= 0x7E and c != "," for c in nonce)


class ClientAuthenticator:
    """Server side of one client's authentication. start() once, then receive()."""

    def __init__(self, method: str, user: str, credentials: Credentials | None,
                 salt_source: Callable[[int], bytes] = os.urandom, *, mock_secret: bytes | None = None) -> None:
        if method not in METHODS:
            raise ValueError(f"unknown authentication method {method!r}; expected one of {METHODS}")
        if credentials is not None and credentials.user != user:
            raise ValueError(f"credentials are for user {credentials.user!r}, not {user!r}")
        self.method, self.user, self._creds = method, user, credentials
        self._random = salt_source
        self._mock_secret = _MOCK_SECRET if mock_secret is None else mock_secret
        self._state = "new"
        self._log_detail: str | None = None  # why a doomed exchange will fail
        self._md5_salt = b""
        self._scram: ScramSecret | None = None
        self._doomed = False
        self._gs2_header = self._client_first_bare = self._server_first = self._nonce = ""
        self._done = False

    @property
    def done(self) -> bool:
        return self._done

    # -- flow

    def start(self) -> bytes:
        if self._state != "new":
            raise RuntimeError("start() called twice")
        creds = self._creds
        if self.method == "trust":
            return self._succeed(b"")
        if creds is None:
            self._log_detail = f'Role "{self.user}" is not known to the proxy.'
        elif not (creds.password or creds.scram_verifier or creds.md5_hash):
            self._log_detail = f'User "{self.user}" has no password configured.'
        if self.method == "password":
            self._state = "password"
            return authentication_cleartext_password()
        if self.method == "md5" and (creds is None or creds.password or creds.md5_hash
                                     or not creds.scram_verifier):
            self._state = "md5"
            self._md5_salt = self._random(4)
            return authentication_md5_password(self._md5_salt)
        # scram-sha-256, or md5 with only a SCRAM verifier (PostgreSQL switches to SCRAM too).
        if creds is not None and creds.scram_verifier:
            self._scram = ScramSecret.parse(creds.scram_verifier)
        elif creds is not None and creds.password:
            self._scram = ScramSecret.from_password(creds.password, self._random(SCRAM_SALT_LEN))
        elif creds is not None and creds.md5_hash:
            raise self._failure(
                f'The proxy knows only an MD5 hash for user "{self.user}"; scram-sha-256 needs '
                "the plaintext password or a SCRAM verifier.")
        else:  # unknown user / no password: mock exchange with a stable per-user salt
            self._doomed = True
            salt = hashlib.sha256(self._mock_secret + self.user.encode("utf-8")).digest()[:SCRAM_SALT_LEN]
            self._scram = ScramSecret(DEFAULT_SCRAM_ITERATIONS, salt, bytes(32), bytes(32))
        self._state = "sasl_initial"
        return authentication_sasl()

    def receive(self, msg_type: int, body: bytes) -> bytes:
        if self._state in ("new", "done"):
            raise RuntimeError(f"receive() called in state {self._state!r}")
        if msg_type != _PASSWORD_MESSAGE:
            shown = msg_type if isinstance(msg_type, int) else repr(msg_type)
            raise AuthFailed(PROTOCOL_VIOLATION, f"expected password response, got message type {shown}")
        if self._state == "password":
            return self._check_cleartext(self._password_body(body))
        if self._state == "md5":
            return self._check_md5(self._password_body(body))
        if self._state == "sasl_initial":
            return self._sasl_initial(body)
        if self._state == "sasl_first":
            return self._scram_first(body)
        return self._scram_final(body)

    # -- outcomes

    def _succeed(self, prefix: bytes) -> bytes:
        self._state, self._done = "done", True
        return prefix + authentication_ok()

    def _failure(self, log_detail: str | None = None) -> AuthFailed:
        self._state = "done"
        return AuthFailed(INVALID_PASSWORD, f'password authentication failed for user "{self.user}"',
                          log_detail=log_detail or self._log_detail
                          or f'Password does not match for user "{self.user}".')

    # -- password and md5

    @staticmethod
    def _password_body(body: bytes) -> bytes:
        if not body.endswith(b"\0") or b"\0" in body[:-1]:
            raise AuthFailed(PROTOCOL_VIOLATION, "invalid password packet size")
        return body[:-1]

    def _check_cleartext(self, given: bytes) -> bytes:
        creds, ok = self._creds, False
        if creds is not None and given:
            if creds.password is not None:
                ok = hmac.compare_digest(given, creds.password.encode("utf-8"))
            elif creds.scram_verifier is not None:
                want = ScramSecret.parse(creds.scram_verifier)
                got = ScramSecret.from_password(given, want.salt, want.iterations)
                ok = hmac.compare_digest(got.stored_key + got.server_key, want.stored_key + want.server_key)
            elif creds.md5_hash is not None:
                ok = hmac.compare_digest(md5_password_hash(self.user, given).encode(), creds.md5_hash.encode())
        if not ok:
            raise self._failure()
        return self._succeed(b"")

    def _check_md5(self, given: bytes) -> bytes:
        creds, ok = self._creds, False
        if creds is not None and (creds.md5_hash or creds.password):
            stored = creds.md5_hash or md5_password_hash(self.user, creds.password or "")
            want = md5_salted_response(stored, self._md5_salt).encode("ascii")
            ok = hmac.compare_digest(given, want)
        if not ok:
            raise self._failure()
        return self._succeed(b"")

    # -- SCRAM-SHA-256

    def _sasl_initial(self, body: bytes) -> bytes:
        nul = body.find(b"\0")
        if nul < 0 or len(body) < nul + 5:
            raise AuthFailed(PROTOCOL_VIOLATION, "invalid message format")
        mechanism = body[:nul]
        (length,) = _INT32.unpack_from(body, nul + 1)
        data = body[nul + 5:]
        if (length == -1 and data) or (length != -1 and length != len(data)):
            raise AuthFailed(PROTOCOL_VIOLATION, "invalid message format")
        if mechanism != SCRAM_SHA_256.encode():
            raise AuthFailed(PROTOCOL_VIOLATION, "client selected an invalid SASL authentication mechanism")
        if length == -1:  # no initial response: empty challenge, client-first comes next
            self._state = "sasl_first"
            return authentication_sasl_continue(b"")
        return self._scram_first(data)

    def _scram_first(self, data: bytes) -> bytes:
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            raise _malformed("client-first-message is not valid UTF-8.") from None
        parts = text.split(",")
        if len(parts) < 4:
            raise _malformed("Incomplete client-first-message.")
        flag, authzid, user_attr, nonce_attr, *extensions = parts
        if flag.startswith("p="):
            raise _malformed("The client selected SCRAM-SHA-256 without channel binding, "
                             "but the SCRAM message includes channel binding data.")
        if flag not in ("n", "y"):  # 'y': client could bind but we offer no -PLUS; fine without TLS
            raise _malformed(f'Unexpected channel-binding flag "{flag[:1]}".')
        if authzid:
            if authzid.startswith("a="):
                raise AuthFailed(FEATURE_NOT_SUPPORTED,
                                 "client uses authorization identity, but it is not supported")
            raise _malformed("Unexpected attribute in client-first-message.")
        if user_attr.startswith("m="):
            raise AuthFailed(FEATURE_NOT_SUPPORTED, "client requires an unsupported SCRAM extension")
        _scram_attr(user_attr, "n", "client-first-message")  # ignored: the startup user counts
        client_nonce = _scram_attr(nonce_attr, "r", "client-first-message")
        if not _valid_nonce(client_nonce):
            raise _malformed("Invalid nonce in client-first-message.")
        _check_extensions(extensions, "client-first-message")
        assert self._scram is not None
        self._gs2_header = f"{flag},,"
        self._client_first_bare = text[len(self._gs2_header):]
        self._nonce = client_nonce + _b64(self._random(SCRAM_NONCE_LEN))
        self._server_first = f"r={self._nonce},s={_b64(self._scram.salt)},i={self._scram.iterations}"
        self._state = "sasl_final"
        return authentication_sasl_continue(self._server_first.encode("ascii"))

    def _scram_final(self, data: bytes) -> bytes:
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            raise _malformed("client-final-message is not valid UTF-8.") from None
        cut = text.rfind(",p=")
        if cut < 0:
            raise _malformed("Missing proof in client-final-message.")
        without_proof, proof_text = text[:cut], text[cut + 3:]
        parts = without_proof.split(",")
        if len(parts) < 2:
            raise _malformed("Incomplete client-final-message.")
        cbind = _scram_attr(parts[0], "c", "client-final-message")
        nonce = _scram_attr(parts[1], "r", "client-final-message")
        _check_extensions(parts[2:], "client-final-message")
        try:
            cbind_ok = _unb64(cbind) == self._gs2_header.encode("ascii")
        except (ValueError, UnicodeEncodeError):
            cbind_ok = False
        if not cbind_ok:
            raise AuthFailed(PROTOCOL_VIOLATION, "SCRAM channel binding check failed")
        try:
            proof = _unb64(proof_text)
        except (ValueError, UnicodeEncodeError):
            proof = b""
        if len(proof) != 32:
            raise _malformed("Malformed proof in client-final-message.")
        secret = self._scram
        assert secret is not None
        auth_message = f"{self._client_first_bare},{self._server_first},{without_proof}".encode("utf-8")
        client_key = bytes(a ^ b for a, b in zip(proof, _hmac(secret.stored_key, auth_message)))
        key_ok = hmac.compare_digest(hashlib.sha256(client_key).digest(), secret.stored_key)
        nonce_ok = hmac.compare_digest(nonce.encode("utf-8"), self._nonce.encode("ascii"))
        if self._doomed or not key_ok or not nonce_ok:
            raise self._failure()
        signature = _b64(_hmac(secret.server_key, auth_message))
        return self._succeed(authentication_sasl_final(f"v={signature}".encode("ascii")))


# --------------------------------------------------------------------------
# Client side: the proxy logging into a PostgreSQL server


class BackendAuthError(Exception):
    """Logging into a backend server failed on our side of the exchange."""


class ServerLogin:
    """Client side of authentication; feed it the body of every 'R' message."""

    def __init__(self, user: str, password: str | None, *,
                 nonce_source: Callable[[int], bytes] = os.urandom) -> None:
        if password is not None and "\0" in password:
            raise ValueError("password must not contain NUL")
        self.user, self._password = user, password
        self._random = nonce_source
        self._ok = False
        self.method: str | None = None  # "trust", "password", "md5" or "scram-sha-256" once known
        self._scram_state = ""  # "", "first", "final", "verified"
        self._client_nonce = self._client_first_bare = ""
        self._server_signature = b""

    @property
    def ok(self) -> bool:
        return self._ok

    def receive(self, body: bytes) -> bytes | None:
        if self._ok:
            raise BackendAuthError("server sent an authentication request after AuthenticationOk")
        if len(body) < 4:
            raise BackendAuthError("malformed authentication message from server")
        (code,) = _INT32.unpack_from(body)
        payload = body[4:]
        if code == AUTH_OK:
            if self._scram_state in ("first", "final"):
                raise BackendAuthError("server sent AuthenticationOk before completing the SCRAM exchange")
            self._ok, self.method = True, self.method or "trust"
            return None
        if code == AUTH_SASL_CONTINUE:
            return self._scram_continue(payload)
        if code == AUTH_SASL_FINAL:
            return self._scram_final(payload)
        if code not in (AUTH_CLEARTEXT_PASSWORD, AUTH_MD5_PASSWORD, AUTH_SASL):
            name = _UNSUPPORTED_AUTH.get(code, "unknown")
            raise BackendAuthError(f"server requested unsupported authentication method {name} ({code})")
        if self.method is not None:
            raise BackendAuthError(f"server sent a second authentication request ({code})")
        password = self._password
        if password is None:
            raise BackendAuthError(
                f'server requested a password but none was configured for user "{self.user}"')
        if code == AUTH_CLEARTEXT_PASSWORD:
            self.method = "password"
            return password_message(password)
        if code == AUTH_MD5_PASSWORD:
            if len(payload) != 4:
                raise BackendAuthError("malformed AuthenticationMD5Password message from server")
            self.method = "md5"
            return password_message(md5_salted_response(md5_password_hash(self.user, password), payload))
        return self._scram_start(payload)

    def _scram_start(self, payload: bytes) -> bytes:
        names = payload.split(b"\0")
        if len(names) < 2 or names[-2:] != [b"", b""] or b"" in names[:-2]:
            raise BackendAuthError("malformed AuthenticationSASL message from server")
        offered = [n.decode("ascii", "replace") for n in names[:-2]]
        if SCRAM_SHA_256 not in offered:
            raise BackendAuthError(f"server offered SASL mechanisms {', '.join(offered)}; only "
                                   f"{SCRAM_SHA_256} is supported (no channel binding)")
        self.method, self._scram_state = "scram-sha-256", "first"
        self._client_nonce = _b64(self._random(SCRAM_NONCE_LEN))
        self._client_first_bare = f"n=,r={self._client_nonce}"  # server uses the startup user
        return sasl_initial_response(SCRAM_SHA_256, f"n,,{self._client_first_bare}".encode("ascii"))

    def _scram_continue(self, payload: bytes) -> bytes:
        if self._scram_state != "first":
            raise BackendAuthError("unexpected AuthenticationSASLContinue from server")
        try:
            server_first = payload.decode("ascii")
            parts = server_first.split(",")
            if parts[0].startswith("e="):
                raise BackendAuthError(f"SCRAM authentication failed: server error {parts[0][2:]}")
            if len(parts) < 3 or [p[:2] for p in parts[:3]] != ["r=", "s=", "i="]:
                raise ValueError
            nonce, salt = parts[0][2:], _unb64(parts[1][2:])
            if not parts[2][2:].isdigit():
                raise ValueError
            iterations = int(parts[2][2:])
        except (ValueError, IndexError):
            raise BackendAuthError("malformed SCRAM server-first-message") from None
        if not salt or iterations <= 0 or not _valid_nonce(nonce):
            raise BackendAuthError("malformed SCRAM server-first-message")
        if not nonce.startswith(self._client_nonce) or len(nonce) == len(self._client_nonce):
            raise BackendAuthError("SCRAM server nonce does not extend the client nonce")
        assert self._password is not None
        salted = _client_salted_password(self._password.encode("utf-8"), salt, iterations)
        client_key = _hmac(salted, b"Client Key")
        without_proof = f"c={_b64(b'n,,')},r={nonce}"
        auth_message = f"{self._client_first_bare},{server_first},{without_proof}".encode("ascii")
        signature = _hmac(hashlib.sha256(client_key).digest(), auth_message)
        proof = bytes(a ^ b for a, b in zip(client_key, signature))
        self._server_signature = _hmac(_hmac(salted, b"Server Key"), auth_message)
        self._scram_state = "final"
        return sasl_response(f"{without_proof},p={_b64(proof)}".encode("ascii"))

    def _scram_final(self, payload: bytes) -> None:
        if self._scram_state != "final":
            raise BackendAuthError("unexpected AuthenticationSASLFinal from server")
        first = payload.split(b",")[0]
        if first.startswith(b"e="):
            raise BackendAuthError(f"SCRAM authentication failed: server error "
                                   f"{first[2:].decode('ascii', 'replace')}")
        try:
            if not first.startswith(b"v="):
                raise ValueError
            signature = base64.b64decode(first[2:], validate=True)
        except (ValueError, binascii.Error):
            raise BackendAuthError("malformed SCRAM server-final-message") from None
        if not hmac.compare_digest(signature, self._server_signature):
            raise BackendAuthError("SCRAM server signature mismatch")
        self._scram_state = "verified"
        return None
