"""Classify PostgreSQL statement text: may it run on a hot standby, and what does
it do to the transaction and to the session? (DESIGN.md sections 3 and 4.)

Parsing is pglast's (libpg_query) ``parse_sql_json``: walking its JSON tree is
far cheaper than building pglast's Python AST. ``replica_ok`` is True only for
plain SELECT (set operations, subqueries, read-only CTEs, read functions), SHOW,
EXPLAIN without ANALYZE of such a read, VALUES, TABLE t, COPY t / COPY (read
query) TO STDOUT, and text made only of those; everything else goes to the primary.

``reason`` (stable; a metrics label). replica_ok: select, values, table, show,
explain, copy_to, multi_statement_read (reads of mixed reasons; reads of one
reason keep it). Primary: write (INSERT/UPDATE/DELETE/MERGE), ddl (every other
utility statement: CREATE/ALTER/DROP/TRUNCATE/GRANT/VACUUM/ANALYZE/CHECKPOINT/
REFRESH/LOAD/...), locking_clause, writing_cte, select_into, writing_function
(each at any depth of a query), explain_analyze, explain_non_read, copy_from,
copy_to_file (TO 'file' or PROGRAM), lock, listen, unlisten, notify, call, do,
prepare, execute, deallocate, declare_cursor, fetch (also MOVE), close, discard,
transaction (BEGIN/START/COMMIT/END/ROLLBACK/ABORT/SAVEPOINT/RELEASE/PREPARE
TRANSACTION, SET TRANSACTION, SET [LOCAL] transaction_*), two_phase (COMMIT/
ROLLBACK PREPARED), session_set (SET/RESET/SET ROLE/...), multi_statement_write
(several statements, one not replica_ok, one writing), multi_statement (the
same with none writing, e.g. "BEGIN; SELECT 1; COMMIT"), empty (no statement),
unparseable, classifier_error (a bug here; fails safe to the primary).

``operation``: "read" (also EXPLAIN, FETCH); "write" for writes and for reads
kept on the primary for a side effect (locking, writing CTE or function, SELECT
INTO, COPY TO file); "other" for session/transaction control and DECLARE. A
result with session effects (replay, pin, discard, deallocate) is never "read".
Several statements: ``tx`` is the first effect that is not NONE; replay texts
are joined with "; "; ``pin_primary``/``discard_all`` are any statement's;
``deallocate`` is "*" if any statement deallocates all, else the first name.

Caching: an exact-text FIFO cache in front of a shape cache keyed by
``sqlnormalize.shape_key`` (literal-normalised; its docstring holds the safety
argument). A result enters the shape cache only if nothing in it depends on
literal text (no session_replay, no deallocate name, parsed). Measured with timeit
(2 vCPU dev box, Python 3.11, pglast 8.8) on pgbench's ``SELECT abalance FROM
pgbench_accounts WHERE aid = 12345;``: exact-text hit ~0.2 us; same shape, new
literal ~5 us (shape_key ~4 us); new shape 45-60 us (parse_sql_json + json.loads
+ walk + fingerprint). pglast alone there: fingerprint 5.5-9 us, parse_sql_json
5-8 us, parse_sql 77-92 us. A 360-char query with a sqlcommenter comment:
shape_key ~10 us, fingerprint 23-27 us, full analysis 190-230 us.
"""

from __future__ import annotations

import enum
import hashlib
import json
import re
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass

from pglast import parser as _pg

from .sqlnormalize import MAX_INLINE_KEY, digest_key, shape_key

__all__ = ["BUILTIN_WRITING_FUNCTIONS", "Classification", "Classifier", "TxEffect"]


