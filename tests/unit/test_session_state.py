"""SessionState: what a backend must be sent before it serves the client."""
from clidash.proxy.pg import messages as m
from clidash.proxy.pg.session import BackendSessionState, SessionState


def parse(name, sql):
    body = name.encode() + b"\0" + sql.encode() + b"\0\0\0"
    return m.Parse(m.message(b"P", body), name, sql)


def test_fresh_backend_needs_nothing():
    assert SessionState().preamble_for(BackendSessionState(), None) is None


def test_session_changes_are_replayed_once_in_order():
    state, primary, replica = SessionState(), BackendSessionState(), BackendSessionState()
    state.state_changed("SET a = 1", False, primary, in_transaction=False)
    state.state_changed("SET b = 2", False, primary, in_transaction=False)
    assert state.preamble_for(primary, None) is None            # it ran there already
    pre = state.preamble_for(replica, None)
    assert pre.data == m.query("SET a = 1; SET b = 2") and pre.responses == 1
    assert state.preamble_for(replica, None) is None            # only once


def test_reset_all_makes_earlier_changes_irrelevant():
    state, primary, replica = SessionState(), BackendSessionState(), BackendSessionState()
    state.state_changed("SET a = 1", False, primary, False)
    state.state_changed("RESET ALL", False, primary, False)
    state.state_changed("SET b = 2", False, primary, False)
    assert state.preamble_for(replica, None).data == m.query("RESET ALL; SET b = 2")


def test_transaction_changes_count_only_when_committed():
    state, primary, replica = SessionState(), BackendSessionState(), BackendSessionState()
    state.state_changed("SET a = 1", False, primary, in_transaction=True)
    state.transaction_ended(committed=False, origin=primary)
    assert state.preamble_for(replica, None) is None
    state.state_changed("SET b = 2", False, primary, in_transaction=True)
    state.transaction_ended(committed=True, origin=primary)
    assert state.preamble_for(replica, None).data == m.query("SET b = 2")


def test_statement_is_prepared_lazily_where_it_has_not_been():
    state, primary, replica = SessionState(), BackendSessionState(), BackendSessionState()
    p = parse("s1", "SELECT 1")
    state.parsed(p, object(), primary)
    assert state.preamble_for(primary, ["s1"]) is None
    pre = state.preamble_for(replica, ["s1"])
    assert pre.data == p.raw + m.sync() and pre.responses == 1
    assert state.preamble_for(replica, ["s1"]) is None
    assert state.preamble_for(replica, ["unknown"]) is None      # let the server answer


def test_closed_statement_is_closed_elsewhere_before_its_name_is_reused():
    state, primary, replica = SessionState(), BackendSessionState(), BackendSessionState()
    state.parsed(parse("s1", "SELECT 1"), object(), primary)
    state.preamble_for(replica, ["s1"])                          # now on both
    state.closed("s1", primary, [replica])
    assert "s1" not in state.statements
    new = parse("s1", "SELECT 2")
    state.parsed(new, object(), primary)
    pre = state.preamble_for(replica, ["s1"])
    assert pre.data == m.close_statement("s1") + new.raw + m.sync()


def test_discard_all_drops_statements_everywhere():
    state, primary, replica = SessionState(), BackendSessionState(), BackendSessionState()
    state.parsed(parse("s1", "SELECT 1"), object(), primary)
    state.preamble_for(replica, ["s1"])
    state.state_changed("DISCARD ALL", True, primary, False)
    assert state.statements == {} and primary.prepared == {}
    pre = state.preamble_for(replica, None)
    assert pre.data == m.query("DISCARD ALL") and replica.prepared == {}


def test_failed_parse_is_forgotten():
    state, primary = SessionState(), BackendSessionState()
    ps = state.parsed(parse("s1", "SELEC 1"), object(), primary)
    state.parse_failed(ps, primary)
    assert "s1" not in state.statements and "s1" not in primary.prepared


def test_deferred_begin_goes_last_in_the_preamble():
    state, primary = SessionState(), BackendSessionState()
    state.deferred_begin = m.query("BEGIN")
    other = BackendSessionState()
    state.state_changed("SET a = 1", False, other, False)
    pre = state.preamble_for(primary, None)
    assert pre.data == m.query("SET a = 1") + m.query("BEGIN") and pre.responses == 2
    assert state.deferred_begin is None
