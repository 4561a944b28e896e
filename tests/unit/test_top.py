"""`clidash top`: parsing, diffing, quantiles, and the command end to end."""
from __future__ import annotations

import json
import math
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from click.testing import CliRunner

from clidash.cli import main
from clidash.top import compute, diff, parse, quantile, scrape

LES = ("0.001", "0.005", "0.01", "0.05", "+Inf")


def _hist(service, route, role, operation, cum):
    labels = f'db_system_name="postgresql",service="{service}",route="{route}",target_role="{role}",operation="{operation}"'
    lines = [f'db_client_operation_duration_seconds_bucket{{{labels},le="{le}"}} {n}' for le, n in zip(LES, cum)]
    lines.append(f"db_client_operation_duration_seconds_count{{{labels}}} {cum[-1]}")
    lines.append(f"db_client_operation_duration_seconds_sum{{{labels}}} 0.5")
    return lines


def exposition(hists, fallbacks, lag=None, version=7, mode=None):
    lines = ["# HELP db_client_operation_duration_seconds Duration.",
             "# TYPE db_client_operation_duration_seconds histogram"]
    for h in hists:
        lines += _hist(*h)
    lines += ["# HELP clidash_proxy_fallbacks_total Fallbacks.", "# TYPE clidash_proxy_fallbacks_total counter"]
    lines += [f'clidash_proxy_fallbacks_total{{service="shop",reason="{r}"}} {n}' for r, n in fallbacks.items()]
    lines += ["# TYPE clidash_proxy_replica_lag_seconds gauge"]
    lines += [f'clidash_proxy_replica_lag_seconds{{replica="{r}"}} {s}' for r, s in (lag or {}).items()]
    lines += ["# TYPE clidash_proxy_policy_version gauge", f'clidash_proxy_policy_version{{service="shop"}} {version}']
    if mode:
        lines += ["# TYPE clidash_proxy_route_mode gauge",
                  f'clidash_proxy_route_mode{{service="shop",route="cart",mode="{mode}"}} 1']
    return "\n".join(lines) + "\n"


# Over the interval: primary +20 statements (read 16 + a new write series 4),
# bucket deltas [0, 8, 18, 20, 20]; replica +60, deltas [0, 30, 60, 60, 60];
# route "orders" unchanged; fallbacks 3+1 -> 7+2.
PREV = exposition(
    [("shop", "cart", "primary", "read", (2, 4, 5, 5, 5)),
     ("shop", "cart", "replica", "read", (1, 1, 1, 1, 1)),
     ("shop", "orders", "primary", "write", (0, 3, 3, 3, 3))],
    {"lag": 3, "unhealthy": 1}, lag={"r1": 0.1})
CUR = exposition(
    [("shop", "cart", "primary", "read", (2, 10, 19, 21, 21)),
     ("shop", "cart", "primary", "write", (0, 2, 4, 4, 4)),
     ("shop", "cart", "replica", "read", (1, 31, 61, 61, 61)),
     ("shop", "orders", "primary", "write", (0, 3, 3, 3, 3))],
    {"lag": 7, "unhealthy": 2}, lag={"r1": 0.25, "r2": 1.5}, version=8, mode="EVENTUAL")


def test_parse_sums_operations_and_reads_gauges():
    snap = parse(CUR)
    cart = snap["hist"][("shop", "cart", "primary")]
    assert cart["count"] == 25
    assert cart["buckets"] == {0.001: 2, 0.005: 12, 0.01: 23, 0.05: 25, math.inf: 25}
    assert snap["fallbacks"] == {"shop": 9}
    assert snap["lag"] == {"r1": 0.25, "r2": 1.5}
    assert snap["policy_version"] == {"shop": 8}
    assert snap["mode"] == {("shop", "cart"): "EVENTUAL"}


