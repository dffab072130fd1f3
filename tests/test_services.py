"""Services and topologies: routes, names, 127.0.0.1 only, ports released, overload, down/up."""
from __future__ import annotations

import asyncio
import logging
import time

import pytest
from aiohttp import web

from toylib.testing import listening_sockets, other_tasks, refused, settle, fd_count
from toylib import CallError, Service, Store, Topology
from toylib.core.services import Reply


def echo_service(name: str = "echo", **kw) -> Service:
    svc = Service(name, **kw)

    @svc.get("/json/{id}")
    async def as_json(request):
        return {"id": int(request.match_info["id"]), "from": svc.name}

    @svc.get("/text")
    async def as_text(request):
        return "plain words"

    @svc.post("/sum")
    async def add(request):
        body = await request.json()
        return {"sum": sum(body)}

    @svc.get("/slow")
    async def slow(request):
        await asyncio.sleep(float(request.query.get("s", "0.05")))
        return {"slept": True}

    return svc


# -- routes and names -----------------------------------------------------------------------
async def test_routes_answer_json_and_text(leakcheck):
    async with Topology(echo_service()) as topo:
        assert await topo.call("echo", "GET", "/json/7") == {"id": 7, "from": "echo"}
        assert await topo.call("echo", "POST", "/sum", json=[1, 2, 3]) == {"sum": 6}
        reply = await topo.call("echo", "GET", "/text", raw=True)
        assert isinstance(reply, Reply)
        assert reply.status == 200 and reply.body == b"plain words"
        assert reply.headers["Content-Type"].startswith("text/plain")
        reply = await topo.call("echo", "GET", "/json/1", raw=True)
        assert reply.headers["Content-Type"].startswith("application/json")
        assert reply.json() == {"id": 1, "from": "echo"}
        health = await topo.call("echo", "GET", "/health")
        assert health["service"] == "echo" and health["status"] == "up"


async def test_unknown_route_is_404_call_error(leakcheck):
    async with Topology(echo_service()) as topo:
        with pytest.raises(CallError) as e:
            await topo.call("echo", "GET", "/nope")
        assert e.value.kind == "http" and e.value.status == 404


async def test_services_find_each_other_by_name(leakcheck):
    front = Service("front", "edge", uses=("back",))
    back = echo_service("back")

    @front.get("/page")
    async def page(request):
        inner = await front.call("back", "GET", "/json/3")
        return {"page": inner}

    async with Topology(front, back) as topo:
        assert await topo.call("front", "GET", "/page") == {"page": {"id": 3, "from": "back"}}
        spans = topo.tracer.spans
        assert [(s.caller, s.callee) for s in spans] == [("front", "back"), ("client", "front")]


async def test_unknown_service_name_lists_the_allowed_names(leakcheck):
    async with Topology(echo_service("alpha"), echo_service("beta"), Store("db")) as topo:
        with pytest.raises(KeyError) as e:
            await topo.call("gamma", "GET", "/text")
        msg = str(e.value)
        assert "gamma" in msg and "'alpha'" in msg and "'beta'" in msg
        with pytest.raises(ValueError, match="store"):
            await topo.call("db", "GET", "/text")
        with pytest.raises(ValueError, match="method"):
            await topo.call("alpha", "FETCH", "/text")


async def test_call_outside_a_running_topology_is_an_error():
    svc = echo_service()
    topo = Topology(svc)
    with pytest.raises(RuntimeError, match="not running"):
        await topo.call("echo", "GET", "/text")
    with pytest.raises(RuntimeError, match="not part of a running topology"):
        await svc.call("echo", "GET", "/text")


def test_definition_errors_name_the_parameter():
    with pytest.raises(ValueError, match="plane"):
        Service("x", "cloud")
    with pytest.raises(ValueError, match="name"):
        Service("bad name")
    with pytest.raises(ValueError, match="when_full"):
        Service("x", when_full="drop")
    with pytest.raises(ValueError, match="max_concurrency"):
        Service("x", max_concurrency=0)
    svc = Service("x")
    with pytest.raises(ValueError, match="path"):
        svc.get("no-slash")
    with pytest.raises(ValueError, match="method"):
        svc.route("TRACE", "/x")
    with pytest.raises(TypeError, match="async"):
        svc.get("/sync")(lambda request: {})
    with pytest.raises(ValueError, match="unique"):
        Topology(Service("x"), Service("x"))


# -- 127.0.0.1 only, ephemeral distinct ports ------------------------------------------------
async def test_every_server_binds_loopback_only_on_distinct_ephemeral_ports(leakcheck):
    names = ["a", "b", "c", "d"]
    async with Topology(*(echo_service(n) for n in names)) as topo:
        ports = []
        for n in names:
            svc = topo.service(n)
            addrs = svc._runner.addresses
            assert addrs, f"{n} has no address"
            for addr in addrs:
                assert addr[0] == "127.0.0.1", f"{n} bound to {addr}"
            assert svc.url == f"http://127.0.0.1:{svc.port}"
            ports.append(svc.port)
        assert len(set(ports)) == len(ports), f"ports not distinct: {ports}"
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            low, high = map(int, f.read().split())
        assert all(low <= p <= high for p in ports), f"not ephemeral: {ports} vs {low}-{high}"

        listening = listening_sockets()
        by_port = {p: a for a, p in listening}
        for p in ports:     # the kernel's own table agrees with the runner
            assert by_port.get(p) == "127.0.0.1", f"port {p}: {by_port.get(p)}"
        wildcard = [(a, p) for a, p in listening if a in ("0.0.0.0", "::")]
        assert not wildcard, f"listening on every interface: {wildcard}"
        assert all(a in ("127.0.0.1", "::1") for a, _ in listening), listening
    assert not set(ports) & {p for _, p in listening_sockets()}