class TxEffect(enum.Enum):
    """What a statement does to the transaction block."""

    NONE = "none"
    BEGIN = "begin"
    BEGIN_READ_ONLY = "begin_read_only"
    SET_READ_ONLY = "set_read_only"  # SET TRANSACTION READ ONLY, SET transaction_read_only = on
    COMMIT = "commit"  # COMMIT, END
    ROLLBACK = "rollback"  # ROLLBACK, ABORT
    # COMMIT/ROLLBACK AND CHAIN end a transaction and at once start another one
    # (same characteristics) on the same backend: the backend is not free.
    COMMIT_AND_CHAIN = "commit_and_chain"
    ROLLBACK_AND_CHAIN = "rollback_and_chain"
    SAVEPOINT_ETC = "savepoint_etc"  # SAVEPOINT, RELEASE, ROLLBACK TO
    PREPARE_TRANSACTION = "prepare_transaction"


@dataclass(frozen=True, slots=True)
class Classification:
    replica_ok: bool  # safe on a hot standby and no side effect owed to the primary
    operation: str  # "read" | "write" | "other"
    reason: str  # see the module docstring
    route_id: str  # "q_" + 8 hex of the fingerprint (unparseable: of a text hash)
    tx: TxEffect = TxEffect.NONE
    session_replay: str | None = None  # SQL that re-creates this session state elsewhere
    discard_all: bool = False  # DISCARD ALL
    deallocate: str | None = None  # DEALLOCATE name -> name, DEALLOCATE ALL -> "*"
    pin_primary: bool = False  # temp objects, LISTEN, WITH HOLD cursor: stay on the primary
    statement_count: int = 1


# Functions that write, take locks, change session state or fail on a standby.
# currval/lastval read session state that nextval set on the primary.
BUILTIN_WRITING_FUNCTIONS = frozenset("""
    nextval setval currval lastval set_config pg_notify pg_export_snapshot
    txid_current pg_current_xact_id pg_current_wal_lsn pg_current_wal_insert_lsn
    pg_current_wal_flush_lsn pg_walfile_name pg_walfile_name_offset
    lo_create lo_creat lo_import lo_export lo_unlink lo_open lo_close loread lowrite
    lo_lseek lo_lseek64 lo_tell lo_tell64 lo_put lo_from_bytea lo_truncate lo_truncate64
    pg_terminate_backend pg_cancel_backend pg_reload_conf pg_rotate_logfile
    pg_switch_wal pg_start_backup pg_stop_backup pg_backup_start pg_backup_stop
    pg_promote pg_wal_replay_pause pg_wal_replay_resume pg_log_standby_snapshot
    pg_log_backend_memory_contexts pg_import_system_collations pg_stat_statements_reset
    pg_replication_slot_advance pg_logical_emit_message pg_logical_slot_get_changes
    pg_logical_slot_get_binary_changes pg_sync_replication_slots
    pg_file_write pg_file_unlink pg_file_rename
""".split())
BUILTIN_WRITING_PREFIXES = (
    "pg_advisory_", "pg_try_advisory_",  # every advisory lock function
    "pg_stat_reset",  # pg_stat_reset, _shared, _single_*, _slru, ...
    "pg_create_",  # pg_create_restore_point, pg_create_*_replication_slot
    "pg_drop_replication_slot", "pg_copy_", "pg_replication_origin_",
    "dblink",  # dblink_exec and friends can write through a second connection
)  # fmt: skip

_WRITE_STATEMENTS = frozenset({"InsertStmt", "UpdateStmt", "DeleteStmt", "MergeStmt"})
_TX_SETTINGS = frozenset({"transaction_read_only", "transaction_isolation", "transaction_deferrable"})
_WORD = re.compile(r"[A-Za-z_]+")
_CURSOR_OPT_HOLD = 0x0020  # parsenodes.h
# Problems found in a query, in the order that picks the reported reason.
_QUERY_PROBLEMS = ("select_into", "writing_cte", "locking_clause", "writing_function")


@dataclass(frozen=True, slots=True)
class _Verdict:
    """One statement's classification, before texts and route are attached."""

    replica_ok: bool
    operation: str
    reason: str
    tx: TxEffect = TxEffect.NONE
    replay: bool = False  # the statement's own text is session state to replay
    discard_all: bool = False
    deallocate: str | None = None
    pin_primary: bool = False


def _read(reason: str) -> _Verdict:
    return _Verdict(True, "read", reason)


