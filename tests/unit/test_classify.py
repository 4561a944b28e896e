"""Statement classification (replica or primary, transaction and session effects)
and its two caches (exact text, literal-normalised shape)."""

import random
import re

import pytest

from clidash.proxy.pg.classify import Classification, Classifier, TxEffect
from clidash.proxy.pg.sqlnormalize import shape_key

USER_WRITING_FUNCTIONS = ["app.bump_counter", "Audit_Log"]
ASYNCPG_RESET = "SELECT pg_advisory_unlock_all();\nCLOSE ALL;\nUNLISTEN *;\nRESET ALL;"


def case(sql, replica_ok, reason, **fields):
    return pytest.param(sql, replica_ok, reason, fields, id=re.sub(r"\s+", " ", sql)[:70] or "<empty>")


READS = [
    case("SELECT 1", True, "select"),
    case("select * from t where id = 5", True, "select"),
    case("SELECT a FROM t UNION SELECT b FROM u", True, "select"),
    case("SELECT 1 INTERSECT SELECT 2 EXCEPT SELECT 3", True, "select"),
    case("SELECT * FROM (SELECT * FROM t) s", True, "select"),
    case("SELECT * FROM t WHERE x IN (SELECT y FROM u)", True, "select"),
    case("WITH x AS (SELECT 1) SELECT * FROM x", True, "select"),
    case("WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM r WHERE n < 5) SELECT * FROM r", True, "select"),
    case("SELECT * FROM generate_series(1, 10) AS g", True, "select"),
    case("SELECT count(*) FROM t GROUP BY x HAVING count(*) > 1 ORDER BY 1 LIMIT 10 OFFSET 5", True, "select"),
    case("SELECT now(), current_user, random(), lo_get(1)", True, "select"),
    case("SELECT pg_is_in_recovery(), pg_last_wal_replay_lsn()", True, "select"),
    case("SELECT * FROM t FOR READ ONLY", True, "select"),
    case("(SELECT 1)", True, "select"),
    case("SELECT 1 /*application='catalog',route='product_page'*/", True, "select"),
    case("SHOW search_path", True, "show"),
    case("SHOW ALL", True, "show"),
    case("EXPLAIN SELECT * FROM t", True, "explain"),
    case("EXPLAIN (ANALYZE false) SELECT 1", True, "explain"),
    case("EXPLAIN (ANALYZE off, COSTS off) SELECT 1", True, "explain"),
    case("EXPLAIN (ANALYZE 0) SELECT 1", True, "explain"),
    case("EXPLAIN (FORMAT JSON) WITH x AS (SELECT 1) SELECT * FROM x", True, "explain"),
    case("VALUES (1, 'a'), (2, 'b')", True, "values"),
    case("TABLE t", True, "table"),
    case("table public.t", True, "table"),
    case("COPY t TO STDOUT", True, "copy_to"),
    case("COPY t (a, b) TO STDOUT", True, "copy_to"),
    case("COPY (SELECT * FROM t WHERE x > 1) TO STDOUT WITH (FORMAT csv, HEADER)", True, "copy_to"),
    case("SELECT 1; SELECT 2", True, "select", statement_count=2),
    case("SELECT 1; SHOW search_path; TABLE t", True, "multi_statement_read", statement_count=3),
]

LEXICAL_TRAPS = [
    case("SELECT 'x; DELETE FROM t'", True, "select"),
    case("SELECT 1 -- ; DELETE FROM t", True, "select"),
    case("SELECT /* ; DELETE FROM t */ 1", True, "select"),
    case("/* it's a comment; DELETE FROM t */ SELECT 1", True, "select"),
    case("-- it's\nSELECT 1", True, "select"),
    case("/* nested /* comment */ DELETE FROM t */ SELECT 1", True, "select"),
    case("SELECT E'it\\'s; DELETE FROM t; --'", True, "select"),
    case("SELECT '\\'; DELETE FROM t; --'", False, "multi_statement_write", statement_count=2),
    case("SELECT $$ DELETE FROM t $$", True, "select"),
    case("SELECT $body$ it's; DELETE FROM t $body$", True, "select"),
    case('SELECT "weird;""DELETE" FROM t', True, "select"),
    case("SELECT 1 -- '\n; DELETE FROM t --'", False, "multi_statement_write", statement_count=2),
    case("SELECT 1, '\n; DELETE FROM t --'", True, "select"),
    case("SELECT '/*', 1; DELETE FROM t -- */", False, "multi_statement_write", statement_count=2),
    case("SELECT /*'*/ 1; DELETE FROM t --'", False, "multi_statement_write", statement_count=2),
    case("SELECT \"'\" FROM t; DELETE FROM t --'", False, "multi_statement_write", statement_count=2),
]

