"""Lab 5, No timeouts: choose timeouts and a retry policy that meet a latency bound without
amplifying load beyond a limit.

The reader writes two functions (see labs/ch05_timeouts_lab.ipynb):

* ``choose_policy(latencies_ms, bound_ms, seed)``: given the dependency's *measured* latencies
  (a list of milliseconds, from healthy calls) and the latency the API promises its clients,
  return a policy: any object the reader likes (a timeout, an attempt limit, a backoff, a retry
  budget, a random generator seeded with ``seed``...). It is called **once per API process**,
  and what it returns is handed to every call that process makes, so it is the place for
  per-process state such as a retry budget.
* ``async call_with_policy(service, target, path, policy)``: make the GET call
  ``service.call(target, "GET", path, ...)`` under the policy, returning the JSON answer or
  raising the last :class:`~toylib.core.services.CallError`.

``check`` puts them in a real topology, client -> api -> dep, where the checker wrote the API's
handler (``return await call_with_policy(api, "dep", path, policy)``) and the dependency, and
runs seeded fault scenarios against it: a slow lognormal tail (two latency profiles), transient
5xx errors, calls that hang, a window in which every call hangs, an "overloaded" answer that
must not be retried, a dependency that is down, a client that sends a tighter deadline, and a
dependency shared by several API processes that comes back with a limited capacity.

Everything is measured outside the solution: the client's own latencies and answers, the
topology's trace, and what reached the dependency's server (so a call that bypasses
``service.call`` is caught). A case passes when

* every request is answered (no request waits until the client gives up),
* the p99 end-to-end latency is within the bound (with a margin for the machine's own noise),
* no call made for a request is still running after that request's deadline (the bound, or the
  client's own deadline when it sends one),
* no call is sent again after the dependency answered "overloaded",
* calls reaching the dependency per client request stay within the amplification limit,
* and the share of requests answered with the right data reaches the scenario's floor.

Backoff jitter is not graded: with at most a few tries inside the bound, retries in lockstep
do no measurable harm here (chapter 5's Experiment 4 shows where they do), so a checker that
failed them would be grading the code, not its effect.
"""
from __future__ import annotations

import asyncio
import gc
import random
import secrets
from collections import Counter
from contextlib import nullcontext
from dataclasses import dataclass

import numpy as np
import pandas as pd
from aiohttp import web

from toylib.core import validate as v
from toylib.core import deadline as dl
from toylib.core import load
from toylib.core.faults import Error, Hang, Latency
from toylib.labs.grading import Case, Report, grade
from toylib.core.services import CallError, Service, Topology
from toylib.core.clock import now

LAB = "Lab 5 (timeouts and retries)"
AMPLIFICATION_LIMIT = 1.5   # calls reaching the dependency per client request, at most
LATENCY_MARGIN = 1.2        # measured / promised: p99 latency and call ends, for machine noise
CLIENT_GIVES_UP = 2.0       # x the bound: the client cuts a request off (counted as hung)
API_WORKERS = 16            # the API's worker pool (max_concurrency, waiting when full)


@dataclass(frozen=True)
class Profile:
    """The dependency's healthy latency (lognormal: median, shape) and the API's promise."""
    name: str
    median_ms: float
    sigma: float
    bound_ms: float

    def latency(self) -> Latency:
        return Latency(self.median_ms, self.sigma * self.median_ms, "lognormal")


PROFILES = {
    # p50 20 ms, p99.9 about 90 ms: a 180 ms promise leaves room for one timeout and a retry
    "fast": Profile("fast", 20.0, 0.5, 180.0),
    # p50 80 ms, p99.9 about 200 ms: a timeout copied from "fast" fails here
    "slow": Profile("slow", 80.0, 0.3, 500.0),
}