def _primary(operation: str, reason: str, **effects) -> _Verdict:
    return _Verdict(False, operation, reason, **effects)


def _pg_bool(const: dict | None) -> bool | None:
    """An A_Const read the way PostgreSQL's parse_bool reads a setting; None if invalid."""
    const = (const or {}).get("A_Const", const or {})
    if "ival" in const:
        return {0: False, 1: True}.get(const["ival"].get("ival", 0))  # protobuf JSON omits zeros
    if "boolval" in const:
        return bool(const["boolval"].get("boolval", False))
    text = const.get("sval", {}).get("sval", "").lower()
    if text and ("true".startswith(text) or "yes".startswith(text) or text in ("on", "1")):
        return True
    if text and ("false".startswith(text) or "no".startswith(text) or text in ("of", "off", "0")):
        return False
    return None


def _option_read_only(options: list | None) -> bool:
    """True when transaction options (BEGIN, SET TRANSACTION) end on READ ONLY."""
    read_only = False
    for option in options or ():
        elem = option.get("DefElem", {})
        if elem.get("defname") == "transaction_read_only":
            read_only = _pg_bool(elem.get("arg")) is True
    return read_only


def _is_temp(rangevar: dict | None) -> bool:
    rangevar = (rangevar or {}).get("RangeVar", rangevar or {})
    return rangevar.get("relpersistence") == "t" or rangevar.get("schemaname", "").startswith("pg_temp")


def _last_name(names: list) -> str:
    last = names[-1] if names else {}
    return last.get("String", {}).get("sval", "").lower()


# Statements whose verdict does not depend on their content.
_FIXED_VERDICTS = {
    **dict.fromkeys(_WRITE_STATEMENTS, _primary("write", "write")),
    "VariableShowStmt": _read("show"),
    "PrepareStmt": _primary("other", "prepare"),
    "ExecuteStmt": _primary("write", "execute"),  # the prepared statement is unknown here
    "FetchStmt": _primary("read", "fetch"),  # FETCH and MOVE
    "ClosePortalStmt": _primary("other", "close"),
    "ListenStmt": _primary("other", "listen", pin_primary=True),  # notifications arrive on that backend
    "UnlistenStmt": _primary("other", "unlisten"),
    "NotifyStmt": _primary("write", "notify"),
    "LockStmt": _primary("write", "lock"),
    "CallStmt": _primary("write", "call"),
    "DoStmt": _primary("write", "do"),
}
_DDL = _primary("write", "ddl")
_DDL_PIN = _primary("write", "ddl", pin_primary=True)
# DDL that may create a session-local (temporary) object: where its RangeVar is.
_CREATED_RELATION = {
    "CreateStmt": ("relation",), "CreateTableAsStmt": ("into", "rel"),
    "ViewStmt": ("view",), "CreateSeqStmt": ("sequence",),
}  # fmt: skip