WRITES = [
    case("INSERT INTO t VALUES (1)", False, "write", operation="write"),
    case("UPDATE t SET a = 1 WHERE id = 2", False, "write"),
    case("DELETE FROM t", False, "write"),
    case("MERGE INTO t USING s ON t.id = s.id WHEN MATCHED THEN DELETE", False, "write"),
    case("INSERT INTO t VALUES (1) ON CONFLICT DO NOTHING RETURNING *", False, "write"),
    case("WITH x AS (SELECT 1) INSERT INTO t SELECT * FROM x", False, "write"),
    case("WITH d AS (DELETE FROM t RETURNING *) SELECT * FROM d", False, "writing_cte", operation="write"),
    case("SELECT * FROM (WITH d AS (DELETE FROM t RETURNING *) SELECT * FROM d) s", False, "writing_cte"),
    case("WITH a AS (SELECT 1), b AS (UPDATE t SET x = 1 RETURNING x) SELECT * FROM a", False, "writing_cte"),
    case("WITH x AS (WITH y AS (INSERT INTO t VALUES (1) RETURNING *) SELECT * FROM y) SELECT * FROM x", False, "writing_cte"),
    case("WITH m AS (MERGE INTO t USING s ON true WHEN MATCHED THEN DELETE RETURNING t.*) SELECT * FROM m", False, "writing_cte"),
    case("SELECT * FROM t FOR UPDATE", False, "locking_clause", operation="write"),
    case("SELECT * FROM t FOR NO KEY UPDATE", False, "locking_clause"),
    case("SELECT * FROM t FOR SHARE", False, "locking_clause"),
    case("SELECT * FROM t FOR KEY SHARE OF t SKIP LOCKED", False, "locking_clause"),
    case("SELECT * FROM t FOR UPDATE NOWAIT", False, "locking_clause"),
    case("SELECT * FROM (SELECT * FROM t FOR UPDATE) s", False, "locking_clause"),
    case("WITH x AS (SELECT * FROM t FOR SHARE) SELECT * FROM x", False, "locking_clause"),
    case("SELECT * FROM t WHERE id IN (SELECT id FROM u FOR UPDATE)", False, "locking_clause"),
    case("SELECT * INTO new_t FROM t", False, "select_into", pin_primary=False),
    case("SELECT * INTO TEMP tmp FROM t", False, "select_into", pin_primary=True),
    case("SELECT * INTO TEMPORARY TABLE tmp FROM t", False, "select_into", pin_primary=True),
]

WRITING_FUNCTIONS = [
    case("SELECT nextval('s')", False, "writing_function", operation="write"),
    case("SELECT public.nextval('s')", False, "writing_function"),
    case("SELECT PUBLIC.NEXTVAL('s')", False, "writing_function"),
    case("SELECT \"nextval\"('s')", False, "writing_function"),
    case("SELECT * FROM t WHERE id = (SELECT setval('s', 5))", False, "writing_function"),
    case("SELECT currval('s'), lastval()", False, "writing_function"),
    case("SELECT * FROM t WHERE coalesce(x, abs(nextval('s'))) > 0", False, "writing_function"),
    case("SELECT * FROM generate_series(1, nextval('s'))", False, "writing_function"),
    case("SELECT * FROM nextval('s')", False, "writing_function"),
    case("SELECT * FROM t JOIN LATERAL (SELECT setval('s', t.id)) x ON true", False, "writing_function"),
    case("SELECT pg_advisory_lock(1)", False, "writing_function"),
    case("SELECT pg_try_advisory_xact_lock_shared(1, 2)", False, "writing_function"),
    case("SELECT pg_advisory_unlock_all()", False, "writing_function"),
    case("SELECT pg_notify('ch', 'x')", False, "writing_function"),
    case("SELECT txid_current(), pg_current_xact_id()", False, "writing_function"),
    case("SELECT pg_current_wal_lsn()", False, "writing_function"),
    case("SELECT lo_create(0), lo_import('/tmp/x')", False, "writing_function"),
    case("SELECT pg_terminate_backend(123)", False, "writing_function"),
    case("SELECT pg_stat_reset_shared('bgwriter')", False, "writing_function"),
    case("SELECT pg_create_logical_replication_slot('s', 'pgoutput')", False, "writing_function"),
    case("SELECT dblink_exec('conn', 'DELETE FROM t')", False, "writing_function"),
    case("SELECT pg_promote()", False, "writing_function"),
    case("SELECT bump_counter(1)", False, "writing_function"),
    case("SELECT app.BUMP_COUNTER(1)", False, "writing_function"),
    case("SELECT other_schema.audit_log('x')", False, "writing_function"),
    case("SELECT a.bump_counter FROM accounts a", False, "writing_function"),
    case("VALUES (nextval('s'))", False, "writing_function"),
    case("COPY (SELECT nextval('s')) TO STDOUT", False, "writing_function"),
    case("SELECT set_config('app.tenant', '42', false)", False, "writing_function",
         session_replay="SELECT set_config('app.tenant', '42', false)", pin_primary=False),
    case("SELECT set_config('app.tenant', $1, false)", False, "writing_function",
         session_replay=None, pin_primary=True),  # nothing to replay it with: stay on the primary
    case("SELECT nextval($1)", False, "writing_function", session_replay=None, pin_primary=False),
]

