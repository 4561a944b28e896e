"""Lag and token math without IO: LSN text, the WAL history, lag, read-your-writes tokens."""
import pytest

from clidash.proxy.lsn import (LONG_PAGE_HEADER, SHORT_PAGE_HEADER, format_lsn,
                               insert_position_as_end, parse_lsn)
from clidash.proxy.pg.lag import WalHistory, replica_lag

SEG = 16 * 1024 * 1024
BLOCK = 8192

# -- LSN text ---------------------------------------------------------------------


@pytest.mark.parametrize("text, value", [
    ("0/0", 0),
    ("0/3000028", 0x3000028),
    ("16/B374D848", (0x16 << 32) | 0xB374D848),
    ("16/b374d848", (0x16 << 32) | 0xB374D848),
    ("FFFFFFFF/FFFFFFFF", (1 << 64) - 1),
    ("1/0", 1 << 32),
    (" 0/10 ", 0x10),
])
def test_parse_lsn(text, value):
    assert parse_lsn(text) == value


@pytest.mark.parametrize("value, text", [
    (0, "0/0"), (0x3000028, "0/3000028"), ((0x16 << 32) | 0xB374D848, "16/B374D848"),
    (1 << 32, "1/0"), ((1 << 64) - 1, "FFFFFFFF/FFFFFFFF"),
])
def test_format_lsn_matches_postgresql(value, text):
    assert format_lsn(value) == text
    assert parse_lsn(format_lsn(value)) == value


@pytest.mark.parametrize("text", ["", "0", "/0", "0/", "1/2/3", "g/0", "0/x1", "123456789/0",
                                  "0/123456789", "-1/0", "0x1/0"])
def test_parse_lsn_rejects(text):
    with pytest.raises(ValueError):
        parse_lsn(text)


@pytest.mark.parametrize("value", [-1, 1 << 64])
def test_format_lsn_rejects_out_of_range(value):
    with pytest.raises(ValueError):
        format_lsn(value)


# -- insert position -> record-end form -------------------------------------------------


@pytest.mark.parametrize("raw, expected", [
    (5 * SEG + 3 * BLOCK + 1000, 5 * SEG + 3 * BLOCK + 1000),        # mid-page: unchanged
    (5 * SEG + 3 * BLOCK + SHORT_PAGE_HEADER, 5 * SEG + 3 * BLOCK),  # just past a page header
    (5 * SEG + LONG_PAGE_HEADER, 5 * SEG),                           # segment start (pg_switch_wal)
    (5 * SEG + SHORT_PAGE_HEADER, 5 * SEG + SHORT_PAGE_HEADER),      # inside a long header: not an insert position
    (5 * SEG + 3 * BLOCK + 32, 5 * SEG + 3 * BLOCK + 32),            # a record end after a continuation
    (5 * SEG + 3 * BLOCK, 5 * SEG + 3 * BLOCK),                      # already a boundary
    (SEG + LONG_PAGE_HEADER, SEG),
])
def test_insert_position_as_end(raw, expected):
    assert insert_position_as_end(raw, BLOCK, SEG) == expected


def test_insert_position_honours_geometry():
    # 1 MB segments, 16 kB pages (initdb --wal-segsize / --with-wal-blocksize builds)
    assert insert_position_as_end(2 * 2**20 + 40, 16384, 2**20) == 2 * 2**20
    assert insert_position_as_end(16384 + 24, 16384, 2**20) == 16384
    assert insert_position_as_end(8192 + 24, 16384, 2**20) == 8192 + 24


# -- WAL history ------------------------------------------------------------------------


def history(*samples, max_age_s=60.0):
    h = WalHistory(max_age_s)
    for t, lsn in samples:
        assert h.record(t, lsn)
    return h


def test_unchanged_position_extends_one_run():
    h = history((0.0, 100), (0.005, 100), (0.010, 100), (0.015, 200), (0.020, 200))
    assert len(h) == 2
    assert h.latest == (0.020, 200)


def test_empty_history():
    h = WalHistory()
    assert h.latest is None
    assert h.token_after(0.0) is None
    assert replica_lag(h, 100, 1.0, stale_after_s=1.0) == (None, None, True)


# lag: (samples, replay_lsn, now) -> (lag_ms, lag_bytes, exact)
LAG_CASES = {
    "idle primary, caught up": ([(0.0, 100), (5.0, 100), (10.0, 100)], 100, 10.004, (0.0, 0, True)),
    "replica past the last sample": ([(0.0, 100), (1.0, 150)], 170, 1.005, (0.0, 0, True)),
    "behind by one sample": ([(0.0, 100), (1.0, 150), (2.0, 150)], 100, 2.004, (1004.0, 50, True)),
    "behind by three samples": ([(0.0, 100), (1.0, 150), (1.005, 180), (1.010, 220), (1.015, 220)],
                                100, 1.0155, (15.5, 120, True)),
    "mid-way into a run": ([(0.0, 100), (1.0, 150), (1.005, 180), (1.010, 220)], 170, 1.012, (7.0, 50, True)),
    "exactly at a run's position": ([(0.0, 100), (1.0, 150), (1.005, 180)], 150, 1.006, (1.0, 30, True)),
    "behind since before the history": ([(3.0, 500), (3.005, 600)], 400, 3.5, (500.0, 200, False)),
    "primary sample stale": ([(0.0, 100), (1.0, 150)], 100, 2.5, (None, None, True)),
    "not replaying (promoted)": ([(0.0, 100), (1.0, 150)], None, 1.001, (None, None, True)),
}