class _Analyzer:
    """Turns one parsed statement (a JSON node) into a _Verdict."""

    def __init__(self, is_writing_function) -> None:
        self._is_writing_function = is_writing_function
        self._handlers = {
            "SelectStmt": self._select,
            "ExplainStmt": self._explain,
            "CopyStmt": self._copy,
            "TransactionStmt": _transaction,
            "VariableSetStmt": _variable_set,
            "DiscardStmt": _discard,
            "DeallocateStmt": _deallocate,
            "DeclareCursorStmt": _declare_cursor,
        }

    def statement(self, node: dict, first_word: str = "") -> _Verdict:
        ((kind, body),) = node.items()
        fixed = _FIXED_VERDICTS.get(kind)
        if fixed is not None:
            return fixed
        handler = self._handlers.get(kind)
        if handler is not None:
            return handler(body, first_word)
        path = _CREATED_RELATION.get(kind)
        if path is not None:
            relation = body
            for field in path:
                relation = relation.get(field) or {}
            return _DDL_PIN if _is_temp(relation) else _DDL
        return _DDL  # every other utility statement

    def _select(self, body: dict, first_word: str) -> _Verdict:
        found = self._scan_query(body)
        for problem in _QUERY_PROBLEMS:
            if problem in found:
                into = body.get("intoClause") or {}
                # set_config(..., false) changes the session: replay the statement,
                # unless it has $n parameters (no values to replay it with): then pin.
                session = "set_config" in found
                bound = "ParamRef" in found
                return _primary(
                    "write",
                    problem,
                    pin_primary=_is_temp(into.get("rel")) or (session and bound),
                    replay=session and not bound,
                )
        if "valuesLists" in body:
            return _read("values")
        return _read("table" if first_word == "table" else "select")

    def _scan_query(self, root: dict) -> set[str]:
        """Walk the whole tree (subqueries, CTEs, function args, FROM functions)."""
        found: set[str] = set()
        stack: list = [root]
        while stack:
            item = stack.pop()
            if isinstance(item, list):
                stack.extend(item)
                continue
            for key, value in item.items():
                if key == "FuncCall":
                    name = _last_name(value.get("funcname", ()))
                    if self._is_writing_function(name):
                        found.add("writing_function")
                        if name == "set_config":
                            found.add("set_config")
                elif key == "ColumnRef":
                    # t.f may call f(t) ("functional notation" on a row)
                    fields = value.get("fields", ())
                    if len(fields) > 1 and self._is_writing_function(_last_name(fields)):
                        found.add("writing_function")
                elif key in _WRITE_STATEMENTS:
                    found.add("writing_cte")
                elif key == "LockingClause":
                    found.add("locking_clause")
                elif key == "intoClause" and value:
                    found.add("select_into")
                elif key == "ParamRef":
                    found.add("ParamRef")
                if isinstance(value, (dict, list)):
                    stack.append(value)
        return found

    def _explain(self, body: dict, first_word: str) -> _Verdict:
        analyze = False
        for option in body.get("options", ()):
            elem = option.get("DefElem", {})
            if elem.get("defname") == "analyze":
                analyze = _explain_flag(elem.get("arg"))
        inner = self.statement(body["query"])
        if analyze:  # it executes the statement
            return _primary(
                inner.operation, "explain_analyze", pin_primary=inner.pin_primary, replay=inner.replay
            )
        if inner.replica_ok:
            return _read("explain")
        return _primary("read", "explain_non_read")

    def _copy(self, body: dict, first_word: str) -> _Verdict:
        if body.get("is_from"):
            return _primary("write", "copy_from")
        if body.get("filename") or body.get("is_program"):
            return _primary("write", "copy_to_file")
        if "query" in body:
            inner = self.statement(body["query"])
            if not inner.replica_ok:
                return inner  # e.g. COPY (DELETE ... RETURNING) TO STDOUT: "write"
        return _read("copy_to")


# TransactionStmt kind -> (effect, effect with AND CHAIN); None: COMMIT/ROLLBACK PREPARED.
_TX_KINDS = {
    "TRANS_STMT_COMMIT": (TxEffect.COMMIT, TxEffect.COMMIT_AND_CHAIN),
    "TRANS_STMT_ROLLBACK": (TxEffect.ROLLBACK, TxEffect.ROLLBACK_AND_CHAIN),
    "TRANS_STMT_SAVEPOINT": (TxEffect.SAVEPOINT_ETC,) * 2,
    "TRANS_STMT_RELEASE": (TxEffect.SAVEPOINT_ETC,) * 2,
    "TRANS_STMT_ROLLBACK_TO": (TxEffect.SAVEPOINT_ETC,) * 2,
    "TRANS_STMT_PREPARE": (TxEffect.PREPARE_TRANSACTION,) * 2,
}


def _transaction(body: dict, first_word: str) -> _Verdict:
    kind = body.get("kind", "")
    if kind in ("TRANS_STMT_BEGIN", "TRANS_STMT_START"):
        tx = TxEffect.BEGIN_READ_ONLY if _option_read_only(body.get("options")) else TxEffect.BEGIN
        return _primary("other", "transaction", tx=tx)
    effects = _TX_KINDS.get(kind)
    if effects is None:  # COMMIT/ROLLBACK PREPARED: no transaction block, acts on stored data
        return _primary("write", "two_phase")
    return _primary("other", "transaction", tx=effects[1 if body.get("chain") else 0])