DDL_AND_UTILITY = [
    case("CREATE TABLE t (a int)", False, "ddl", operation="write", pin_primary=False),
    case("CREATE TEMP TABLE x (a int)", False, "ddl", pin_primary=True),
    case("CREATE TEMPORARY TABLE x AS SELECT 1", False, "ddl", pin_primary=True),
    case("CREATE TEMP VIEW v AS SELECT 1", False, "ddl", pin_primary=True),
    case("CREATE TEMP SEQUENCE s", False, "ddl", pin_primary=True),
    case("CREATE TABLE pg_temp.x (a int)", False, "ddl", pin_primary=True),
    case("CREATE UNLOGGED TABLE u (a int)", False, "ddl", pin_primary=False),
    case("CREATE TABLE x AS SELECT 1", False, "ddl", pin_primary=False),
    case("ALTER TABLE t ADD COLUMN b int", False, "ddl"),
    case("DROP TABLE t", False, "ddl"),
    case("TRUNCATE t", False, "ddl"),
    case("COMMENT ON TABLE t IS 'x'", False, "ddl"),
    case("GRANT SELECT ON t TO u", False, "ddl"),
    case("REVOKE SELECT ON t FROM u", False, "ddl"),
    case("REINDEX TABLE t", False, "ddl"),
    case("CLUSTER t USING t_pkey", False, "ddl"),
    case("VACUUM (ANALYZE) t", False, "ddl"),
    case("ANALYZE t", False, "ddl"),
    case("CHECKPOINT", False, "ddl"),
    case("REFRESH MATERIALIZED VIEW mv", False, "ddl"),
    case("CREATE INDEX CONCURRENTLY i ON t (a)", False, "ddl"),
    case("CREATE FUNCTION f() RETURNS int LANGUAGE sql AS $$ SELECT 1 $$", False, "ddl"),
    case("ALTER SYSTEM SET work_mem = '64MB'", False, "ddl"),
    case("LOAD 'auto_explain'", False, "ddl"),
    case("LOCK TABLE t IN ACCESS EXCLUSIVE MODE", False, "lock", operation="write"),
    case("LISTEN ch", False, "listen", pin_primary=True, operation="other"),
    case("UNLISTEN *", False, "unlisten", pin_primary=False),
    case("NOTIFY ch, 'x'", False, "notify"),
    case("CALL p(1)", False, "call"),
    case("DO $$ BEGIN PERFORM 1; END $$", False, "do"),
    case("PREPARE p AS SELECT 1", False, "prepare"),
    case("EXECUTE p", False, "execute"),
    case("DEALLOCATE p", False, "deallocate", deallocate="p"),
    case('DEALLOCATE PREPARE "MixedCase"', False, "deallocate", deallocate="MixedCase"),
    case("DEALLOCATE ALL", False, "deallocate", deallocate="*"),
    case("DECLARE c CURSOR FOR SELECT 1", False, "declare_cursor", pin_primary=False),
    case("DECLARE c CURSOR WITH HOLD FOR SELECT 1", False, "declare_cursor", pin_primary=True),
    case("FETCH 10 FROM c", False, "fetch"),
    case("MOVE NEXT IN c", False, "fetch"),
    case("CLOSE c", False, "close"),
    case("CLOSE ALL", False, "close"),
    case("DISCARD ALL", False, "discard", discard_all=True),
    case("DISCARD TEMP", False, "discard", discard_all=False),
    case("DISCARD PLANS", False, "discard", discard_all=False),
    case("COPY t FROM STDIN", False, "copy_from", operation="write"),
    case("COPY t FROM '/tmp/x'", False, "copy_from"),
    case("COPY t TO '/tmp/x'", False, "copy_to_file"),
    case("COPY t TO PROGRAM 'gzip > /tmp/x'", False, "copy_to_file"),
    case("COPY (SELECT 1) TO '/tmp/x'", False, "copy_to_file"),
    case("COPY (DELETE FROM t RETURNING *) TO STDOUT", False, "write"),
    case("COPY (SELECT * FROM t FOR UPDATE) TO STDOUT", False, "locking_clause"),
]

EXPLAIN = [
    case("EXPLAIN ANALYZE SELECT 1", False, "explain_analyze", operation="read"),
    case("EXPLAIN ANALYZE DELETE FROM t", False, "explain_analyze", operation="write"),
    case("EXPLAIN (ANALYZE) SELECT 1", False, "explain_analyze"),
    case("EXPLAIN (ANALYZE true) SELECT 1", False, "explain_analyze"),
    case("EXPLAIN (ANALYZE on) SELECT 1", False, "explain_analyze"),
    case("EXPLAIN (ANALYZE 1) SELECT 1", False, "explain_analyze"),
    case("EXPLAIN (BUFFERS, ANALYZE) SELECT 1", False, "explain_analyze"),
    case("EXPLAIN ANALYZE VERBOSE SELECT 1", False, "explain_analyze"),
    case("EXPLAIN ANALYZE CREATE TEMP TABLE x AS SELECT 1", False, "explain_analyze", pin_primary=True),
    case("EXPLAIN DELETE FROM t", False, "explain_non_read"),
    case("EXPLAIN SELECT nextval('s')", False, "explain_non_read"),
    case("EXPLAIN SELECT * FROM t FOR UPDATE", False, "explain_non_read"),
    case("EXPLAIN EXECUTE p", False, "explain_non_read"),
]