def _cases() -> list[Case]:
    def case(name, n, seed, profile="fast", floor=0.98, rate=100.0, **kw):
        return Case(name, n, seed, {"profile": profile, "n": n, "rate": rate, "floor": floor,
                                    **kw})
    return [
        case("tail-fast", 30, 501),                                   # latency only
        case("tail-slow", 30, 502, profile="slow"),
        case("overloaded", 30, 503, floor=0.6, overloaded_p=0.25),   # shed: never retry
        case("hang-window", 16, 504, floor=0.5, rate=16.0, window=(0.0, 0.3)),
        case("outage", 40, 505, floor=0.0, error_p=1.0),             # down for the whole run
        case("client-deadline", 40, 506, floor=0.85, hang_p=0.1, client_deadline=0.5),
        case("errors", 60, 507, floor=0.97, error_p=0.1),            # transient 503s
        case("hangs", 60, 508, floor=0.85, hang_p=0.15),
        case("shared-recovery", 80, 509, floor=0.3, rate=200.0, apis=4, down_s=0.25,
             capacity=8),
    ]


CASES = _cases()


def _what(prm: dict) -> str:
    if "capacity" in prm:
        return (f"{prm['apis']} API processes share it; down (503) for the first "
                f"{prm['down_s'] * 1000:.0f} ms, then {prm['capacity']} calls at a time")
    if prm.get("overloaded_p"):
        return f"answers 'overloaded' (503, do not retry) to {prm['overloaded_p']:.0%} of calls"
    if "window" in prm:
        a, b = prm["window"]
        return f"every call hangs from {a * 1000:.0f} to {b * 1000:.0f} ms"
    if prm.get("error_p") == 1.0:
        return "down: every call fails at once (503)"
    if prm.get("error_p"):
        return f"{prm['error_p']:.0%} of calls fail at once (503, transient)"
    if prm.get("client_deadline"):
        return (f"{prm['hang_p']:.0%} of calls hang; the client sends a deadline of "
                f"{prm['client_deadline']:.0%} of the bound")
    if prm.get("hang_p"):
        return f"{prm['hang_p']:.0%} of calls hang (accepted, never answered)"
    return "nothing but its own latency tail"


def scenarios() -> pd.DataFrame:
    """The cases as a table: what goes wrong in each, and what must hold."""
    return pd.DataFrame([{
        "scenario": c.name, "seed": c.seed, "requests": c.params["n"],
        "per second": c.params["rate"], "latency profile": c.params["profile"],
        "bound (ms)": PROFILES[c.params["profile"]].bound_ms,
        "the dependency": _what(c.params), "success floor": f"{c.params['floor']:.0%}"}
        for c in sorted(CASES, key=lambda c: (c.size, c.name))]).set_index("scenario")


# -- the dependency's measured latency (what the reader's policy is chosen from) ------------------
_SAMPLES: dict[str, list[float]] = {}
SAMPLES_N = 400


def _data_service(name: str = "dep", token=lambda i: i) -> Service:
    svc = _Dependency(name)

    @svc.get("/data/{id}")
    async def data(request):
        i = int(request.match_info["id"])
        if svc.capacity is not None:        # a recovering dependency serves a few at a time
            if svc.slots.locked():
                return web.json_response({"error": "busy, try again"}, status=503)
            async with svc.slots:
                await asyncio.sleep(svc.busy_s)
        return {"id": i, "token": token(i)}

    return svc


async def measured_latencies(profile: str) -> list[float]:
    """Healthy calls to the dependency, timed as a caller sees them (ms); measured once per
    profile and process, then reused, like a dashboard's latency histogram."""
    if profile not in _SAMPLES:
        p = PROFILES[profile]
        dep = _data_service()
        dep.faults.add(p.latency())
        async with Topology(dep, name="measuring the dependency", seed=1) as topo:
            res = await load.closed_loop(
                lambda i: topo.call("dep", "GET", f"/data/{i}", trace_id=f"m{i}"),
                n=SAMPLES_N, concurrency=50, progress=False, label="dependency latency")
        _SAMPLES[profile] = [round(x, 3) for x in res.latencies]
    return list(_SAMPLES[profile])


