"""clidash_sdk: route scoping (contextvars), tag(), the codec through the SDK, emit()."""
from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import threading

import pytest

import clidash_sdk
from clidash_sdk import configure, current_tags, emit, route, tag, udp
from clidash_sdk.sqlcommenter import extract


@pytest.fixture(autouse=True)
def _no_default_service():
    configure(service=None)
    yield
    configure(service=None)


# --------------------------------------------------------------------------- route scoping


def test_context_manager_sets_and_clears():
    assert current_tags() == {}
    with route("product_page") as r:
        assert isinstance(r, route)
        assert current_tags() == {"route": "product_page"}
    assert current_tags() == {}


def test_nested_routes_inherit_and_restore():
    with route("outer", service="catalog", consistency="strong"):
        with route("inner"):
            assert current_tags() == {"route": "inner", "application": "catalog", "clidash_consistency": "STRONG"}
            with route("innermost", service="billing"):
                assert current_tags()["application"] == "billing"
            assert current_tags()["application"] == "catalog"
        assert current_tags()["route"] == "outer"
    assert current_tags() == {}


def test_route_exits_on_exception():
    with pytest.raises(KeyError):
        with route("boom"):
            raise KeyError("x")
    assert current_tags() == {}


def test_configured_service_and_route_service():
    configure(service="catalog")
    assert current_tags() == {"application": "catalog"}
    with route("a"):
        assert current_tags() == {"application": "catalog", "route": "a"}
    with route("b", service="search"):
        assert current_tags() == {"application": "search", "route": "b"}
    configure(service=None)
    assert current_tags() == {}


@pytest.mark.parametrize("given,expected", [
    ("strong", "STRONG"), ("read-your-writes", "READ_YOUR_WRITES"), ("EVENTUAL", "EVENTUAL"),
    ("bounded:250", "BOUNDED:250"), ("BOUNDED:1.5", "BOUNDED:1.5"),
])
def test_consistency_is_normalised(given, expected):
    assert route("r", consistency=given).consistency == expected


@pytest.mark.parametrize("kwargs,error", [
    ({"name": ""}, TypeError), ({"name": None}, TypeError), ({"name": "x" * 129}, ValueError),
    ({"name": "r", "service": ""}, TypeError), ({"name": "r", "consistency": "SOMETIMES"}, ValueError),
    ({"name": "r", "consistency": "BOUNDED"}, ValueError), ({"name": "r", "consistency": "BOUNDED:-1"}, ValueError),
])
def test_bad_arguments_fail_at_construction(kwargs, error):
    name = kwargs.pop("name")
    with pytest.raises(error):
        route(name, **kwargs)


async def test_asyncio_tasks_are_isolated():
    both_inside = asyncio.Event()
    entered = 0
    seen = {}

    async def handler(name):
        nonlocal entered
        with route(name):
            entered += 1
            if entered == 2:
                both_inside.set()
            await both_inside.wait()           # both tasks are inside their route at once
            await asyncio.sleep(0)
            seen[name] = (current_tags()["route"], extract(tag("SELECT 1"))["route"])

    await asyncio.gather(handler("a"), handler("b"))
    assert seen == {"a": ("a", "a"), "b": ("b", "b")}
    assert current_tags() == {}


async def test_child_task_inherits_but_does_not_leak_back():
    async def child():
        inherited = current_tags().get("route")
        with route("child"):
            await asyncio.sleep(0)
        route("leaky").__enter__()            # never exited: must stay in the child's context
        return inherited

    with route("parent"):
        assert await asyncio.create_task(child()) == "parent"
        assert current_tags()["route"] == "parent"


async def test_one_route_object_shared_by_concurrent_tasks():
    shared = route("shared")
    release = asyncio.Event()

    async def user(other):
        with shared:
            with route(other):
                await release.wait()
                inner = current_tags()["route"]
            return inner, current_tags()["route"]

    tasks = [asyncio.create_task(user(f"t{i}")) for i in range(5)]
    await asyncio.sleep(0)
    release.set()
    results = await asyncio.gather(*tasks)
    assert results == [(f"t{i}", "shared") for i in range(5)]