TRANSACTIONS = [
    case("BEGIN", False, "transaction", tx=TxEffect.BEGIN, operation="other"),
    case("BEGIN READ ONLY", False, "transaction", tx=TxEffect.BEGIN_READ_ONLY),
    case("BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY", False, "transaction", tx=TxEffect.BEGIN_READ_ONLY),
    case("START TRANSACTION READ ONLY", False, "transaction", tx=TxEffect.BEGIN_READ_ONLY),
    case("START TRANSACTION ISOLATION LEVEL SERIALIZABLE READ ONLY DEFERRABLE", False, "transaction",
         tx=TxEffect.BEGIN_READ_ONLY),
    case("BEGIN READ WRITE", False, "transaction", tx=TxEffect.BEGIN),
    case("BEGIN TRANSACTION ISOLATION LEVEL SERIALIZABLE", False, "transaction", tx=TxEffect.BEGIN),
    case("COMMIT", False, "transaction", tx=TxEffect.COMMIT),
    case("END", False, "transaction", tx=TxEffect.COMMIT),
    case("COMMIT TRANSACTION", False, "transaction", tx=TxEffect.COMMIT),
    case("ROLLBACK", False, "transaction", tx=TxEffect.ROLLBACK),
    case("ABORT", False, "transaction", tx=TxEffect.ROLLBACK),
    case("COMMIT AND CHAIN", False, "transaction", tx=TxEffect.COMMIT_AND_CHAIN),
    case("ROLLBACK AND CHAIN", False, "transaction", tx=TxEffect.ROLLBACK_AND_CHAIN),
    case("SAVEPOINT sp", False, "transaction", tx=TxEffect.SAVEPOINT_ETC),
    case("RELEASE SAVEPOINT sp", False, "transaction", tx=TxEffect.SAVEPOINT_ETC),
    case("ROLLBACK TO SAVEPOINT sp", False, "transaction", tx=TxEffect.SAVEPOINT_ETC),
    case("PREPARE TRANSACTION 'gid'", False, "transaction", tx=TxEffect.PREPARE_TRANSACTION),
    case("COMMIT PREPARED 'gid'", False, "two_phase", tx=TxEffect.NONE),
    case("ROLLBACK PREPARED 'gid'", False, "two_phase", tx=TxEffect.NONE),
    case("SET TRANSACTION READ ONLY", False, "transaction", tx=TxEffect.SET_READ_ONLY, session_replay=None),
    case("SET TRANSACTION ISOLATION LEVEL SERIALIZABLE, READ ONLY", False, "transaction", tx=TxEffect.SET_READ_ONLY),
    case("SET TRANSACTION READ WRITE", False, "transaction", tx=TxEffect.NONE),
    case("SET transaction_read_only = on", False, "transaction", tx=TxEffect.SET_READ_ONLY, session_replay=None),
    case("SET transaction_read_only = true", False, "transaction", tx=TxEffect.SET_READ_ONLY),
    case("SET transaction_read_only = 1", False, "transaction", tx=TxEffect.SET_READ_ONLY),
    case("SET transaction_read_only = 'on'", False, "transaction", tx=TxEffect.SET_READ_ONLY),
    case("SET transaction_read_only TO 'yes'", False, "transaction", tx=TxEffect.SET_READ_ONLY),
    case("SET LOCAL transaction_read_only = on", False, "transaction", tx=TxEffect.SET_READ_ONLY),
    case("SET transaction_read_only = off", False, "transaction", tx=TxEffect.NONE),
    case("SET transaction_read_only = 0", False, "transaction", tx=TxEffect.NONE),
    case("SET transaction_read_only = 'false'", False, "transaction", tx=TxEffect.NONE),
    case("SET transaction_read_only TO DEFAULT", False, "transaction", tx=TxEffect.NONE),
    case("SET TRANSACTION SNAPSHOT '00000003-0000001B-1'", False, "transaction", tx=TxEffect.NONE),
    case("SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY", False, "session_set", tx=TxEffect.NONE,
         session_replay="SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY"),
    case("SET default_transaction_read_only = on", False, "session_set", tx=TxEffect.NONE,
         session_replay="SET default_transaction_read_only = on"),
]

