"""Hostile input to the core, data and resilience layers: every finding of the hostile-input
review has a test here that failed before the fix.

* a path cannot send a call to another host or port;
* NaN and infinity are refused with the parameter's name, never passed on to a timer;
* every size has an upper bound; load generators keep their bounds even when the function
  never awaits; absurd rates are refused;
* the outbox refuses an unknown topic in the transaction that would have stored it.
"""
from __future__ import annotations

import asyncio
import math

import pytest

from toylib import Service, Topology
from toylib.core import deadline as dl
from toylib.core import load
from toylib.core import validate as v
from toylib.core.clock import now
from toylib.core.services import UnknownService, check_path
from toylib.testing import settle

NAN, INF = float("nan"), float("inf")


def two_services():
    a, b = Service("a"), Service("b")

    @a.get("/y")
    async def ya(request):
        return {"from": "a"}

    @b.get("/y")
    async def yb(request):
        return {"from": "b"}

    @a.get("/echo/{rest:.*}")
    async def echo(request):
        return {"from": "a", "path": request.path}

    return a, b


# -- a path cannot redirect a call ------------------------------------------------------------
INJECTIONS = [
    "@127.0.0.1:{port}/y",          # the first address becomes a user name
    "@example.com/",                # ... and the host becomes example.com
    ":{port}/y",                    # another port after the service's host
    "//127.0.0.1:{port}/y",         # a network-path reference
    "http://127.0.0.1:{port}/y",    # a whole URL
    "/\\\\127.0.0.1:{port}/y",      # backslashes some parsers read as slashes
    "\\\\127.0.0.1:{port}/y",
    "/y#@127.0.0.1:{port}",         # a fragment
    "/y\r\nHost: 127.0.0.1:{port}",  # a second header line
    "y",                            # no leading slash
    "",
]


@pytest.mark.parametrize("form", INJECTIONS)
async def test_a_path_cannot_reach_another_service(form, leakcheck):
    a, b = two_services()
    async with Topology(a, b) as topo:
        path = form.format(port=b.port)
        with pytest.raises(ValueError, match="path"):
            await topo.call("a", "GET", path)
        assert b.handled == 0 and a.handled == 0
        assert len(topo.tracer) == 0      # refused before anything was sent or recorded


async def test_odd_but_harmless_paths_stay_on_the_callee(leakcheck):
    a, b = two_services()
    async with Topology(a, b) as topo:
        for path in (f"/echo/@127.0.0.1:{b.port}/y", "/echo/a@b", "/echo/x?q=1&r=@2",
                     "/echo/../echo/z"):
            answer = await topo.call("a", "GET", path)
            assert answer["from"] == "a", path
        assert b.handled == 0


def test_check_path_names_the_parameter():
    for bad in (None, 7, b"/y"):
        with pytest.raises(TypeError, match="path"):
            check_path(bad)
    with pytest.raises(ValueError, match="path must be at most"):
        check_path("/" + "x" * 10_000)
    assert check_path("/users/1?x=2") == "/users/1?x=2"


async def test_unknown_target_and_caller_name_the_parameter_and_the_services(leakcheck):
    a, b = two_services()
    async with Topology(a, b) as topo:
        with pytest.raises(ValueError, match=r"target must be .*'a', 'b'.*'nosuch'"):
            await topo.call("nosuch", "GET", "/y")
        with pytest.raises(KeyError):              # still a lookup error for old callers
            await topo.call("nosuch", "GET", "/y")
        with pytest.raises(UnknownService, match="target"):
            await topo.call(["a"], "GET", "/y")
        with pytest.raises(ValueError, match="caller"):
            await topo.call("a", "GET", "/y", caller="nobody")
        with pytest.raises(ValueError, match="method"):
            await topo.call("a", "FETCH", "/y")
        with pytest.raises(ValueError, match="service must be"):
            topo["nosuch"]


@pytest.mark.parametrize("kw,param", [
    ({"timeout": NAN}, "timeout"), ({"timeout": INF}, "timeout"), ({"timeout": -1}, "timeout"),
    ({"timeout": 0}, "timeout"), ({"timeout": 1e12}, "timeout"),
    ({"connect_timeout": NAN}, "connect_timeout"), ({"connect_timeout": INF}, "connect_timeout"),
    ({"json": {1, 2}}, "json"), ({"json": object()}, "json"),
    ({"params": [1]}, "params"), ({"params": {"a": None}}, "params"),
    ({"params": {"a": True}}, "params"), ({"headers": {"X-A": "1\r\nX-B: 2"}}, "headers"),
    ({"headers": "X-A: 1"}, "headers"), ({"trace_id": "t\n1"}, "trace_id"),
    ({"trace_id": ""}, "trace_id"), ({"raw": "yes"}, "raw"),
])
async def test_call_arguments_are_checked_before_sending(kw, param, leakcheck):
    a, b = two_services()
    async with Topology(a, b) as topo:
        with pytest.raises((ValueError, TypeError), match=param):
            await topo.call("a", "GET", "/y", **kw)
        assert a.handled == 0


# -- numbers: NaN and infinity never reach a timer ----------------------------------------------
@pytest.mark.parametrize("bad", [NAN, INF, -INF])
def test_nan_and_infinity_are_refused_with_the_name(bad):
    for check in (v.positive, v.non_negative, v.probability, v.seconds):
        with pytest.raises((ValueError, TypeError), match="timeout"):
            check("timeout", bad)
    with pytest.raises((ValueError, TypeError), match="n must be"):
        v.number("n", bad, low=1, integer=True)


def test_huge_integers_get_a_clear_error_not_an_overflow():
    with pytest.raises(ValueError, match="n must be an integer in"):
        v.number("n", 10 ** 400, low=1, high=10, integer=True)
    with pytest.raises(ValueError, match="about 400 digits"):
        v.number("n", 10 ** 400, low=1, high=10)
    assert v.number("n", 10 ** 400, low=1, integer=True) == 10 ** 400


def test_an_unbounded_number_may_be_infinite_a_bounded_one_may_not():
    assert v.number("ratio", INF) == INF               # a measured ratio with nothing after
    with pytest.raises(ValueError, match="finite"):
        v.number("ratio", INF, finite=True)
    with pytest.raises(ValueError, match="finite"):
        v.number("x", INF, low=0)


def test_deadline_refuses_nan_and_infinity():
    for bad in (NAN, INF, -1, 0, 1e12):
        with pytest.raises((ValueError, TypeError), match="seconds"):
            dl.Deadline.after(bad)
    for bad in (NAN, INF, "soon"):
        with pytest.raises((ValueError, TypeError), match="at"):
            dl.Deadline(bad)
    for header in ("nan", "inf", "-1", "1e30"):
        with pytest.raises(ValueError, match=dl.HEADER):
            dl.Deadline.from_header(header)


async def test_a_deadline_header_of_nan_or_inf_is_a_400_not_a_hang(leakcheck):
    a, b = two_services()
    async with Topology(a, b) as topo:
        for bad in ("nan", "inf", "1e300"):
            reply = await topo.call("a", "GET", "/y", headers={dl.HEADER: bad}, raw=True,
                                    timeout=5)
            assert reply.status == 400, (bad, reply)