# -- the topology ---------------------------------------------------------------------------------
class _Dependency(Service):
    """The dependency, which also records every request that reaches it, before any fault.

    The record is the server's own, so calls that do not go through ``service.call`` (and so
    are missing from the trace) are still counted. With ``overloaded_p`` it sheds a seeded
    share of requests at once with an explicit "overloaded" 503.
    """

    def __init__(self, name: str = "dep"):
        super().__init__(name, "state", label="Dependency")
        self.arrivals: list[tuple[str | None, float, bool]] = []   # (trace id, time, shed)
        self.overloaded_p, self.seed = 0.0, 0
        self.capacity, self.slots, self.busy_s = None, None, 0.0
        self._nth: Counter = Counter()

    def limit(self, capacity: int, busy_s: float) -> None:
        self.capacity, self.slots, self.busy_s = capacity, asyncio.Semaphore(capacity), busy_s

    async def _serve(self, request, handler, route, trace_id):
        nth = self._nth[trace_id]
        self._nth[trace_id] += 1
        shed = bool(self.overloaded_p) and random.Random(
            f"{self.seed}|shed|{trace_id}|{nth}").random() < self.overloaded_p
        self.arrivals.append((trace_id, now(), shed))
        if shed:
            return self._answer(web.json_response(
                {"error": "overloaded"}, status=503, headers={"X-Toy-Overloaded": "1"}), route)
        return await super()._serve(request, handler, route, trace_id)


def _api(name: str, policy, call_with_policy, crashes: list) -> Service:
    """The API the checker runs your code in: one handler, one call to the dependency."""
    api = Service(name, "edge", label="API", uses=("dep",), max_concurrency=API_WORKERS,
                  when_full="wait")

    @api.get("/work/{id}")
    async def work(request):
        try:
            return await call_with_policy(api, "dep", f"/data/{request.match_info['id']}",
                                          policy)
        except (CallError, web.HTTPException, asyncio.CancelledError):
            raise
        except Exception as e:     # noted for the report; the client gets a 500
            crashes.append(e)
            raise

    return api


async def _warm_up(topo: Topology, apis: list[Service], dep: _Dependency) -> None:
    """Open the connections before the clock matters (the first call of a session costs a few
    milliseconds more), then forget the warm-up: the trace and the dependency's record."""
    for api in apis:
        await topo.call(api.name, "GET", "/health", trace_id="warm-up")
        await topo.call("dep", "GET", "/health", caller=api.name, trace_id="warm-up")
    topo.tracer.clear()
    dep.arrivals.clear()
    dep._nth.clear()


@dataclass
class Run:
    """What one case measured: per request, and per call."""
    n: int
    ok: int
    latencies_ms: list[float]     # per request, as the client saw it (failures included)
    hung: int                     # requests the client cut off
    reached: int                  # calls that reached the dependency (server's count)
    traced: int                   # calls to the dependency in the trace
    statuses: Counter             # of the calls to the dependency, from the trace
    retried_overloaded: list[str]
    late: list[tuple[str, float]]  # (trace, end of its last call / its deadline)
    short_timeouts: int           # timed-out calls that had waited less than the measured p99
    deadline_cut: int             # calls that ran until the deadline cut them
    crashes: list                 # exceptions other than CallError out of call_with_policy