SESSION = [
    case("SET search_path = app", False, "session_set", session_replay="SET search_path = app", operation="other"),
    case("SET search_path TO app, public;", False, "session_set", session_replay="SET search_path TO app, public"),
    case("SET LOCAL search_path = app", False, "session_set", session_replay=None),
    case("RESET ALL", False, "session_set", session_replay="RESET ALL"),
    case("RESET search_path", False, "session_set", session_replay="RESET search_path"),
    case("SET ROLE reporting", False, "session_set", session_replay="SET ROLE reporting"),
    case("RESET ROLE", False, "session_set", session_replay="RESET ROLE"),
    case("SET SESSION AUTHORIZATION 'u'", False, "session_set", session_replay="SET SESSION AUTHORIZATION 'u'"),
    case("SET TIME ZONE 'UTC'", False, "session_set", session_replay="SET TIME ZONE 'UTC'"),
    case("SET statement_timeout = 5000", False, "session_set", session_replay="SET statement_timeout = 5000"),
    case("SET search_path = app /* c */ -- trailing", False, "session_set", session_replay="SET search_path = app"),
    case("/* lead */ SET search_path = app", False, "session_set", session_replay="SET search_path = app"),
    case("SET application_name = 'café'", False, "session_set", session_replay="SET application_name = 'café'"),
    case("SET a.b = 1 -- one\n; SET LOCAL c.d = 2; SET e.f TO 'é'", False, "multi_statement",
         session_replay="SET a.b = 1; SET e.f TO 'é'", statement_count=3),
]

MULTI_AND_EDGES = [
    case("SELECT 1; DELETE FROM t", False, "multi_statement_write", statement_count=2, operation="write"),
    case(ASYNCPG_RESET, False, "multi_statement_write", session_replay="RESET ALL", statement_count=4),
    case("BEGIN; SELECT 1; COMMIT", False, "multi_statement", tx=TxEffect.BEGIN, statement_count=3),
    case("SET search_path = app; SELECT 1", False, "multi_statement", operation="other",
         session_replay="SET search_path = app"),
    case("DECLARE c CURSOR WITH HOLD FOR SELECT 1; FETCH ALL FROM c", False, "multi_statement",
         operation="other", pin_primary=True),
    case("SELECT 1; BEGIN READ ONLY", False, "multi_statement", tx=TxEffect.BEGIN_READ_ONLY),
    case("SELECT 1; CREATE TEMP TABLE x (a int)", False, "multi_statement_write", pin_primary=True),
    case("DISCARD ALL; DEALLOCATE a", False, "multi_statement", discard_all=True, deallocate="a"),
    case("DEALLOCATE a; DEALLOCATE ALL", False, "multi_statement", deallocate="*"),
    case("", False, "empty", statement_count=0, operation="other"),
    case("   \n", False, "empty", statement_count=0),
    case(";", False, "empty", statement_count=0),
    case("-- only a comment", False, "empty", statement_count=0),
    case("garbage text here", False, "unparseable", statement_count=0),
    case("SELECT FROM WHERE", False, "unparseable"),
    case("SELECT 'unterminated", False, "unparseable"),
    case("SELECT 1 /* unterminated", False, "unparseable"),
    case("DELETE FROM t WHERE", False, "unparseable"),
    case("SELECT 1; DELETE FROM", False, "unparseable"),
    case("SELECT \x00 1", False, "unparseable"),
    case("SELECT '\udc80'", False, "unparseable"),
]

ALL_CASES = (
    READS + LEXICAL_TRAPS + WRITES + WRITING_FUNCTIONS + DDL_AND_UTILITY + EXPLAIN + TRANSACTIONS + SESSION
    + MULTI_AND_EDGES
)


@pytest.fixture(scope="module")
def classifier():
    return Classifier(writing_functions=USER_WRITING_FUNCTIONS)


def check(result: Classification, replica_ok, reason, fields):
    assert (result.replica_ok, result.reason) == (replica_ok, reason)
    for name, expected in fields.items():
        assert getattr(result, name) == expected, name
    assert re.fullmatch(r"q_[0-9a-f]{8}", result.route_id)
    assert result.operation in ("read", "write", "other")
    if result.session_replay or result.pin_primary or result.discard_all or result.deallocate:
        assert result.operation != "read"  # the proxy applies session effects of non-reads only
    if result.replica_ok:
        assert result.operation == "read" and result.tx is TxEffect.NONE and result.session_replay is None
        assert not result.pin_primary and not result.discard_all and result.deallocate is None


@pytest.mark.parametrize("sql, replica_ok, reason, fields", ALL_CASES)
def test_classification(classifier, sql, replica_ok, reason, fields):
    check(classifier.classify(sql), replica_ok, reason, fields)
    check(classifier.classify(sql), replica_ok, reason, fields)  # now from the exact-text cache


def test_the_table_is_large():
    assert len(ALL_CASES) >= 100


def test_defaults_for_a_plain_read(classifier):
    result = classifier.classify("SELECT 1")
    assert result.tx is TxEffect.NONE and result.session_replay is None and result.statement_count == 1
    assert not result.discard_all and not result.pin_primary and result.deallocate is None