def proc_row(local: str, state: str, inode: int) -> str:
    """One row of /proc/net/tcp{,6}: the fields the parser reads are local, state and inode."""
    remote = "0" * (len(local) - 5) + ":0000"
    return (f"   0: {local} {remote} {state} 00000000:00000000 00:00000000 00000000"
            f"     0        0 {inode} 1 0000000000000000 100 0 0 10 0\n")


def test_listening_socket_parser_sees_wildcard_sockets(tmp_path):
    """The /proc parser can catch what the test above forbids (fed a synthetic table, so no
    wildcard socket is ever opened)."""
    header = "  sl  local_address rem_address   st tx_queue rx_queue ... inode\n"
    v4 = tmp_path / "tcp"
    v4.write_text(header
                  + proc_row("0100007F:1F90", "0A", 111)     # 127.0.0.1:8080, listening
                  + proc_row("00000000:1F91", "0A", 222)     # 0.0.0.0:8081, listening
                  + proc_row("00000000:1F92", "01", 333)     # established, not listening
                  + proc_row("00000000:1F93", "0A", 444))    # another process's socket
    v6 = tmp_path / "tcp6"
    v6.write_text(header
                  + proc_row("0" * 32 + ":1F94", "0A", 555)                  # [::]:8084
                  + proc_row("0" * 24 + "01000000:1F95", "0A", 666))         # [::1]:8085
    got = listening_sockets(((str(v4), False), (str(v6), True)),
                            inodes={"111", "222", "333", "555", "666"})
    assert got == [("127.0.0.1", 8080), ("0.0.0.0", 8081), ("::", 8084), ("::1", 8085)]


# -- releasing everything --------------------------------------------------------------------
def _sessions(topo):
    return [topo._client_session] + [s._session for s in topo.services.values()]


async def _assert_released(ports, sessions, fds_before):
    assert all(refused(p) for p in ports), "a port still accepts connections"
    assert all(s.closed for s in sessions), "a client session is still open"
    await settle()
    assert not other_tasks(), f"tasks left: {other_tasks()}"
    assert fd_count() <= fds_before


async def test_leaving_the_block_releases_ports_sessions_and_tasks(leakcheck):
    await settle()
    fds = fd_count()
    topo = Topology(echo_service("a"), echo_service("b"))
    async with topo:
        ports = [s.port for s in topo.services.values()]
        sessions = _sessions(topo)
        assert not any(refused(p) for p in ports)
        await topo.call("a", "GET", "/json/1")
        bg = topo.spawn(asyncio.sleep(3600))
    assert bg.cancelled()
    await _assert_released(ports, sessions, fds)
    assert all(s.port is None for s in topo.services.values())


async def test_ports_are_released_when_the_block_raises(leakcheck):
    await settle()
    fds = fd_count()
    topo = Topology(echo_service("a"), echo_service("b"))
    with pytest.raises(ZeroDivisionError):
        async with topo:
            ports = [s.port for s in topo.services.values()]
            sessions = _sessions(topo)
            topo.spawn(asyncio.sleep(3600))
            await topo.call("b", "GET", "/json/2")
            1 / 0
    await _assert_released(ports, sessions, fds)


async def test_ports_are_released_when_the_task_is_cancelled_mid_request(leakcheck):
    """Like an interrupted kernel: the task running the block is cancelled during a call."""
    await settle()
    fds = fd_count()
    topo = Topology(echo_service("a"))
    seen = {}
    in_call = asyncio.Event()

    async def experiment():
        async with topo:
            seen["ports"] = [s.port for s in topo.services.values()]
            seen["sessions"] = _sessions(topo)
            in_call.set()
            await topo.call("a", "GET", "/slow", params={"s": "30"})

    task = asyncio.ensure_future(experiment())
    await in_call.wait()
    await asyncio.sleep(0.05)          # the request is now in the handler
    assert topo["a"].in_flight == 1
    t0 = time.perf_counter()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert time.perf_counter() - t0 < 5, "cleanup waited for the 30 s handler"
    await _assert_released(seen["ports"], seen["sessions"], fds)
    assert topo.tracer.spans[-1].status == "cancelled"
    # the topology can be started again afterwards
    async with topo:
        assert await topo.call("a", "GET", "/json/5") == {"id": 5, "from": "a"}


async def test_a_topology_cannot_be_entered_twice(leakcheck):
    topo = Topology(echo_service())
    async with topo:
        with pytest.raises(RuntimeError, match="already running"):
            async with topo:
                pass
    with pytest.raises(RuntimeError):
        topo.spawn(asyncio.sleep(0))


