"""Tracing: exact span counts, parent/child links, bytes, failures, capture(), the DataFrame."""
from __future__ import annotations

import json

import pytest

from toylib import CallError, Error, Hang, Service, Topology
from toylib.core.trace import COLUMNS, Tracer


def page_topology(n: int, m: int) -> Topology:
    """A gateway that renders a page with 1 + n + m serial calls."""
    gw = Service("gateway", "edge", uses=("users", "posts"))
    users, posts = Service("users"), Service("posts")

    @users.get("/users/{id}")
    async def user(request):
        uid = int(request.match_info["id"])
        return {"id": uid, "posts": list(range(n)), "friends": list(range(100, 100 + m))}

    @posts.get("/posts/{id}")
    async def post(request):
        return {"id": int(request.match_info["id"]), "body": "é" * 10}

    @gw.get("/page/{id}")
    async def page(request):
        u = await gw.call("users", "GET", f"/users/{request.match_info['id']}")
        ps = [await gw.call("posts", "GET", f"/posts/{p}") for p in u["posts"]]
        fs = [await gw.call("users", "GET", f"/users/{f}") for f in u["friends"]]
        return {"user": u["id"], "posts": len(ps), "friends": len(fs)}

    @gw.post("/echo")
    async def echo(request):
        return await request.json()

    return Topology(gw, users, posts)


@pytest.mark.parametrize("n, m", [(0, 0), (3, 2), (7, 5)])
async def test_a_page_of_1_plus_n_plus_m_calls_gives_exactly_that_many_spans(n, m, leakcheck):
    async with page_topology(n, m) as topo:
        await topo.call("gateway", "GET", "/page/1")
        await topo.call("gateway", "GET", "/page/2")
        df = topo.tracer.df()
    inner = df[df["caller"] == "gateway"]
    assert len(df) == 2 * (1 + 1 + n + m)
    assert len(inner) == 2 * (1 + n + m)
    assert (df["caller"] == "client").sum() == 2
    per_trace = inner.groupby("trace_id").size()
    assert sorted(per_trace.tolist()) == [1 + n + m] * 2
    assert (inner["callee"] == "posts").sum() == 2 * n
    assert (inner["route"] == "/posts/{id}").sum() == 2 * n
    assert (inner["route"] == "/users/{id}").sum() == 2 * (1 + m)


async def test_parent_and_child_ids_link_the_gateway_calls_to_the_client_call(leakcheck):
    async with page_topology(2, 2) as topo:
        await topo.call("gateway", "GET", "/page/1")
        await topo.call("gateway", "GET", "/page/2")
        spans = topo.tracer.spans
    roots = [s for s in spans if s.caller == "client"]
    assert len(roots) == 2 and roots[0].trace_id != roots[1].trace_id
    assert all(r.parent_id is None for r in roots)
    for root in roots:
        kids = [s for s in spans if s.caller == "gateway" and s.trace_id == root.trace_id]
        assert len(kids) == 5
        assert {k.parent_id for k in kids} == {root.span_id}
        # children run inside their parent
        assert all(root.start <= k.start <= k.end <= root.end for k in kids)
    assert len({s.span_id for s in spans}) == len(spans)


async def test_a_given_trace_id_is_kept(leakcheck):
    async with page_topology(1, 0) as topo:
        await topo.call("gateway", "GET", "/page/1", trace_id="mine")
    assert {s.trace_id for s in topo.tracer.spans} == {"mine"}


async def test_bytes_equal_the_json_body_sizes(leakcheck):
    payload = {"name": "ünïcode", "items": list(range(20))}
    async with page_topology(1, 0) as topo:
        reply = await topo.call("gateway", "POST", "/echo", json=payload, raw=True)
        await topo.call("posts", "GET", "/posts/4")
        spans = topo.tracer.spans
    sent = len(json.dumps(payload).encode())
    echo, post = spans
    assert echo.req_bytes == sent
    assert echo.resp_bytes == len(reply.body) == sent
    assert post.req_bytes == 0
    assert post.resp_bytes == len(json.dumps({"id": 4, "body": "é" * 10}).encode())
    for s in spans:
        assert s.wire_bytes > s.req_bytes + s.resp_bytes + 100   # headers are not free


async def test_failed_calls_are_recorded_with_their_status(leakcheck):
    topo = page_topology(0, 0)
    users = topo.service("users")
    async with topo:
        users.faults.add(Error(1.0, status=503))
        with pytest.raises(CallError):
            await topo.call("users", "GET", "/users/1")
        users.faults.clear()
        users.faults.add(Hang())
        with pytest.raises(CallError):
            await topo.call("users", "GET", "/users/1", timeout=0.05)
        users.faults.clear()
        await users.down()
        with pytest.raises(CallError):
            await topo.call("users", "GET", "/users/1")
        with pytest.raises(CallError):      # the gateway answers 502 when users is down
            await topo.call("gateway", "GET", "/page/1")
    statuses = [(s.caller, s.status) for s in topo.tracer.spans]
    assert statuses == [("client", 503), ("client", "timeout"), ("client", "refused"),
                        ("gateway", "refused"), ("client", 502)]
    df = topo.tracer.df()
    assert df["ok"].tolist() == [False] * 5
    assert df.loc[df["status"] == "refused", "wire_bytes"].tolist() == [0, 0]


async def test_capture_collects_only_the_spans_of_the_block(leakcheck):
    async with page_topology(2, 1) as topo:
        await topo.call("gateway", "GET", "/page/1")
        with topo.tracer.capture() as spans:
            await topo.call("gateway", "GET", "/page/2")
        await topo.call("gateway", "GET", "/page/3")
    assert len(topo.tracer) == 3 * 5
    assert len(spans) == 5
    assert len({s.trace_id for s in spans}) == 1
    root = [s for s in spans if s.caller == "client"]
    assert len(root) == 1 and root[0].path == "/page/2"


def test_df_columns_and_units():
    tracer = Tracer(clock=iter([10.0, 10.5, 10.7]).__next__)   # t0, then one span's times
    from toylib.core.trace import Span
    start, end = tracer.clock(), tracer.clock()
    tracer.record(Span("t1", 1, None, "client", "a", "GET", "/x", "/x", start, end, 200,
                       0, 10, 150))
    df = tracer.df()
    assert list(df.columns) == COLUMNS
    for col in ("trace_id", "span_id", "parent_id", "caller", "callee", "route", "status",
                "req_bytes", "resp_bytes", "wire_bytes", "duration_ms", "ok", "start", "end"):
        assert col in df.columns
    assert df["start"].iloc[0] == pytest.approx(500.0)
    assert df["end"].iloc[0] == pytest.approx(700.0)
    assert df["duration_ms"].iloc[0] == pytest.approx(200.0)
    assert df["ok"].tolist() == [True]
    empty = Tracer().df()
    assert list(empty.columns) == COLUMNS and len(empty) == 0
    tracer.clear()
    assert len(tracer) == 0