def test_warm_caches_agree_with_a_fresh_parse():
    warm = Classifier(writing_functions=USER_WRITING_FUNCTIONS)
    texts = [p.values[0] for p in ALL_CASES]
    for sql in texts + texts:
        warm.classify(sql)
    fresh = Classifier(writing_functions=USER_WRITING_FUNCTIONS, cache_size=0)
    for sql in texts:
        assert warm.classify(sql) == fresh.classify(sql) == fresh.analyze(sql), sql


def test_route_id_is_the_fingerprint_or_a_text_hash(classifier):
    assert classifier.classify("SELECT 1").route_id == "q_50fde206"
    first = classifier.classify("garbage one").route_id
    assert first == Classifier().classify("garbage one").route_id  # stable across instances
    assert first != classifier.classify("garbage two").route_id


# -- the caches -----------------------------------------------------------------


def counting_analyze(classifier: Classifier) -> list:
    calls = []
    real = classifier.analyze

    def analyze(sql):
        calls.append(sql)
        return real(sql)

    classifier.analyze = analyze
    return calls


def test_same_shape_different_literals_shares_one_parse():
    classifier = Classifier()
    calls = counting_analyze(classifier)
    results = [
        classifier.classify(f"SELECT abalance FROM pgbench_accounts WHERE aid = {aid};")
        for aid in (1, 12345, 999999999, 42)
    ]
    assert len(calls) == 1
    assert all(r == results[0] for r in results)
    assert results[0].route_id == Classifier().analyze("SELECT abalance FROM pgbench_accounts WHERE aid = 7;").route_id


@pytest.mark.parametrize("variants", [
    ["SELECT * FROM t WHERE name = 'alice' AND age > 30", "SELECT * FROM t WHERE name = 'o''brien' AND age > 7",
     "SELECT * FROM t WHERE name = '; DELETE FROM t; --' AND age > 0"],
    ["UPDATE t SET v = 1.5 WHERE id = 3", "UPDATE t SET v = 200.25 WHERE id = 123456789"],
    ["SELECT 1 /*traceparent='00-aaa-01'*/", "SELECT 2 /*traceparent='00-bbb-01'*/"],
    ["SELECT x FROM t -- request 1\nWHERE id = 1", "SELECT x FROM t -- it's request 2\nWHERE id = 2"],
    ["INSERT INTO t (a, b) VALUES (1, 'x') RETURNING id", "INSERT INTO t (a, b) VALUES (2, 'y') RETURNING id"],
    ["SELECT * FROM t WHERE id = ANY(ARRAY[1, 2, 3])", "SELECT * FROM t WHERE id = ANY(ARRAY[1, 5, 9])"],
    ["SELECT nextval('a')", "SELECT nextval('b')"],
    ["SELECT * FROM t WHERE d > date '2020-01-01' - interval '3 days'",
     "SELECT * FROM t WHERE d > date '2021-06-30' - interval '1 hour'"],
])
def test_literal_variants_share_a_shape(variants):
    keys = {shape_key(sql) for sql in variants}
    assert len(keys) == 1 and None not in keys
    fresh = Classifier(cache_size=0)
    assert len({fresh.analyze(sql) for sql in variants}) == 1


@pytest.mark.parametrize("first, second", [
    # literals that change the meaning: never shape-keyed
    ("SET transaction_read_only = 'on'", "SET transaction_read_only = 'off'"),
    ("SET default_transaction_read_only = 'on'", "SET default_transaction_read_only = 'off'"),
    ("EXPLAIN (ANALYZE 1) SELECT 1", "EXPLAIN (ANALYZE 0) SELECT 1"),
    ("BEGIN; SET TRANSACTION READ ONLY", "BEGIN; SET TRANSACTION READ WRITE"),
    ("SELECT set_config('a.b', 'x', false)", "SELECT set_config('a.b', 'y', false)"),
    # a quote or a semicolon inside a string, a comment, an identifier, an E'' or $$ string
    ("SELECT 1, '\n; DELETE FROM t --'", "SELECT 1 -- '\n; DELETE FROM t --'"),
    ("SELECT '/*', 1; DELETE FROM t -- */", "SELECT /*'*/ 1; DELETE FROM t --'"),
    ("SELECT E'\\'; DELETE FROM t; --'", "SELECT '\\'; DELETE FROM t; --'"),
    ("SELECT $a$ '; DELETE FROM t; ' $a$", "SELECT $a$ 'x'; DELETE FROM t; ' $a$"),
    ("/* /* */ DELETE FROM t */ SELECT 1", "/* */ DELETE FROM t */ SELECT 1"),
    ("SELECT \"'\" FROM t; DELETE FROM t --'", "SELECT '\"' FROM t; DELETE FROM t --\""),
    # same characters, different token classes
    ("SELECT x::varchar(10)", "SELECT x::varchar(1.5)"),
    ("SELECT x::int[3]", "SELECT x::int[4]"),
    ("SELECT current_timestamp(3)", "SELECT current_timestamp(4)"),
    ("SELECT 1::float(5)", "SELECT 1::float(0)"),
    ("SELECT 'a'\n'b'", "SELECT 'a' 'b'"),
    ("SELECT 'a' -- c\n'b'", "SELECT 'a' /* c */\n'b'"),
])
def test_look_alike_texts_are_classified_on_their_own(first, second):
    warm = Classifier()
    fresh = Classifier(cache_size=0)
    for sql in (first, second, first, second):
        assert warm.classify(sql) == fresh.analyze(sql), sql