async def _run_case(solution: dict, case: Case) -> Run:
    prm = case.params
    prof = PROFILES[prm["profile"]]
    samples = await measured_latencies(prof.name)
    n, rate, bound_s = prm["n"], prm["rate"], prof.bound_ms / 1000
    secret = secrets.token_hex(8)      # the API cannot make the answer up: it must ask

    def token(i):
        return f"{secret}-{i}"

    dep = _data_service("dep", token)
    dep.overloaded_p, dep.seed = prm.get("overloaded_p", 0.0), case.seed
    apis, crashes = [], []
    for a in range(prm.get("apis", 1)):
        policy = solution["choose_policy"](list(samples), prof.bound_ms, case.seed * 10 + a)
        apis.append(_api(f"api{a + 1}" if prm.get("apis", 1) > 1 else "api", policy,
                         solution["call_with_policy"], crashes))
    client_deadline = prm.get("client_deadline")
    deadline_s = bound_s * client_deadline if client_deadline else bound_s
    cut_off = CLIENT_GIVES_UP * bound_s
    starts: dict[str, float] = {}

    gc.collect()      # now rather than in the middle of the run
    async with Topology(*apis, dep, name=f"lab 5: {case.name}", seed=case.seed) as topo:
        await _warm_up(topo, apis, dep)
        if "capacity" in prm:       # a fixed service time, held in one of a few slots
            dep.limit(prm["capacity"], prof.median_ms / 1000)
        else:
            dep.faults.add(prof.latency())
        if prm.get("error_p"):
            dep.faults.add(Error(prm["error_p"], 503))
        if prm.get("hang_p"):
            dep.faults.add(Hang(), toxicity=prm["hang_p"])
        if "window" in prm:
            dep.faults.add(Hang(), start=prm["window"][0], end=prm["window"][1])
        if prm.get("down_s"):
            dep.faults.add(Error(1.0, 503), end=prm["down_s"])

        async def one(i):
            trace = f"r{case.seed}-{i}"
            api = apis[i % len(apis)].name
            starts[trace] = now()
            scope = (dl.scope(dl.Deadline.after(deadline_s)) if client_deadline
                     else nullcontext())
            with scope:
                got = await topo.call(api, "GET", f"/work/{i}", trace_id=trace, timeout=cut_off)
            if got != {"id": i, "token": token(i)}:
                raise AssertionError(f"request {i} got {got!r}, not the dependency's answer")

        gc.disable()  # a collection in the middle of the run would be timed as latency
        try:
            res = await load.open_loop(one, rate=rate, n=n,
                                       max_seconds=n / rate + cut_off + 0.5, progress=False,
                                       label=case.name)
        finally:
            gc.enable()
        await asyncio.sleep(0.02)         # let cancelled calls record their spans
        spans = topo.tracer.df()
    for e in crashes:
        if isinstance(e, NotImplementedError):
            raise NotImplementedError(str(e))
    calls = spans[spans.callee == "dep"]
    # A call refused by the caller itself because the deadline had passed never left it.
    sent = calls[~((calls.status == "deadline") & (calls.duration_ms < 0.5))]
    df = res.df
    lat = [min(x, cut_off * 1000) for x in df["latency_ms"]]
    hung = int(df["error"].isin(["timeout", "unfinished"]).sum())
    # Overloaded answers, from the dependency's own record: was the same request sent again?
    seen_shed, retried = set(), []
    for trace, _, shed in dep.arrivals:
        if trace in seen_shed:
            retried.append(trace)
        if shed:
            seen_shed.add(trace)
    late = []
    allowed_ms = (deadline_s + (LATENCY_MARGIN - 1) * bound_s) * 1000
    for trace, end in sent.groupby("trace_id")["end"].max().items():
        if trace in starts:
            took = end - (starts[trace] - topo.tracer.t0) * 1000
            if took > allowed_ms:
                late.append((trace, took / (deadline_s * 1000)))
    timeouts = sent[sent.status == "timeout"]
    return Run(n=n, ok=int(df["ok"].sum()), latencies_ms=lat, hung=hung,
               reached=len(dep.arrivals), traced=len(sent),
               statuses=Counter(str(s) for s in sent.status),
               retried_overloaded=sorted(set(retried)), late=late,
               short_timeouts=int((timeouts.duration_ms < quantile(samples, 0.99)).sum()),
               deadline_cut=int((sent.status == "deadline").sum()), crashes=crashes)


def _figures(run: Run, case: Case) -> str:
    prof = PROFILES[case.params["profile"]]
    p99 = float(np.percentile(run.latencies_ms, 99))
    return (f"[measured: {run.ok}/{run.n} answered right ({run.ok / run.n:.0%}, floor "
            f"{case.params['floor']:.0%}); p99 latency {p99 / prof.bound_ms:.2f}x the "
            f"{prof.bound_ms:.0f} ms bound; {max(run.reached, run.traced) / run.n:.2f} calls "
            f"reached the "
            f"dependency per request (limit {AMPLIFICATION_LIMIT}); dependency calls by "
            f"outcome: {dict(sorted(run.statuses.items()))}]")