@pytest.mark.parametrize("samples, replay, now, expected", LAG_CASES.values(), ids=LAG_CASES.keys())
def test_replica_lag(samples, replay, now, expected):
    lag_ms, lag_bytes, exact = replica_lag(history(*samples), replay, now, stale_after_s=1.0)
    exp_ms, exp_bytes, exp_exact = expected
    if exp_ms is None:
        assert lag_ms is None
    else:
        assert lag_ms == pytest.approx(exp_ms, abs=1e-6)
    assert (lag_bytes, exact) == (exp_bytes, exp_exact)


def test_idle_primary_does_not_inflate_lag():
    # A write at t=1, then an hour of idle samples: a replica that replayed the
    # write reads 0 ms at every moment.
    h = history((0.0, 100), (1.0, 180))
    for step in range(1, 3600):
        h.record(1.0 + step, 180)
        assert h.lag_s(180, 1.0 + step + 0.004) == (0.0, True)
    assert len(h) == 2


def test_lag_grows_with_wall_time_while_behind():
    h = history((0.0, 100), (1.0, 200), (1.005, 200))
    assert h.lag_s(100, 1.005)[0] == pytest.approx(0.005)
    assert h.lag_s(100, 3.0)[0] == pytest.approx(2.0)


def test_old_runs_age_out_and_lag_becomes_a_lower_bound():
    h = WalHistory(max_age_s=10.0)
    for i in range(100):               # position moves every second
        h.record(float(i), 1000 + i)
    assert len(h) == 11                # runs last seen within 10 s, plus the newest
    assert h.lag_s(1095, 99.0) == (pytest.approx(99.0 - 96.0), True)  # 1096 first seen at t=96
    seconds, exact = h.lag_s(1000, 99.0)   # behind since t=0, only t>=89 kept
    assert seconds == pytest.approx(99.0 - 89.0) and exact is False


def test_compaction_keeps_answers():
    h = WalHistory(max_age_s=1.0)
    for i in range(10_000):
        h.record(i * 0.001, i)
    assert len(h) <= 1002
    assert h.latest == (9.999, 9999)
    assert h.token_after(9.5) == 9501
    assert h.lag_s(9499, 9.999)[0] == pytest.approx(9.999 - 9.5)


def test_position_going_backwards_resets():
    h = history((0.0, 500), (1.0, 600))
    assert h.record(2.0, 300) is False   # a different primary
    assert len(h) == 1 and h.latest == (2.0, 300)
    assert h.lag_s(300, 2.001) == (0.0, True)


# -- read-your-writes tokens -------------------------------------------------------------

SAMPLES = [(1.000, 100), (1.005, 100), (1.010, 140), (1.015, 140), (1.020, 200)]

# commit_time -> token: the LSN seen by the first sample strictly after it
TOKEN_CASES = {
    "before every sample": (0.5, 100),
    "between samples of one run": (1.002, 100),
    "exactly at a sample: not after it": (1.005, 140),
    "just after a run's last sample": (1.0051, 140),
    "exactly at the newest sample": (1.020, None),
    "after the newest sample": (1.021, None),
    "between runs": (1.017, 200),
}


@pytest.mark.parametrize("commit_time, token", TOKEN_CASES.values(), ids=TOKEN_CASES.keys())
def test_token_after(commit_time, token):
    assert history(*SAMPLES).token_after(commit_time) == token


def test_token_appears_with_the_next_sample_even_if_position_unchanged():
    h = history(*SAMPLES)
    assert h.token_after(1.021) is None
    h.record(1.025, 200)                 # same position: extends the run
    assert h.token_after(1.021) == 200


def test_token_never_precedes_a_later_commit():
    # Whatever the commit time, the token is a position some sample read after it.
    h = history(*SAMPLES)
    tokens = [h.token_after(t / 1000) for t in range(995, 1020)]
    known = [t for t in tokens if t is not None]
    assert known == sorted(known)


def test_token_when_history_no_longer_reaches_back():
    h = WalHistory(max_age_s=1.0)
    for i in range(50):
        h.record(i * 0.125, 1000 + i)      # kept: runs last seen at or after 6.125 - 1.0
    # The commit is older than every kept run; the oldest kept run was still
    # sampled after it, so its position is a valid (if later than needed) token.
    assert h.token_after(0.05) == 1041
