"""What clidash_sdk costs per call, in microseconds, on this machine.

- tag() with no route (the fast path), with a route set, on an already tagged
  statement, and with escape_percent;
- entering and leaving `with route(...)`, and a @route-decorated no-op call;
- the SQLAlchemy hook: its listener called directly, and a whole
  `exec_driver_sql("SELECT 1")` on an in-memory SQLite engine (the cheapest real
  round trip there is) with no listener, with a listener that does nothing, and
  with the hook, a route set in all three;
- emit() to a local UDP socket nobody reads.

Each figure is the best of --repeat runs of --number calls (the two SQLAlchemy
executions: 3 x --repeat interleaved runs of --number/40). Prints figures; passes
or fails nothing.

Usage: python bench/sdk_overhead.py [--number 100000] [--repeat 7] [--json FILE]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import sys
import timeit
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "sdk-lite"))   # works uninstalled too

from clidash_sdk import configure, emit, hooks, route, tag  # noqa: E402
from clidash_sdk.hooks import _sa_before_cursor_execute  # noqa: E402

SQL = "SELECT id, name, price FROM products WHERE category_id = $1 ORDER BY price LIMIT 20"


def best_us(fn, number: int, repeat: int) -> float:
    return min(timeit.repeat(fn, number=number, repeat=repeat)) / number * 1e6


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--number", type=int, default=100_000, help="calls per timing run")
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--json", metavar="FILE")
    args = parser.parse_args()
    n, r = args.number, args.repeat
    rows: list[tuple[str, float]] = []

    def measure(label: str, fn, number: int = n) -> float:
        value = best_us(fn, number, r)
        rows.append((label, value))
        return value

    measure("baseline: a Python call doing nothing", lambda: None)
    configure(service=None)
    measure("tag(): no route, no service (fast path)", lambda: tag(SQL))
    configure(service="catalog")
    product = route("product_page", consistency="BOUNDED:250")
    with product:
        tag(SQL)                                        # first call encodes; later ones reuse it
        measure("tag(): route + service set", lambda: tag(SQL))
        tagged = tag(SQL)
        measure("tag(): statement already tagged (left alone)", lambda: tag(tagged))
        measure("tag(escape_percent=True): route + service set", lambda: tag(SQL, escape_percent=True))
        with route("nested"):
            tag(SQL)
            measure("tag(): nested route", lambda: tag(SQL))

    def enter_exit():
        with product:
            pass
    measure("with route(...): enter + exit", enter_exit)

    @product
    def noop():
        return None
    measure("@route-decorated no-op call (vs baseline)", noop)

    # SQLAlchemy: the listener alone, then whole executions with and without the hook.
    try:
        import sqlalchemy as sa
    except ImportError:
        sa = None
    if sa is not None:
        class Dialect:
            paramstyle = "qmark"

        class Conn:
            dialect = Dialect()
        conn_stub = Conn()
        with product:
            measure("SQLAlchemy listener, called directly",
                    lambda: _sa_before_cursor_execute(conn_stub, None, SQL, (), None, False))
        sa_number = max(n // 40, 1000)
        plain = sa.create_engine("sqlite://")
        hooked = hooks.sqlalchemy(sa.create_engine("sqlite://"))
        # The same event with a listener that changes nothing: what SQLAlchemy's event
        # dispatch costs any before_cursor_execute listener, ours or not.
        idle = sa.create_engine("sqlite://")
        sa.event.listen(idle, "before_cursor_execute",
                        lambda conn, cur, statement, params, ctx, many: (statement, params), retval=True)
        with plain.connect() as c_plain, idle.connect() as c_idle, hooked.connect() as c_hooked, product:
            runs = {
                "no hook": lambda: c_plain.exec_driver_sql("SELECT 1").scalar(),
                "a no-op listener": lambda: c_idle.exec_driver_sql("SELECT 1").scalar(),
                "hooked": lambda: c_hooked.exec_driver_sql("SELECT 1").scalar(),
            }
            best = {name: float("inf") for name in runs}
            for _ in range(r * 3):           # interleaved: a burst of load elsewhere hits all alike
                for name, run in runs.items():
                    best[name] = min(best[name], timeit.timeit(run, number=sa_number) / sa_number * 1e6)
            for name, value in best.items():
                rows.append((f"SQLAlchemy+SQLite SELECT 1, {name}", value))
            rows.append(("  -> the hook adds, over no hook", best["hooked"] - best["no hook"]))
            rows.append(("  -> of which the SDK's own share", best["hooked"] - best["a no-op listener"]))
        for engine in (plain, idle, hooked):
            engine.dispose()

    # emit(): to a bound socket nobody reads (the kernel drops what overflows its buffer).
    sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sink.bind(("127.0.0.1", 0))
    os.environ["CLIDASH_SDK_UDP"] = "127.0.0.1:%d" % sink.getsockname()[1]
    measure("emit(): one UDP datagram", lambda: emit("checkout", 12.5), max(n // 10, 1000))
    sink.close()
    configure(service=None)

    print(f"clidash_sdk per-call overhead (Python {platform.python_version()}, {platform.machine()}, "
          f"best of {r} runs)")
    width = max(len(label) for label, _ in rows)
    for label, value in rows:
        print(f"  {label:<{width}}  {value:8.3f} us")
    if args.json:
        Path(args.json).write_text(json.dumps({label: round(value, 4) for label, value in rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
