"""`clidash top`: a live terminal view of one or more proxies' /metrics.

Scrape -> `parse()` (exposition text to a snapshot dict) -> `diff(prev, cur,
seconds)` (two snapshots to per-(service, route) rows) -> `render()` (a rich
table). The math is in pure functions; only `scrape()` and `run()` touch the
network or the terminal.

Per (service, route), over the last interval: qps (the histogram's _count
delta, all target roles and operations together), p50/p99 latency per target
role from the bucket deltas (linear interpolation inside the bucket, as
Prometheus' histogram_quantile does), the replica share of statements, the
service's fallbacks, the policy version and, when a proxy exports one, the
mode. Counters that went down (a restarted proxy) count from zero.
"""
from __future__ import annotations

import json
import math
import time
import urllib.error
import urllib.request
from urllib.parse import urlsplit
from concurrent.futures import ThreadPoolExecutor

from prometheus_client.parser import text_string_to_metric_families

DURATION = "db_client_operation_duration_seconds"
ROLES = ("primary", "replica")
# A gauge with labels {service, [route], mode}, value 1 for the mode in force
# (the proxy exports clidash_proxy_route_mode).
MODE_FAMILIES = ("clidash_proxy_route_mode", "clidash_proxy_mode")
SCRAPE_TIMEOUT_S = 2.0
DEFAULT_URL = "http://127.0.0.1:9464/metrics"
# Proxies' metrics listeners are local: ignore http_proxy and friends.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


# ---------------------------------------------------------------- parsing

def parse(text: str) -> dict:
    """Prometheus text exposition -> snapshot.

    {"hist": {(service, route, role): {"count": n, "buckets": {le: cumulative}}},
     "fallbacks": {service: total}, "lag": {replica: seconds},
     "policy_version": {service: version}, "mode": {(service, route): mode}}
    Histogram series are summed over db_system_name and operation; route ""
    in "mode" means the whole service.
    """
    snap = {"hist": {}, "fallbacks": {}, "lag": {}, "policy_version": {}, "mode": {}}
    for family in text_string_to_metric_families(text):
        if family.name == DURATION:
            for s in family.samples:
                key = (s.labels.get("service", ""), s.labels.get("route", ""), s.labels.get("target_role", ""))
                h = snap["hist"].setdefault(key, {"count": 0.0, "buckets": {}})
                if s.name == DURATION + "_count":
                    h["count"] += s.value
                elif s.name == DURATION + "_bucket":
                    le = float(s.labels["le"])
                    h["buckets"][le] = h["buckets"].get(le, 0.0) + s.value
        elif family.name == "clidash_proxy_fallbacks":
            for s in family.samples:
                if s.name.endswith("_total"):
                    svc = s.labels.get("service", "")
                    snap["fallbacks"][svc] = snap["fallbacks"].get(svc, 0.0) + s.value
        elif family.name == "clidash_proxy_replica_lag_seconds":
            for s in family.samples:
                snap["lag"][s.labels.get("replica", "")] = s.value
        elif family.name == "clidash_proxy_policy_version":
            for s in family.samples:
                snap["policy_version"][s.labels.get("service", "")] = s.value
        elif family.name in MODE_FAMILIES:
            for s in family.samples:
                if s.value and "mode" in s.labels:
                    snap["mode"][(s.labels.get("service", ""), s.labels.get("route", ""))] = s.labels["mode"]
    return snap


# ------------------------------------------------------------------- math

def quantile(buckets, q: float):
    """q-quantile from cumulative `le` buckets ({upper: cumulative} or pairs),
    the way Prometheus' histogram_quantile does it. None when empty."""
    items = sorted(buckets.items() if isinstance(buckets, dict) else buckets)
    if not items or not math.isinf(items[-1][0]):
        return None
    total = items[-1][1]
    if total <= 0:
        return None
    rank = q * total
    prev_upper, prev_cum = 0.0, 0.0
    for i, (upper, cum) in enumerate(items):
        if cum >= rank:
            if math.isinf(upper):
                # Beyond the last finite bound: the best known is that bound.
                return items[i - 1][0] if i > 0 else None
            if i == 0 and upper <= 0:
                return upper
            in_bucket = cum - prev_cum
            if in_bucket <= 0:
                return upper
            return prev_upper + (upper - prev_upper) * (rank - prev_cum) / in_bucket
        prev_upper, prev_cum = upper, cum
    return None