async def _run(solution: dict, case: Case) -> None:
    run = await _run_case(solution, case)
    prof = PROFILES[case.params["profile"]]
    figures = _figures(run, case)
    if run.crashes:
        e = run.crashes[0]
        figures += (f" Note: call_with_policy raised {type(e).__name__}: {e} in "
                    f"{len(run.crashes)} requests (it should return the answer or raise the "
                    f"last CallError).")
    # The dependency's own count, unless the trace has more (a record is never trusted alone).
    amplification = max(run.reached, run.traced) / run.n
    p99 = float(np.percentile(run.latencies_ms, 99)) / prof.bound_ms
    floor = case.params["floor"]

    assert run.reached <= run.traced, (
        f"{run.reached} calls reached the dependency but only {run.traced} are in the trace: "
        f"make every call with service.call(...) so that it is traced and timed. {figures}")
    assert run.hung == 0, (
        f"{run.hung} of {run.n} requests got no answer before the client gave up "
        f"({CLIENT_GIVES_UP:.0f}x the bound): a call waited for a dependency that never "
        f"answers. Does every call have a timeout? {figures}")
    assert not run.retried_overloaded, (
        f"the dependency answered 'overloaded' (503, CallError.kind == 'overloaded') and "
        f"{len(run.retried_overloaded)} requests sent the call again (e.g. trace "
        f"{run.retried_overloaded[0]}): a server that sheds load asks for less traffic; "
        f"never retry that answer. {figures}")
    assert p99 <= LATENCY_MARGIN, (
        f"the p99 end-to-end latency was {p99:.2f}x the {prof.bound_ms:.0f} ms bound (limit "
        f"{LATENCY_MARGIN}x): timeouts x attempts + backoff exceed the time there is; one "
        f"deadline must cover every attempt. {figures}")
    if run.late:
        trace, ratio = max(run.late, key=lambda t: t[1])
        what = ("the client's own deadline (it sent one: the X-Toy-Deadline-Ms header)"
                if case.params.get("client_deadline") else f"the {prof.bound_ms:.0f} ms bound")
        raise AssertionError(
            f"{len(run.late)} requests had calls still running after {what}: the latest, "
            f"trace {trace}, ended at {ratio:.2f}x it (allowed: {LATENCY_MARGIN - 1:.0%} of the "
            f"bound past it). Work for a client that has gone is wasted: one deadline must "
            f"cover every attempt. {figures}")
    assert amplification <= AMPLIFICATION_LIMIT, (
        f"{max(run.reached, run.traced)} calls reached the dependency for {run.n} client "
        f"requests: {amplification:.2f} per request (limit {AMPLIFICATION_LIMIT}). Retries "
        f"while the dependency is failing multiply its load; bound them with a retry budget. "
        f"{figures}")
    if run.ok / run.n < floor:
        hint = ""
        if run.short_timeouts:
            hint = (f" {run.short_timeouts} calls timed out sooner than the measured p99 of "
                    f"the dependency: false timeouts, which healthy calls hit too; choose "
                    f"the timeout from the measured tail.")
        elif run.deadline_cut and not run.statuses.get("timeout"):
            hint = (f" {run.deadline_cut} calls ran until the deadline cut them: with no "
                    f"timeout of their own, no time was left for a retry.")
        elif case.params.get("error_p") or case.params.get("hang_p"):
            hint = " Transient failures (5xx, timeouts) need a retry, within the budget."
        raise AssertionError(f"only {run.ok} of {run.n} requests were answered right "
                             f"({run.ok / run.n:.0%}; floor {floor:.0%}).{hint} {figures}")


async def check(*, choose_policy, call_with_policy, only: str | None = None,
                stop_after: int | None = None) -> Report:
    """Grade a solution: ``await check(choose_policy=..., call_with_policy=...)``.

    ``only`` replays one case by name; ``stop_after=1`` stops at the smallest failing case.
    """
    if not callable(choose_policy):
        raise TypeError(f"choose_policy must be a function (latencies_ms, bound_ms, seed) -> "
                        f"policy; got {choose_policy!r}")
    if not asyncio.iscoroutinefunction(call_with_policy):
        raise TypeError(f"call_with_policy must be an async function (service, target, path, "
                        f"policy); got {call_with_policy!r}")
    solution = {"choose_policy": choose_policy, "call_with_policy": call_with_policy}
    return await grade(LAB, CASES, _run, solution, only=only, stop_after=stop_after)


def quantile(latencies_ms, q: float) -> float:
    """The ``q`` quantile of a list of latencies (linear interpolation, like numpy's)."""
    if not len(latencies_ms):
        raise ValueError("latencies_ms must not be empty")
    v.probability("q", q)
    return float(np.quantile(np.asarray(latencies_ms, dtype=float), q))