def _variable_set(body: dict, first_word: str) -> _Verdict:
    kind, name = body.get("kind", ""), body.get("name", "")
    if kind == "VAR_SET_MULTI" and name == "SESSION CHARACTERISTICS":
        return _primary("other", "session_set", replay=True)
    if kind == "VAR_SET_MULTI":  # SET TRANSACTION ..., SET TRANSACTION SNAPSHOT
        read_only = name == "TRANSACTION" and _option_read_only(body.get("args"))
    elif name in _TX_SETTINGS:  # transaction-scoped whatever the syntax: never replayed
        args = body.get("args", ())
        read_only = name == "transaction_read_only" and kind == "VAR_SET_VALUE" and len(args) == 1
        read_only = read_only and _pg_bool(args[0]) is True
    else:  # SET LOCAL ends with the transaction: nothing to replay
        return _primary("other", "session_set", replay=not body.get("is_local", False))
    return _primary("other", "transaction", tx=TxEffect.SET_READ_ONLY if read_only else TxEffect.NONE)


def _discard(body: dict, first_word: str) -> _Verdict:
    return _primary("other", "discard", discard_all=body.get("target") == "DISCARD_ALL")


def _deallocate(body: dict, first_word: str) -> _Verdict:
    name = "*" if body.get("isall") or "name" not in body else body["name"]
    return _primary("other", "deallocate", deallocate=name)


def _declare_cursor(body: dict, first_word: str) -> _Verdict:
    hold = bool(body.get("options", 0) & _CURSOR_OPT_HOLD)
    return _primary("other", "declare_cursor", pin_primary=hold)  # WITH HOLD outlives the transaction


def _explain_flag(arg: dict | None) -> bool:
    """EXPLAIN's boolean option (no value means true); anything but a clear false is true."""
    if arg is not None and "Integer" in arg:
        return arg["Integer"].get("ival", 0) != 0
    return (arg or {}).get("String", {}).get("sval", "true").lower() not in ("false", "off")


class _FifoCache(dict):
    """A dict bounded to ``size`` entries that evicts the oldest insertion first."""

    def __init__(self, size: int) -> None:
        super().__init__()
        self._size = size
        self._order: deque = deque()

    def put(self, key, value) -> None:
        if self._size <= 0 or key in self:
            return
        if len(self._order) >= self._size:
            del self[self._order.popleft()]
        self[key] = value
        self._order.append(key)