def test_quantile_interpolates_like_histogram_quantile():
    b = {0.001: 0, 0.005: 8, 0.01: 18, 0.05: 20, math.inf: 20}
    assert quantile(b, 0.5) == pytest.approx(0.006)     # rank 10: 0.005 + 0.005 * 2/10
    assert quantile(b, 0.99) == pytest.approx(0.046)    # rank 19.8: 0.01 + 0.04 * 1.8/2
    assert quantile({0.1: 4, math.inf: 4}, 0.5) == pytest.approx(0.05)   # first bucket from 0
    assert quantile({0.1: 1, math.inf: 10}, 0.99) == 0.1   # in +Inf: the last finite bound
    assert quantile({0.1: 0, math.inf: 0}, 0.5) is None
    assert quantile({}, 0.5) is None


def test_diff_rows():
    rows = {r["route"]: r for r in diff(parse(PREV), parse(CUR), 2.0)}
    cart = rows["cart"]
    assert cart["qps"] == pytest.approx(40.0)             # (20 + 60) / 2 s
    assert cart["primary_p50_ms"] == pytest.approx(6.0)
    assert cart["primary_p99_ms"] == pytest.approx(46.0)
    assert cart["replica_p50_ms"] == pytest.approx(5.0)   # rank 30 ends the 0.005 bucket
    assert cart["replica_p99_ms"] == pytest.approx(9.9)   # 0.005 + 0.005 * 29.4/30
    assert cart["replica_share"] == pytest.approx(0.75)
    assert cart["fallbacks"] == 5 and cart["fallbacks_per_s"] == pytest.approx(2.5)
    assert cart["mode"] == "EVENTUAL" and cart["policy_version"] == 8
    orders = rows["orders"]
    assert orders["qps"] == 0 and orders["replica_share"] is None
    assert orders["primary_p50_ms"] is None and orders["replica_p99_ms"] is None
    assert "mode" not in orders


def test_diff_counter_reset_counts_from_zero():
    restarted = exposition([("shop", "cart", "replica", "read", (0, 2, 2, 2, 2))], {"lag": 1})
    rows = diff(parse(CUR), parse(restarted), 1.0)
    assert rows[0]["qps"] == 2 and rows[0]["replica_share"] == 1.0 and rows[0]["fallbacks"] == 1


def _closed_port_url():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/metrics"


def test_unreachable_url_is_an_error_row():
    url = _closed_port_url()
    cur = {url: scrape(url, timeout=0.5)}
    result = compute([url], {}, cur)
    assert result["rows"] == [{"proxy": url, "error": result["rows"][0]["error"]}]
    assert "refused" in result["rows"][0]["error"]


@pytest.fixture
def metrics_server():
    served = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            body = (PREV if not served else CUR).encode()
            served.append(self.path)
            self.send_response(200)
            self.send_header("Content-Type", "text/plain; version=0.0.4")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/metrics", served
    server.shutdown()
    server.server_close()


def test_cli_once_json(metrics_server):
    url, served = metrics_server
    bad = _closed_port_url()
    result = CliRunner().invoke(main, ["top", "--url", url, "--url", bad, "--once", "--json", "--interval", "0.2"])
    assert result.exit_code == 0, result.output
    out = json.loads(result.output)
    assert len(served) == 2
    rows = {(r["proxy"], r.get("route")): r for r in out["rows"]}
    cart = rows[(url, "cart")]
    assert 80 / 1.5 < cart["qps"] < 80 / 0.19            # 80 statements over the measured ~0.2 s
    assert cart["primary_p50_ms"] == pytest.approx(6.0)
    assert cart["replica_share"] == pytest.approx(0.75)
    assert cart["fallbacks"] == 5
    assert "error" in rows[(bad, None)]
    assert {(r["replica"], r["lag_s"]) for r in out["replica_lag"]} == {("r1", 0.25), ("r2", 1.5)}


def test_cli_once_table(metrics_server):
    url, _ = metrics_server
    result = CliRunner().invoke(main, ["top", "--url", url, "--once", "--interval", "0.1"],
                                env={"COLUMNS": "160"})
    assert result.exit_code == 0, result.output
    assert "cart" in result.output and "EVENTUAL" in result.output and "r2" in result.output