# -- overload --------------------------------------------------------------------------------
def _counting_service(name, delay, **kw):
    svc = Service(name, **kw)
    svc.peak = 0

    @svc.get("/work")
    async def work(request):
        svc.peak = max(svc.peak, svc.in_flight)
        await asyncio.sleep(delay)
        return {"done": True}

    return svc


async def test_max_concurrency_wait_queues_requests(leakcheck):
    delay, n = 0.04, 5
    svc = _counting_service("pool", delay, max_concurrency=1, when_full="wait")
    async with Topology(svc) as topo:
        t0 = time.perf_counter()
        results = await asyncio.gather(*(topo.call("pool", "GET", "/work") for _ in range(n)))
        elapsed = time.perf_counter() - t0
    assert results == [{"done": True}] * n
    assert svc.peak == 1 and svc.rejected == 0
    # served one at a time: about n × delay, far more than the delay of one request
    assert elapsed / delay > 0.8 * n, f"{elapsed:.3f}s for {n} queued requests"


async def test_unbounded_service_serves_concurrently(leakcheck):
    delay, n = 0.05, 6
    svc = _counting_service("free", delay)
    async with Topology(svc) as topo:
        t0 = time.perf_counter()
        await asyncio.gather(*(topo.call("free", "GET", "/work") for _ in range(n)))
        elapsed = time.perf_counter() - t0
    assert svc.peak == n
    assert elapsed / delay < 0.5 * n


async def test_max_concurrency_reject_answers_503_overloaded(leakcheck):
    svc = _counting_service("pool", 0.05, max_concurrency=2, when_full="reject")
    async with Topology(svc) as topo:
        results = await asyncio.gather(*(topo.call("pool", "GET", "/work") for _ in range(6)),
                                       return_exceptions=True)
        ok = [r for r in results if not isinstance(r, Exception)]
        errors = [r for r in results if isinstance(r, Exception)]
        assert len(ok) == 2 and len(errors) == 4
        for e in errors:
            assert isinstance(e, CallError)
            assert e.kind == "overloaded" and e.status == 503
        assert svc.rejected == 4 and svc.peak <= 2
        reply = await topo.call("pool", "GET", "/work", raw=True)   # free again
        assert reply.status == 200


# -- down and up -----------------------------------------------------------------------------
async def test_down_refuses_and_up_restores(leakcheck):
    async with Topology(echo_service("a")) as topo:
        svc = topo.service("a")
        port = svc.port
        assert await topo.call("a", "GET", "/json/1") == {"id": 1, "from": "a"}
        await svc.down()
        assert svc.is_down and refused(port)
        for _ in range(3):   # a kept-alive connection must not sneak a request through
            with pytest.raises(CallError) as e:
                await topo.call("a", "GET", "/json/1")
            assert e.value.kind == "refused"
        await svc.up()
        assert not svc.is_down and svc.port == port
        assert await topo.call("a", "GET", "/json/2") == {"id": 2, "from": "a"}
        statuses = [s.status for s in topo.tracer.spans]
        assert statuses == [200, "refused", "refused", "refused", 200]


# -- errors in handlers ----------------------------------------------------------------------
async def test_a_failing_dependency_gives_502_without_a_traceback(capfd, caplog, leakcheck):
    caplog.set_level(logging.DEBUG)
    front = Service("front", uses=("back",))
    back = Service("back")

    @back.get("/fail")
    async def fail(request):
        raise web.HTTPServiceUnavailable()

    @front.get("/page")
    async def page(request):
        return await front.call("back", "GET", "/fail")

    @front.get("/bug")
    async def bug(request):
        raise KeyError("oops")

    async with Topology(front, back) as topo:
        with pytest.raises(CallError) as e:
            await topo.call("front", "GET", "/page")
        assert e.value.kind == "http" and e.value.status == 502
        reply = await topo.call("front", "GET", "/page", raw=True)
        assert reply.status == 502
        assert "back" in reply.json()["error"] and reply.json()["service"] == "front"
        reply = await topo.call("front", "GET", "/bug", raw=True)
        assert reply.status == 500 and "KeyError" in reply.json()["error"]
    assert front.errors == 3
    out, err = capfd.readouterr()
    assert "Traceback" not in err and "Traceback" not in out
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], \
        [r.getMessage() for r in caplog.records]


async def test_gather_or_cancel_cancels_the_others_on_first_failure():
    import asyncio as _asyncio
    from toylib.core.services import gather_or_cancel
    cancelled = []

    async def slow():
        try:
            await _asyncio.sleep(10)
        except _asyncio.CancelledError:
            cancelled.append(True)
            raise

    async def boom():
        await _asyncio.sleep(0.01)
        raise RuntimeError("backend failed")

    with pytest.raises(RuntimeError, match="backend failed"):
        await gather_or_cancel(slow(), boom(), slow())
    assert cancelled == [True, True]
    assert await gather_or_cancel(_asyncio.sleep(0, "a"), _asyncio.sleep(0, "b")) == ["a", "b"]
