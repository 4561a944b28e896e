"""Routing table: statement (+ session state, mode, replica states) -> target.

Classification and routing are pure, so each row states a rule of DESIGN.md
section 4 and the issue: where that statement must run.
"""
import pytest

from clidash.policy import ModeSpec
from clidash.proxy.pg.classify import Classifier, TxEffect
from clidash.proxy.routing import PRIMARY, ReplicaView, SessionView, route

CLASSIFIER = Classifier(writing_functions=["audit.log_access"])
R = 0  # the first replica
P = PRIMARY


def target_for(sql, mode="EVENTUAL", session=SessionView(), replicas=None):
    cls = CLASSIFIER.classify(sql)
    replica_ok, reason = cls.replica_ok, cls.reason
    if cls.tx is TxEffect.BEGIN_READ_ONLY:        # as the client session does
        replica_ok, reason = True, "read_only_transaction"
    if replicas is None:
        replicas = [ReplicaView("replica-1")]
    return route(replica_ok, reason, session, ModeSpec.parse(mode), replicas)


READS = [
    "SELECT 1",
    "select * from accounts where id = 42",
    "SELECT a.id, b.name FROM a JOIN b ON a.id = b.a_id WHERE b.x > 3 ORDER BY 1 LIMIT 10",
    "SELECT count(*) FROM orders GROUP BY status HAVING count(*) > 1",
    "SELECT * FROM t1 UNION SELECT * FROM t2",
    "SELECT * FROM t1 INTERSECT SELECT * FROM t2",
    "SELECT * FROM t1 EXCEPT ALL SELECT * FROM t2",
    "WITH x AS (SELECT 1 AS a) SELECT a FROM x",
    "WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM r WHERE n < 5) SELECT * FROM r",
    "SELECT * FROM generate_series(1, 10)",
    "SELECT now(), current_user, version()",
    "SELECT * FROM t WHERE id IN (SELECT id FROM u)",
    "SELECT EXISTS (SELECT 1 FROM t WHERE x = 'a''b')",
    "SHOW search_path",
    "SHOW ALL",
    "EXPLAIN SELECT * FROM t",
    "EXPLAIN (FORMAT JSON) SELECT * FROM t",
    "EXPLAIN (ANALYZE false) SELECT * FROM t",
    "VALUES (1, 'a'), (2, 'b')",
    "TABLE accounts",
    "COPY accounts TO STDOUT",
    "COPY (SELECT * FROM accounts) TO STDOUT WITH (FORMAT csv)",
    "SELECT 1; SELECT 2",
    "/* leading comment */ SELECT 1",
    "SELECT 1 -- trailing ; DELETE FROM t",
    "SELECT '; DELETE FROM t' AS s",
    "SELECT $$ DELETE FROM t $$",
    "SELECT * FROM t /*application='catalog',route='product_page'*/",
    "SELECT pg_is_in_recovery(), inet_server_port()",
    "SELECT lower(name) FROM users",
    "SELECT currval_like_name FROM t",
    "SELECT jsonb_build_object('a', 1)",
]

WRITES = [
    "INSERT INTO t VALUES (1)",
    "INSERT INTO t SELECT * FROM u",
    "UPDATE t SET x = 1 WHERE id = 2",
    "DELETE FROM t WHERE id = 3",
    "MERGE INTO t USING u ON t.id = u.id WHEN MATCHED THEN UPDATE SET x = u.x",
    "INSERT INTO t VALUES (1) ON CONFLICT DO NOTHING",
    "CREATE TABLE z (a int)",
    "ALTER TABLE z ADD COLUMN b int",
    "DROP TABLE z",
    "TRUNCATE t",
    "CREATE INDEX ON t (x)",
    "GRANT SELECT ON t TO someone",
    "COMMENT ON TABLE t IS 'x'",
    "VACUUM t",
    "ANALYZE t",
    "REFRESH MATERIALIZED VIEW mv",
    "CHECKPOINT",
    "COPY t FROM STDIN",
    "COPY t TO '/tmp/out.csv'",
    "COPY (DELETE FROM t RETURNING *) TO STDOUT",
    "SELECT * FROM t FOR UPDATE",
    "SELECT * FROM t FOR NO KEY UPDATE",
    "SELECT * FROM t FOR SHARE",
    "SELECT * FROM t FOR KEY SHARE SKIP LOCKED",
    "SELECT * FROM (SELECT * FROM t FOR UPDATE) s",
    "WITH x AS (SELECT * FROM t FOR UPDATE) SELECT * FROM x",
    "WITH d AS (DELETE FROM t RETURNING *) SELECT * FROM d",
    "WITH i AS (INSERT INTO t VALUES (1) RETURNING id) SELECT id FROM i",
    "SELECT * FROM (WITH u AS (UPDATE t SET x = 1 RETURNING *) SELECT * FROM u) s",
    "SELECT * INTO new_table FROM t",
    "SELECT nextval('seq')",
    "SELECT setval('seq', 10)",
    "SELECT public.nextval('seq')",
    "SELECT * FROM t WHERE id = (SELECT setval('s', 1))",
    "SELECT pg_advisory_lock(1)",
    "SELECT pg_try_advisory_xact_lock(1)",
    "SELECT pg_advisory_unlock_all()",
    "SELECT set_config('app.tenant', '42', false)",
    "SELECT pg_notify('ch', 'x')",
    "SELECT txid_current()",
    "SELECT lo_create(0)",
    "SELECT audit.log_access(1)",
    "SELECT log_access(1)",
    "LISTEN ch",
    "NOTIFY ch, 'x'",
    "UNLISTEN *",
    "LOCK TABLE t IN ACCESS EXCLUSIVE MODE",
    "CALL do_things()",
    "DO $$ BEGIN PERFORM 1; END $$",
    "PREPARE q AS SELECT 1",
    "EXECUTE q",
    "DEALLOCATE q",
    "SELECT 1; DELETE FROM t",
    "SELECT 1; INSERT INTO t VALUES (1); SELECT 2",
    "EXPLAIN ANALYZE SELECT * FROM t",
    "EXPLAIN (ANALYZE) SELECT * FROM t",
    "EXPLAIN (ANALYZE true, BUFFERS) SELECT * FROM t",
    "EXPLAIN DELETE FROM t",
    "/* nested /* comment */ DELETE FROM t */ DELETE FROM t",
    "SELEC 1",
    "this is not sql",
    "",
    "SET search_path = app",
    "RESET ALL",
    "DISCARD ALL",
    "SELECT pg_advisory_unlock_all();\nCLOSE ALL;\nUNLISTEN *;\nRESET ALL;",
    "CREATE TEMP TABLE tt (a int)",
    "DECLARE c CURSOR WITH HOLD FOR SELECT 1",
    "FETCH 10 FROM c",
    "BEGIN",
    "START TRANSACTION ISOLATION LEVEL SERIALIZABLE",
    "COMMIT",
    "ROLLBACK",
]