def test_threads_are_isolated():
    barrier = threading.Barrier(3, timeout=5)
    seen = {}

    def worker(name):
        seen[name + ":before"] = current_tags()
        with route(name):
            barrier.wait()                     # all three inside their routes at once
            seen[name] = extract(tag("SELECT 1"))["route"]
            barrier.wait()

    with route("main"):
        threads = [threading.Thread(target=worker, args=(n,)) for n in ("t1", "t2", "t3")]
        for t in threads:
            t.start()
        for t in threads:
            t.join(5)
        assert current_tags()["route"] == "main"
    assert {k: v for k, v in seen.items() if ":" not in k} == {"t1": "t1", "t2": "t2", "t3": "t3"}
    # A bare thread starts with an empty context (unless the interpreter makes threads inherit it).
    if not getattr(sys.flags, "thread_inherit_context", False):
        assert all(v == {} for k, v in seen.items() if k.endswith(":before"))


async def test_to_thread_carries_the_route():
    with route("offloaded"):
        assert await asyncio.to_thread(lambda: current_tags()["route"]) == "offloaded"


# --------------------------------------------------------------------------- decorator


def test_decorator_on_sync_function():
    @route("sync_route", service="svc")
    def handler(x, *, y):
        """doc"""
        return x + y, current_tags()

    total, tags = handler(1, y=2)
    assert total == 3 and tags == {"route": "sync_route", "application": "svc"}
    assert handler.__name__ == "handler" and handler.__doc__ == "doc"
    assert current_tags() == {}


async def test_decorator_on_async_function():
    @route("async_route")
    async def handler(x):
        await asyncio.sleep(0)
        return x, current_tags()["route"]

    assert asyncio.iscoroutinefunction(handler)
    assert await handler(7) == (7, "async_route")
    results = await asyncio.gather(handler(1), route("other")(handler)(2))
    assert results == [(1, "async_route"), (2, "async_route")]   # innermost route wins
    assert current_tags() == {}


def test_decorator_recursion_and_exceptions():
    @route("rec")
    def countdown(n):
        if n == 0:
            raise ValueError(current_tags()["route"])
        return countdown(n - 1)

    with pytest.raises(ValueError, match="rec"):
        countdown(3)
    assert current_tags() == {}


async def test_async_with():
    async with route("awith"):
        assert current_tags() == {"route": "awith"}
    assert current_tags() == {}


def test_decorating_a_generator_is_refused():
    with pytest.raises(TypeError, match="generator"):
        @route("gen")
        def gen():
            yield 1


# --------------------------------------------------------------------------- tag()


def test_tag_without_tags_returns_sql_unchanged():
    sql = "SELECT 1"
    assert tag(sql) is sql


def test_tag_appends_the_codec_comment():
    with route("product_page", service="catalog"):
        assert tag("SELECT 1") == "SELECT 1 /*application='catalog',route='product_page'*/"
        assert tag("SELECT 1;  ") == "SELECT 1 /*application='catalog',route='product_page'*/;"
        assert tag("SELECT 1 -- note") == "SELECT 1 -- note\n/*application='catalog',route='product_page'*/"


def test_tag_is_idempotent_and_never_double_tags():
    with route("r1", service="s"):
        once = tag("SELECT * FROM t WHERE id = $1")
        assert tag(once) == once
        with route("r2"):
            assert tag(once) == once           # a statement tagged elsewhere keeps its tag
        hand_written = "/*route='manual'*/ SELECT 1"
        assert tag(hand_written) == hand_written
        assert tag(tag("SELECT '%'", escape_percent=True), escape_percent=True).count("/*") == 1


def test_tag_adds_after_a_foreign_sqlcommenter_comment():
    with route("r"):
        sql = "SELECT 1 /*traceparent='00-abc-def-01'*/"
        tagged = tag(sql)
        assert tagged.startswith(sql) and extract(tagged) == {"route": "r"}