class Classifier:
    """Classify statement text, with an exact-text cache in front of a shape cache."""

    def __init__(self, writing_functions: Iterable[str] = (), cache_size: int = 20000) -> None:
        user = frozenset(name.rsplit(".", 1)[-1].strip('"').lower() for name in writing_functions)
        self._writing = BUILTIN_WRITING_FUNCTIONS | user
        self._writing_verdicts: dict[str, bool] = {}
        self._analyzer = _Analyzer(self._is_writing_function)
        self._by_text = _FifoCache(cache_size)
        self._by_shape = _FifoCache(cache_size)

    def _is_writing_function(self, name: str) -> bool:
        verdict = self._writing_verdicts.get(name)
        if verdict is None:
            verdict = name in self._writing or name.startswith(BUILTIN_WRITING_PREFIXES)
            if len(self._writing_verdicts) < 10000:
                self._writing_verdicts[name] = verdict
        return verdict

    def classify(self, sql: str) -> Classification:
        key = sql if len(sql) <= MAX_INLINE_KEY else digest_key(sql)
        result = self._by_text.get(key)
        if result is None:
            shape = shape_key(sql)
            result = self._by_shape.get(shape) if shape is not None else None
            if result is None:
                # New shapes (and texts that have no shape key) are remembered by
                # text; a known shape with new literals is not, so a stream of
                # distinct literals does not churn the text cache.
                result = self._classify_new_text(sql, shape)
                self._by_text.put(key, result)
        return result

    def cache_sizes(self) -> tuple[int, int]:
        """Entries in the exact-text cache and in the shape cache."""
        return len(self._by_text), len(self._by_shape)

    def _classify_new_text(self, sql: str, shape) -> Classification:
        result = self.analyze(sql)
        # Only results that cannot depend on the literals' text are shared.
        if (shape is not None and result.session_replay is None and result.deallocate is None
                and result.reason != "unparseable"):
            self._by_shape.put(shape, result)
        return result

    def analyze(self, sql: str) -> Classification:
        """Classify without any cache (parse every time)."""
        try:
            raw = sql.encode("utf-8")
            if b"\x00" in raw:  # the wire protocol cannot carry it; libpg_query would truncate
                raise ValueError("NUL in query text")
            tree = json.loads(_pg.parse_sql_json(sql))
            route_id = "q_" + _pg.fingerprint(sql)[:8]
        except Exception:  # anything the parser rejects goes to the primary
            text_hash = hashlib.blake2b(sql.encode("utf-8", "surrogatepass"), digest_size=4).hexdigest()
            return Classification(False, "other", "unparseable", "q_" + text_hash, statement_count=0)
        stmts = tree.get("stmts", [])
        if not stmts:
            return Classification(False, "other", "empty", route_id, statement_count=0)
        try:
            verdicts = []
            replays = []
            for stmt in stmts:
                text = _statement_text(raw, stmt)
                verdict = self._analyzer.statement(stmt["stmt"], _first_word(text))
                verdicts.append(verdict)
                if verdict.replay:
                    replays.append(_trim(text))
            return _combine(verdicts, replays, route_id)
        except Exception:  # a tree shape this module does not expect: fail safe
            return Classification(False, "other", "classifier_error", route_id, statement_count=len(stmts))


def _statement_text(raw: bytes, stmt: dict) -> str:
    """The statement's own text; locations are byte offsets, stmt_len 0 = to the end."""
    start = stmt.get("stmt_location", 0)
    length = stmt.get("stmt_len", 0)
    return raw[start : start + length if length else len(raw)].decode("utf-8")


def _first_word(text: str) -> str:
    """The statement's first keyword (its text starts at its first token)."""
    word = _WORD.match(text)
    return word.group().lower() if word else ""


def _trim(text: str) -> str:
    """Drop leading/trailing comments and blanks, so that "; "-joining stays valid SQL."""
    tokens = [t for t in _pg.scan(text) if t.name not in ("SQL_COMMENT", "C_COMMENT")]
    if not tokens:
        return text.strip()
    return text[tokens[0].start : tokens[-1].end + 1]


def _combine(verdicts: list[_Verdict], replays: list[str], route_id: str) -> Classification:
    first = verdicts[0]
    session_replay = "; ".join(replays) if replays else None
    if len(verdicts) == 1:
        return Classification(
            first.replica_ok, first.operation, first.reason, route_id, first.tx, session_replay,
            first.discard_all, first.deallocate, first.pin_primary, 1,
        )  # fmt: skip
    replica_ok = all(v.replica_ok for v in verdicts)
    operations = {v.operation for v in verdicts}
    reasons = {v.reason for v in verdicts}
    if replica_ok:
        reason = first.reason if len(reasons) == 1 else "multi_statement_read"
    else:
        reason = "multi_statement_write" if "write" in operations else "multi_statement"
    # "read" only when every statement reads: session effects never hide behind "read".
    operation = "write" if "write" in operations else ("other" if "other" in operations else "read")
    tx = next((v.tx for v in verdicts if v.tx is not TxEffect.NONE), TxEffect.NONE)
    deallocations = [v.deallocate for v in verdicts if v.deallocate is not None]
    deallocate = "*" if "*" in deallocations else (deallocations[0] if deallocations else None)
    return Classification(
        replica_ok, operation, reason, route_id, tx, session_replay,
        any(v.discard_all for v in verdicts), deallocate,
        any(v.pin_primary for v in verdicts), len(verdicts),
    )  # fmt: skip