def test_look_alike_pairs_really_differ():
    # The pairs above are only a test if the texts mean different things.
    assert Classifier().classify("SELECT 1::float(0)").reason == "unparseable"
    assert Classifier().classify("SELECT 1::float(5)").reason == "select"
    assert Classifier().classify("SELECT 'a' 'b'").reason == "unparseable"
    assert Classifier().classify("SELECT 'a'\n'b'").reason == "select"
    assert Classifier().classify("SELECT x::int[3]").route_id != Classifier().classify("SELECT x::int[4]").route_id


@pytest.mark.parametrize("sql", [
    "SET search_path = app", "RESET ALL", "SHOW x", "EXPLAIN SELECT 1", "BEGIN", "START TRANSACTION",
    "SELECT 1; SELECT 2", "SELECT E'\\n'", "SELECT '\\'", "SELECT $$x$$", "SELECT $1x",
    "/* a /* b */ */ SELECT 1", "SELECT 'unterminated", "SELECT \"unterminated", "SELECT 1 /* open",
    "SELECT U&'d!0061t' UESCAPE '!'", "SELECT \x00", "SELECT '\udc80'", "DEALLOCATE p", "COPY t TO STDOUT",
])
def test_shape_key_bails_out_when_unsure(sql):
    assert shape_key(sql) is None


def test_shape_key_keeps_identifiers_and_odd_numbers_verbatim():
    key = shape_key('SELECT t1.c2, "q""1", 1e5, 0x1f, 1_000, 12345678901, a$1, $1, E\'x\' FROM t')
    for kept in ("t1.c2", '"q""1"', "1e5", "0x1f", "1_000", "12345678901", "a$1", "$1", "E'x'"):
        assert kept in key


def test_caches_stay_bounded():
    classifier = Classifier(cache_size=50)
    for i in range(400):
        classifier.classify(f"SELECT {i}")  # one shape, many texts
        classifier.classify(f"SELECT c{i} FROM t WHERE id = {i}")  # many shapes
        classifier.classify(f"SET application_name = 'n{i}'")  # exact-text only
    exact, shapes = classifier.cache_sizes()
    assert exact == 50 and shapes == 50
    assert classifier.classify("SELECT 3").reason == "select"


def test_cache_size_zero_disables_caching():
    classifier = Classifier(cache_size=0)
    calls = counting_analyze(classifier)
    classifier.classify("SELECT 1")
    classifier.classify("SELECT 1")
    assert len(calls) == 2 and classifier.cache_sizes() == (0, 0)


def test_long_texts_are_cached_by_digest():
    classifier = Classifier()
    calls = counting_analyze(classifier)
    values = ", ".join(f"({i}, 'v{i}')" for i in range(500))
    sql = f"INSERT INTO t (a, b) VALUES {values}"
    assert classifier.classify(sql).reason == "write"
    assert classifier.classify(sql).reason == "write"
    assert classifier.classify(sql.replace("'v1'", "'w1'")).reason == "write"  # same shape
    assert len(calls) == 1


# -- randomised checks of the shape key's promise -------------------------------
# Texts that share a shape key must parse alike and classify alike (route_id too).


def assert_groups_classify_alike(texts) -> int:
    groups: dict[str, list[str]] = {}
    for sql in dict.fromkeys(texts):
        key = shape_key(sql)
        if key is not None:
            groups.setdefault(key, []).append(sql)
    fresh = Classifier(cache_size=0)
    compared = 0
    for members in groups.values():
        results = [fresh.analyze(sql) for sql in members]
        assert len({r.reason == "unparseable" for r in results}) == 1, members  # all parse or none does
        if results[0].reason != "unparseable":
            assert len(set(results)) == 1, members
            compared += len(results) - 1
    return compared