@pytest.mark.parametrize("sql", READS)
def test_reads_go_to_a_replica_in_eventual_mode(sql):
    assert target_for(sql) == (R, "replica")


@pytest.mark.parametrize("sql", READS)
def test_reads_go_to_the_primary_in_strong_mode(sql):
    assert target_for(sql, mode="STRONG") == (P, "mode_strong")


@pytest.mark.parametrize("sql", WRITES)
def test_non_reads_always_go_to_the_primary(sql):
    target, _reason = target_for(sql)
    assert target == P


def test_table_is_big_enough():
    assert len(READS) + len(WRITES) >= 80


@pytest.mark.parametrize("sql", ["BEGIN READ ONLY", "START TRANSACTION READ ONLY",
                                 "BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY"])
def test_read_only_transactions_may_start_on_a_replica(sql):
    assert target_for(sql) == (R, "replica")
    assert target_for(sql, mode="STRONG")[0] == P


@pytest.mark.parametrize("sql", ["BEGIN READ WRITE", "BEGIN", "START TRANSACTION"])
def test_other_transactions_start_on_the_primary(sql):
    assert target_for(sql)[0] == P


@pytest.mark.parametrize("sql", ["SELECT 1", "INSERT INTO t VALUES (1)", "COMMIT", "SET x = 1"])
@pytest.mark.parametrize("holder", [P, R])
def test_a_transaction_stays_on_its_backend(sql, holder):
    assert target_for(sql, session=SessionView(transaction_target=holder)) == (holder, "transaction")


@pytest.mark.parametrize("sql", ["SELECT 1", "SHOW x", "TABLE t"])
def test_a_pinned_session_reads_from_the_primary(sql):
    assert target_for(sql, session=SessionView(pinned_to_primary=True)) == (P, "pinned_session")


def test_down_replica_falls_back_to_primary_with_a_reason():
    assert target_for("SELECT 1", replicas=[ReplicaView("r", healthy=False)]) == (P, "replica_down")
    assert target_for("SELECT 1", replicas=[]) == (P, "replica_down")


def test_least_busy_healthy_replica_is_chosen():
    replicas = [ReplicaView("a", inflight=3), ReplicaView("b", healthy=False), ReplicaView("c", inflight=1)]
    assert target_for("SELECT 1", replicas=replicas) == (2, "replica")


def test_eventual_respects_the_hard_lag_cap():
    replicas = [ReplicaView("a", lag_ms=45_000.0), ReplicaView("b", lag_ms=10.0)]
    assert target_for("SELECT 1", replicas=replicas) == (1, "replica")
    assert target_for("SELECT 1", replicas=replicas[:1]) == (P, "lag")


def test_bounded_needs_a_measured_lag_within_the_bound():
    assert target_for("SELECT 1", "BOUNDED:100", replicas=[ReplicaView("a", lag_ms=50.0)]) == (R, "replica")
    assert target_for("SELECT 1", "BOUNDED:100", replicas=[ReplicaView("a", lag_ms=150.0)]) == (P, "lag")
    assert target_for("SELECT 1", "BOUNDED:100", replicas=[ReplicaView("a")]) == (P, "lag")


def test_read_your_writes_needs_the_replica_past_the_session_token():
    session = SessionView(last_write_position=1000)
    assert target_for("SELECT 1", "READ_YOUR_WRITES", session, [ReplicaView("a", replay_position=999)]) == (P, "ryw")
    assert target_for("SELECT 1", "READ_YOUR_WRITES", session, [ReplicaView("a", replay_position=1000)]) == (R, "replica")
    assert target_for("SELECT 1", "READ_YOUR_WRITES", SessionView(), [ReplicaView("a")]) == (R, "replica")