def _delta(cur: float, prev: float | None) -> float:
    """Counter delta; a counter that went down was reset: count from zero."""
    if prev is None or cur < prev:
        return cur
    return cur - prev


def _hist_delta(cur: dict, prev: dict | None) -> dict:
    if prev is None or cur["count"] < prev["count"]:
        return {"count": cur["count"], "buckets": dict(cur["buckets"])}
    return {"count": cur["count"] - prev["count"],
            "buckets": {le: _delta(n, prev["buckets"].get(le)) for le, n in cur["buckets"].items()}}


def _ms(seconds):
    return None if seconds is None else round(seconds * 1000.0, 3)


def diff(prev: dict, cur: dict, seconds: float) -> list[dict]:
    """Rows per (service, route) for the interval between two snapshots."""
    seconds = max(seconds, 1e-9)
    per_route: dict[tuple[str, str], dict[str, dict]] = {}
    for (service, route, role), h in cur["hist"].items():
        d = _hist_delta(h, prev["hist"].get((service, route, role)))
        per_route.setdefault((service, route), {})[role] = d
    rows = []
    for (service, route), by_role in sorted(per_route.items()):
        total = sum(d["count"] for d in by_role.values())
        replica = by_role.get("replica", {"count": 0.0})["count"]
        row = {"service": service, "route": route, "qps": round(total / seconds, 3)}
        for role in ROLES:
            d = by_role.get(role)
            row[f"{role}_p50_ms"] = _ms(quantile(d["buckets"], 0.5)) if d else None
            row[f"{role}_p99_ms"] = _ms(quantile(d["buckets"], 0.99)) if d else None
        row["replica_share"] = round(replica / total, 4) if total > 0 else None
        fb = _delta(cur["fallbacks"].get(service, 0.0), prev["fallbacks"].get(service))
        row["fallbacks"] = fb
        row["fallbacks_per_s"] = round(fb / seconds, 3)
        mode = cur["mode"].get((service, route), cur["mode"].get((service, "")))
        if mode is not None:
            row["mode"] = mode
        version = cur["policy_version"].get(service)
        row["policy_version"] = None if version is None else int(version)
        rows.append(row)
    return rows


# ---------------------------------------------------------------- scraping

def scrape(url: str, timeout: float = SCRAPE_TIMEOUT_S) -> dict:
    """{"snapshot": ..., "at": monotonic} or {"error": "...", "at": ...}; never raises."""
    at = time.monotonic()
    try:
        with _OPENER.open(url, timeout=timeout) as resp:
            text = resp.read().decode("utf-8", "replace")
        return {"snapshot": parse(text), "at": at}
    except Exception as exc:  # noqa: BLE001 - any failure is shown as the proxy's row
        if isinstance(exc, urllib.error.HTTPError):
            return {"error": f"HTTP {exc.code} {exc.reason}", "at": at}
        reason = getattr(exc, "reason", None) or exc    # URLError wraps the OSError
        msg = getattr(reason, "strerror", None) or str(reason) or type(reason).__name__
        return {"error": msg, "at": at}


def scrape_all(urls, timeout: float = SCRAPE_TIMEOUT_S) -> dict[str, dict]:
    with ThreadPoolExecutor(max_workers=min(8, max(1, len(urls)))) as pool:
        return dict(zip(urls, pool.map(lambda u: scrape(u, timeout), urls)))


def compute(urls, prev: dict[str, dict], cur: dict[str, dict]) -> dict:
    """Rows (tagged with their proxy URL) and replica lag for every URL; an
    unreachable proxy is one row with its error."""
    rows, lag = [], []
    for url in urls:
        p, c = prev.get(url) or {}, cur[url]
        if "error" in c:
            rows.append({"proxy": url, "error": c["error"]})
            continue
        for replica, seconds in sorted(c["snapshot"]["lag"].items()):
            lag.append({"proxy": url, "replica": replica, "lag_s": seconds})
        if "snapshot" not in p:
            # No previous scrape to diff against: everything since start-up.
            empty = {"hist": {}, "fallbacks": {}, "lag": {}, "policy_version": {}, "mode": {}}
            p = {"snapshot": empty, "at": None}
        elapsed = c["at"] - p["at"] if p["at"] is not None else None
        for row in diff(p["snapshot"], c["snapshot"], elapsed or 1.0):
            if elapsed is None:
                row["qps"] = row["fallbacks_per_s"] = None   # a rate needs two scrapes
            rows.append({"proxy": url, **row})
    return {"rows": rows, "replica_lag": lag}