@pytest.mark.parametrize("name,service,consistency", [
    ("product_page", "catalog", None),
    ("GET /products/{id}", "cat'alog", "BOUNDED:250"),
    ("it's, quoted = 'x' */ -- #", "svc", "STRONG"),
    ("ünïcødé → route", "サービス", "READ_YOUR_WRITES"),
])
def test_codec_round_trip_through_the_sdk(name, service, consistency):
    with route(name, service=service, consistency=consistency):
        expected = current_tags()
        for sql in ("SELECT 1", "SELECT 1;", "INSERT INTO t VALUES (1) -- trailing", "/* lead */ SELECT 1"):
            assert extract(tag(sql)) == expected
        # escape_percent: after the driver's % interpolation the text decodes the same.
        assert extract(tag("SELECT %s", escape_percent=True) % ("1",)) == expected


def test_sdk_codec_is_the_proxys_codec():
    import clidash.sqlcomment as proxy_side
    from clidash_sdk import sqlcommenter
    assert proxy_side.extract is sqlcommenter.extract and proxy_side.encode is sqlcommenter.encode
    assert set(proxy_side.__all__) >= {"encode", "append", "decode_comment", "extract", "SERVICE_KEY",
                                       "ROUTE_KEY", "CONSISTENCY_KEY", "SCAN_BYTES"}


# --------------------------------------------------------------------------- emit()


@pytest.fixture
def udp_listener(monkeypatch):
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.settimeout(2)
    monkeypatch.setenv("CLIDASH_SDK_UDP", "127.0.0.1:%d" % sock.getsockname()[1])
    yield sock
    sock.close()


def _recv(sock):
    data, _ = sock.recvfrom(65536)
    return json.loads(data)


def test_emit_sends_one_json_datagram(udp_listener):
    emit("checkout", 12.5, service="shop")
    assert _recv(udp_listener) == {"svc": "shop", "op": "checkout", "latency": 12.5}


def test_emit_service_from_route_then_configure(udp_listener):
    configure(service="catalog")
    emit("a", 1)
    assert _recv(udp_listener) == {"svc": "catalog", "op": "a", "latency": 1.0}
    with route("r", service="search"):
        emit("b", 2)
    assert _recv(udp_listener)["svc"] == "search"
    configure(service=None)
    emit("c", 3)
    assert _recv(udp_listener)["svc"] is None


def test_emit_to_a_closed_port_does_not_raise(monkeypatch):
    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()                               # nobody listens there now
    monkeypatch.setenv("CLIDASH_SDK_UDP", f"127.0.0.1:{port}")
    for _ in range(5):                          # the ICMP port-unreachable must not surface either
        assert emit("op", 1.0) is None


def test_emit_swallows_and_counts_errors(monkeypatch):
    before = clidash_sdk.emit_errors()
    emit("nan", float("nan"))
    emit(None, 1.0)                             # type: ignore[arg-type]
    emit("op", "not a number")                  # type: ignore[arg-type]
    monkeypatch.setenv("CLIDASH_SDK_UDP", "no-port-here")
    emit("op", 1.0)
    assert clidash_sdk.emit_errors() == before + 4 == udp.errors


def test_emit_default_address_is_the_design_port(monkeypatch):
    monkeypatch.delenv("CLIDASH_SDK_UDP", raising=False)
    emit("op", 1.0)                             # to 127.0.0.1:5775, listener or not
    assert udp._spec == "127.0.0.1:5775"


# --------------------------------------------------------------------------- packaging


def test_sdk_imports_without_any_driver():
    drivers = ["sqlalchemy", "psycopg", "asyncpg", "pymysql", "aiomysql", "django"]
    code = (
        "import sys\n"
        f"for name in {drivers!r}: sys.modules[name] = None   # any import of them fails\n"
        "import clidash_sdk\n"
        "from clidash_sdk import route, hooks, tag\n"
        "with route('r'):\n"
        "    assert tag('SELECT 1').endswith(\"/*route='r'*/\")\n"
        "assert callable(hooks.django())\n"
        "print('ok')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                         env={**os.environ, "PYTHONPATH": ""})
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"