TEMPLATES = [
    "SELECT * FROM t WHERE id = {} AND name = {}", "SELECT {}::varchar({})", "SELECT x::numeric({}, {})",
    "SELECT {}::float({})", "SELECT current_timestamp({})", "SELECT localtime /* p */ ({})", "SELECT x::int[{}]",
    "SELECT a[{}:{}] FROM t", "SELECT * FROM t LIMIT {} OFFSET {}", "SELECT * FROM t FETCH FIRST {} ROWS ONLY",
    "SELECT interval {} second({})", "SELECT {} {}", "SELECT {}\n{}", "SELECT {} -- c\n{}", "SELECT {} /* c */ {}",
    "SELECT {}{}", "SELECT {}abc", "SELECT {}.{}", "INSERT INTO t VALUES ({}, {}) RETURNING *",
    "UPDATE t SET a = {} WHERE b = {}", "SELECT nextval({})", "SELECT * FROM t WHERE x IN ({}, {}, {})",
    "SELECT {}::timestamp({})", "SELECT ARRAY[{}, {}]", "WITH c AS (SELECT {} AS v) SELECT v FROM c",
    "VALUES ({}), ({})", "SELECT x FROM t WHERE y LIKE {} ESCAPE {}", "SELECT x::bit({})", "SELECT x::char({})",
    "SELECT x::interval({})", "SELECT x FROM t TABLESAMPLE SYSTEM ({}) REPEATABLE ({})", "SELECT * FROM t ORDER BY {}",
    "SELECT x::decimal({})", "SELECT -{}", "SELECT {}::int", "SELECT U&{}", "SELECT B{}", "SELECT E{}",
    "SELECT * FROM t WHERE ts AT TIME ZONE {} > {}", "SELECT x::varchar ( {} )", "SELECT extract({} FROM now())",
    "SELECT substring(x FROM {} FOR {})", "SELECT CASE WHEN x = {} THEN {} ELSE {} END FROM t",
    "SELECT x FROM t WINDOW w AS (ORDER BY x ROWS BETWEEN {} PRECEDING AND {} FOLLOWING)",
    "SELECT {} OPERATOR(pg_catalog.+) {}", "SELECT json_value({}, {} RETURNING varchar({}))",
    "SELECT * FROM json_table({}, {} COLUMNS (a int PATH {}))", "SELECT x FROM t FOR UPDATE SKIP LOCKED LIMIT {}",
    "SELECT date {} + {}", "SELECT {}::int[{}]", "SELECT x FROM t GROUP BY GROUPING SETS (({}), ({}))",
    "MERGE INTO t USING s ON t.id = {} WHEN MATCHED THEN UPDATE SET v = {}", "DELETE FROM t WHERE id = {}",
    "SELECT * FROM t WHERE x = ${}", "SELECT {}::float8, float({})",
]
LITERALS = [
    "0", "1", "5", "24", "25", "53", "54", "999999999", "2147483647", "2147483648", "99999999999", "1.5", "0.0",
    "10.25", "'a'", "''", "'it''s'", "'1'", "'; DELETE FROM t'", "'--'", "'/*'", "'x y'", "'2020-01-01'",
    "'1 day'", "'$.a'", "'UTC'", "'s'",
]


def test_literal_variants_of_templates_classify_alike():
    rng = random.Random(7)
    texts = [
        template.format(*(rng.choice(LITERALS) for _ in range(template.count("{}"))))
        for template in TEMPLATES
        for _ in range(60)
    ]
    assert assert_groups_classify_alike(texts) > 500


FUZZ_TOKENS = [
    "1", "42", "123456789", "1.5", "0.25", "12345678901", "'a'", "'it''s'", "''", "'--'", "';'", "x", "t1",
    "(", ")", ",", "+", "-", "[", "]", "::int", "::float", "::varchar", "--c\n", "/*c*/", "E", "B", "'101'",
    ";", "FROM", "t", "WHERE", "=", "\n", ".", "$1", '"q"', "*", ":", "1e5", "AS", "interval", "current_time",
    "ARRAY", "nextval", "FOR UPDATE", "DELETE", "e'x'",
]


def test_random_token_soup_with_one_key_classifies_alike():
    rng = random.Random(20240601)
    texts = []
    for _ in range(4000):
        body = "".join(rng.choice(FUZZ_TOKENS) + rng.choice(("", " ", " ", "\n")) for _ in range(rng.randint(1, 6)))
        texts.append(rng.choice(("SELECT ", "select ", "WITH ", "VALUES ")) + body)
    assert assert_groups_classify_alike(texts) > 20


def test_simple_shape_key_fast_path_agrees_with_the_full_scan():
    """Texts whose only literals are numbers take a one-substitution fast path;
    wherever it answers, it must give exactly the full scan's key."""
    import random

    from clidash.proxy.pg.sqlnormalize import _full_shape_key, _simple_shape_key

    rng = random.Random(7)
    pieces = ["SELECT", "select", " ", "  ", "\n", "a", "t1", "x_2", "1", "42", "007", "3.14", "1.5.3",
              "1234567890", "12345678901", ".", ",", "(", ")", "=", "<", "+", "*", "1e5", "e", ";", "FROM",
              "WHERE", "$", "[", "'", "-", "/", "float", "values", "WITH", "\t", "abc1.2"]
    answered = 0
    for _ in range(20000):
        text = "".join(rng.choice(pieces) for _ in range(rng.randint(1, 12)))
        if rng.random() < 0.7:
            text = "SELECT " + text
        fast = _simple_shape_key(text)
        if fast is not None:
            answered += 1
            assert fast == _full_shape_key(text), text
    assert answered > 2000