# --------------------------------------------------------------- rendering

def _fmt(value, spec="{:.1f}"):
    return "-" if value is None else spec.format(value)


def _short(url: str) -> str:
    """host:port, the path too unless it is the usual /metrics."""
    parts = urlsplit(url)
    return parts.netloc + ("" if parts.path in ("", "/metrics") else parts.path) or url


def render(result: dict, interval: float):
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    lag = result["replica_lag"]
    multi = len({r["proxy"] for r in result["rows"]}) > 1
    header = Text("replica lag: ", style="bold")
    if lag:
        header.append("  ".join((f"{_short(r['proxy'])} " if multi else "") + f"{r['replica']} {r['lag_s'] * 1000:.0f} ms"
                                for r in lag))
    else:
        header.append("-")
    show_mode = any("mode" in r for r in result["rows"])
    table = Table(title=f"clidash top  (every {interval:g}s; latency in ms)", title_justify="left")
    if multi:
        table.add_column("proxy", no_wrap=True)
    for name, justify in (("service", "left"), ("route", "left"), ("qps", "right"),
                          ("pri p50", "right"), ("pri p99", "right"),
                          ("rep p50", "right"), ("rep p99", "right"),
                          ("replica", "right"), ("fallbk/s", "right")):
        table.add_column(name, justify=justify)
    if show_mode:
        table.add_column("mode")
    table.add_column("policy", justify="right")
    errors = []
    for r in result["rows"]:
        cells = [_short(r["proxy"])] if multi else []
        if "error" in r:
            # The table keeps its width; the error itself goes under the table.
            cells += [Text("unreachable" if multi else _short(r["proxy"]), style="red"),
                      Text("-" if multi else "unreachable", style="red")]
            errors.append(Text(f"{_short(r['proxy'])}: {r['error']}", style="red"))
            table.add_row(*cells)
            continue
        share = None if r["replica_share"] is None else r["replica_share"] * 100
        cells += [r["service"], r["route"], _fmt(r["qps"]),
                  _fmt(r["primary_p50_ms"], "{:.2f}"), _fmt(r["primary_p99_ms"], "{:.2f}"),
                  _fmt(r["replica_p50_ms"], "{:.2f}"), _fmt(r["replica_p99_ms"], "{:.2f}"),
                  _fmt(share, "{:.0f}%"), _fmt(r["fallbacks_per_s"], "{:.2f}")]
        if show_mode:
            cells.append(r.get("mode", "-"))
        cells.append(_fmt(r["policy_version"], "{}"))
        table.add_row(*cells)
    return Group(header, table, *errors)


def run(urls, interval: float = 1.0, once: bool = False, as_json: bool = False) -> None:
    """--once: one table (or JSON document) after two scrapes `interval` apart.
    --json alone: one JSON line per interval. Otherwise a live table."""
    urls = list(urls) or [DEFAULT_URL]
    prev = scrape_all(urls)
    if once:
        time.sleep(interval)
        result = compute(urls, prev, scrape_all(urls))
        if as_json:
            print(json.dumps(result, indent=2))
        else:
            from rich.console import Console
            Console().print(render(result, interval))
        return
    live = None
    if not as_json:
        from rich.live import Live
        live = Live(render(compute(urls, {}, prev), interval), auto_refresh=False)
        live.start(refresh=True)
    try:
        while True:
            time.sleep(interval)
            cur = scrape_all(urls)
            result = compute(urls, prev, cur)
            if live is None:
                print(json.dumps(result), flush=True)
            else:
                live.update(render(result, interval), refresh=True)
            prev = cur
    except KeyboardInterrupt:
        pass
    finally:
        if live is not None:
            live.stop()
