"""Lab 5, No timeouts: choose timeouts and a retry policy that meet a latency bound without
amplifying load beyond a limit.

The reader writes two functions (see labs/ch05_timeouts_lab.ipynb):

* ``choose_policy(latencies_ms, bound_ms, seed)``: given the dependency's *measured* latencies
  (a list of milliseconds, from healthy calls) and the latency the API promises its clients,
  return a policy: any object the reader likes (a timeout, an attempt limit, a backoff, a retry
  budget, a random generator seeded with ``seed``...). It is called **once per API process**,
  and what it returns is handed to every call that process makes (every API *instance* the
  process runs shares it), so it is the place for per-process state such as a retry budget.
* ``async call_with_policy(service, target, path, policy)``: make the GET call
  ``service.call(target, "GET", path, ...)`` under the policy, returning the JSON answer or
  raising the last :class:`~toylib.core.services.CallError`.

``check`` puts them in a real topology, client -> API -> dependency, where the checker wrote
the API's handler (``return await call_with_policy(api, "dep", path, policy)``) and the
dependency, and runs seeded fault scenarios against it: a slow lognormal tail (two latency
profiles), transient 5xx errors, calls that hang, a window in which every call hangs, an
"overloaded" answer that must not be retried, outages from a fraction of a second to longer
than any budget's saved-up burst (at a low rate, where a budget that refills with time rather
than with requests lets too many retries through), several API processes and several API
instances in one process sharing the dependency, requests arriving all at once, a client that
sends a tighter deadline, and generated scenarios (Hypothesis, seeded, shrunk on failure).

**Graded from the outside.** Everything is measured outside the solution: the client's own
latencies and answers, the topology's trace, and what reached the dependency's server (so a
call that bypasses ``service.call`` is caught). A case passes when

* every request is answered (no request waits until the client gives up),
* the p99 end-to-end latency is within the bound (with a margin for the machine's own noise),
* no call made for a request is still running after that request's deadline (the bound, or the
  client's own deadline when it sends one),
* no call is sent again after the dependency answered "overloaded",
* calls reaching the dependency per client request stay within the amplification limit,
* and the share of requests answered with the right data reaches the scenario's floor.

**Robust to load.** The dependency's latencies handed to ``choose_policy`` are measured in
each case, in the same topology, just before its faults start (not once per process: a burst
of load during one sample would skew every later case). The event loop's lateness is sampled
for the whole case. A case that fails on a timing criterion (latency, deadline, success
floor, or requests that queued or timed out until the client gave up, in a run too busy to
time) is run again, with a fresh calibration, before it fails. A run where the loop was late
by more than a tenth of the bound, or where healthy calls took more than a quarter longer than
the injected delay, is too busy to time: the case pauses and runs again, and one that only
failed in such runs gets a second chance once the other cases have run (grading.grade); if it is
still too busy it is reported as "not graded: the machine was too busy", never as the
solution's fault. Counts (calls reaching the dependency, retries after "overloaded", untraced
calls, a call that started in time and never timed out) fail at once: a busy machine cannot
raise them.

Backoff jitter is not graded: with at most a few tries inside the bound, retries in lockstep
do no measurable harm here (chapter 5's Experiment 4 shows where they do), so a checker that
failed them would be grading the code, not its effect.
"""
from __future__ import annotations

import asyncio
import gc
import math
import random
import secrets
from collections import Counter
from contextlib import nullcontext
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from aiohttp import web

from toylib.core import deadline as dl
from toylib.core import load
from toylib.core import validate as v
from toylib.core.clock import now
from toylib.core.faults import Error, Hang, Latency
from toylib.core.services import CallError, Service, Topology
from toylib.labs.grading import Case, CaseFailed, Report, TooBusy, grade, search, window

LAB = "Lab 5 (timeouts and retries)"
AMPLIFICATION_LIMIT = 1.5   # calls reaching the dependency per client request, at most
LATENCY_MARGIN = 1.2        # measured / promised: p99 latency and call ends, for machine noise
CLIENT_GIVES_UP = 2.0       # x the bound: the client cuts a request off (counted as hung)
API_WORKERS = 16            # each API instance's worker pool (waiting when full)
CALIBRATION_N = 120         # healthy calls measured at the start of every case
CALIBRATION_TRIES = 3       # calibrations a case may take before the machine is too busy
TIMING_RUNS = 3             # runs of a case failing on timing before it fails
BUSY_RUNS = 8               # runs the machine was too busy to time, at most, before "not graded"
BUSY_PAUSE_S = 0.5          # after a busy run, x its number: a burst of load passes meanwhile
BUSY_BUDGET_S = 20.0        # a case stops waiting for a calm run after this long
BUSY_LAG = 0.1              # event-loop lateness (p99) above this share of the bound: too busy
BUSY_CALL = 1.25            # healthy median above this x the injected one (+5 ms): too busy
GENERATED_SEED = 20260605
GENERATED_EXAMPLES = 5
GENERATED_BUDGET_S = 6.0
CASE_TIMEOUT_S = 30.0       # a case runs up to TIMING_RUNS times, each with its calibration
MAX_REQUESTS = 400


@dataclass(frozen=True)
class Profile:
    """The dependency's healthy latency (lognormal: median, shape) and the API's promise."""
    name: str
    median_ms: float
    sigma: float
    bound_ms: float

    def __post_init__(self):
        v.number("median_ms", self.median_ms, low=1, high=1000)
        v.number("sigma", self.sigma, low=0, high=1)
        v.number("bound_ms", self.bound_ms, low=10, high=10_000)

    def latency(self) -> Latency:
        return Latency(self.median_ms, self.sigma * self.median_ms, "lognormal")


PROFILES = {
    # p50 20 ms, p99.9 about 90 ms: a 180 ms promise leaves room for one timeout and a retry
    "fast": Profile("fast", 20.0, 0.5, 180.0),
    # p50 80 ms, p99.9 about 200 ms: a timeout copied from "fast" fails here
    "slow": Profile("slow", 80.0, 0.3, 500.0),
}


def _profile(prm: dict) -> Profile:
    p = prm["profile"]
    return PROFILES[p] if isinstance(p, str) else Profile("generated", *p)


def _cases() -> list[Case]:
    def case(name, n, seed, profile="fast", floor=0.98, rate=100.0, **kw):
        return Case(name, n, seed, {"profile": profile, "n": n, "rate": rate, "floor": floor,
                                    **kw})
    return [
        case("burst", 24, 511, rate=2000.0),                        # all at once: concurrency
        # two instances at 200 requests/s on a 50 ms dependency: about 20 calls in flight, so a
        # queue in front of the calls (a small bulkhead) must be inside the deadline too
        case("queue", 60, 513, profile=(50.0, 0.3, 378.0), floor=0.5, rate=200.0, instances=2),
        case("hang-window", 16, 504, floor=0.5, rate=16.0, window=(0.0, 0.3)),
        case("tail-fast", 30, 501),                                   # latency only
        case("tail-slow", 30, 502, profile="slow"),
        case("overloaded", 30, 503, floor=0.6, overloaded_p=0.25),   # shed: never retry
        case("shared-budget", 32, 510, floor=0.0, instances=8, down=((0.0, None),)),
        case("outage", 40, 505, floor=0.0, down=((0.0, None),)),     # down for the whole run
        case("client-deadline", 40, 506, floor=0.7, hang_p=0.1, client_deadline=0.5),
        case("long-outage", 40, 512, floor=0.0, rate=20.0, down=((0.0, None),)),
        case("errors", 60, 507, floor=0.95, error_p=0.1),            # transient 503s
        case("hangs", 60, 508, floor=0.9, hang_p=0.15),
        case("shared-recovery", 80, 509, floor=0.3, rate=200.0, processes=4,
             down=((0.0, 0.25),), capacity=8),
    ]


CASES = _cases()


def _what(prm: dict) -> str:
    parts = []
    if prm.get("processes", 1) > 1:
        parts.append(f"{prm['processes']} API processes share it")
    if prm.get("instances", 1) > 1:
        parts.append(f"{prm['instances']} API instances in one process share it (and one "
                     f"policy)")
    for a, b in prm.get("down", ()):
        parts.append("down (503) for the whole run" if b is None and a == 0 else
                     f"down (503) from {a * 1000:.0f} to "
                     f"{'the end' if b is None else f'{b * 1000:.0f} ms'}")
    if prm.get("capacity"):
        parts.append(f"then {prm['capacity']} calls at a time")
    if prm.get("overloaded_p"):
        parts.append(f"answers 'overloaded' (503, do not retry) to {prm['overloaded_p']:.0%} "
                     f"of calls")
    if "window" in prm:
        a, b = prm["window"]
        parts.append(f"every call hangs from {a * 1000:.0f} to {b * 1000:.0f} ms")
    if prm.get("error_p"):
        parts.append(f"{prm['error_p']:.0%} of calls fail at once (503, transient)")
    if prm.get("hang_p"):
        parts.append(f"{prm['hang_p']:.0%} of calls hang (accepted, never answered)")
    if prm.get("client_deadline"):
        parts.append(f"the client sends a deadline of {prm['client_deadline']:.0%} of the "
                     f"bound")
    if prm.get("rate", 0) >= 1000:
        parts.append("every request arrives at once")
    return "; ".join(parts) or "nothing but its own latency tail"


def scenarios() -> pd.DataFrame:
    """The fixed cases as a table: what goes wrong in each, and what must hold (the generated
    cases are drawn by ``check`` from its seed)."""
    return pd.DataFrame([{
        "scenario": c.name, "seed": c.seed, "requests": c.params["n"],
        "per second": c.params["rate"], "latency profile": c.params["profile"],
        "bound (ms)": _profile(c.params).bound_ms,
        "the dependency": _what(c.params), "success floor": f"{c.params['floor']:.0%}"}
        for c in sorted(CASES, key=lambda c: (c.size, c.name))]).set_index("scenario")


# -- the dependency --------------------------------------------------------------------------------
class _Dependency(Service):
    """The dependency, which also records every request that reaches it, before any fault.

    The record is the server's own, so calls that do not go through ``service.call`` (and so
    are missing from the trace) are still counted. With ``overloaded_p`` it sheds a seeded
    share of requests at once with an explicit "overloaded" 503.
    """

    def __init__(self, name: str = "dep", token=lambda i: i):
        super().__init__(name, "state", label="Dependency")
        self.arrivals: list[tuple[str | None, float, bool]] = []   # (trace id, time, shed)
        self.overloaded_p, self.seed = 0.0, 0
        self.capacity, self.slots, self.busy_s = None, None, 0.0
        self.nth: Counter = Counter()

        @self.get("/data/{id}")
        async def data(request):
            i = int(request.match_info["id"])
            if self.capacity is not None:      # a recovering dependency serves a few at a time
                if self.slots.locked():
                    return web.json_response({"error": "busy, try again"}, status=503)
                async with self.slots:
                    await asyncio.sleep(self.busy_s)
            return {"id": i, "token": token(i)}

    def limit(self, capacity: int, busy_s: float) -> None:
        self.capacity, self.slots, self.busy_s = capacity, asyncio.Semaphore(capacity), busy_s

    def forget(self) -> None:
        self.arrivals.clear()
        self.nth.clear()

    async def _serve(self, request, handler, route, trace_id):
        nth = self.nth[trace_id]
        self.nth[trace_id] += 1
        shed = bool(self.overloaded_p) and random.Random(
            f"{self.seed}|shed|{trace_id}|{nth}").random() < self.overloaded_p
        self.arrivals.append((trace_id, now(), shed))
        if shed:
            return self._answer(web.json_response(
                {"error": "overloaded"}, status=503, headers={"X-Toy-Overloaded": "1"}), route)
        return await super()._serve(request, handler, route, trace_id)


def _api(name: str, policy, call_with_policy, crashes: list) -> Service:
    """The API the checker runs your code in: one handler, one call to the dependency.
    ``policy()`` returns the policy of this instance's process (chosen once per process)."""
    api = Service(name, "edge", label="API", uses=("dep",), max_concurrency=API_WORKERS,
                  when_full="wait")

    @api.get("/work/{id}")
    async def work(request):
        try:
            return await call_with_policy(api, "dep", f"/data/{request.match_info['id']}",
                                          policy())
        except (CallError, web.HTTPException, asyncio.CancelledError):
            raise
        except Exception as e:     # noted for the report; the client gets a 500
            crashes.append(e)
            raise

    return api


async def measured_latencies(profile: str, n: int = 400) -> list[float]:
    """``n`` healthy calls to a dependency with ``profile``'s latency, timed as a caller sees
    them (ms), measured now (each case of ``check`` measures its own, in its own topology)."""
    prof = PROFILES[v.one_of("profile", profile, PROFILES)]
    v.number("n", n, low=10, high=5000, integer=True)
    dep = _Dependency()
    dep.faults.add(prof.latency())
    async with Topology(dep, name="measuring the dependency", seed=1) as topo:
        res = await load.closed_loop(
            lambda i: topo.call("dep", "GET", f"/data/{i}", trace_id=f"m{i}"),
            n=n, concurrency=50, progress=False, label="dependency latency")
    return [round(x, 3) for x in res.latencies]


# -- one run of a case ---------------------------------------------------------------------------
class _Lag:
    """The event loop's lateness, sampled every 5 ms for as long as the block runs."""

    def __init__(self):
        self.late_ms: list[float] = []
        self._task = None

    async def _run(self):
        while True:
            t0 = now()
            await asyncio.sleep(0.005)
            self.late_ms.append(max(0.0, (now() - t0 - 0.005) * 1000))

    async def __aenter__(self):
        self._task = asyncio.get_running_loop().create_task(self._run())
        return self

    async def __aexit__(self, *exc):
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)

    @property
    def p99_ms(self) -> float:
        return float(np.percentile(self.late_ms, 99)) if self.late_ms else 0.0

    @property
    def max_ms(self) -> float:
        return max(self.late_ms, default=0.0)


@dataclass
class Run:
    """What one run of a case measured: per request, and per call."""
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
    history: list[dict] = field(default_factory=list)   # one row per request
    lag_p99_ms: float = 0.0
    lag_max_ms: float = 0.0
    calibration_p50_ms: float = 0.0


async def _calibrate(topo: Topology, api: str, dep: _Dependency, prof: Profile) -> list[float]:
    """Healthy calls from the API to the dependency, in this topology, now; retaken when a
    burst of load made them slow (the median far above the injected one)."""
    rule = dep.faults.add(prof.latency())
    try:
        for attempt in range(CALIBRATION_TRIES):
            res = await load.closed_loop(
                lambda i: topo.call("dep", "GET", f"/data/{i}", caller=api,
                                    trace_id=f"cal{attempt}-{i}"),
                n=CALIBRATION_N, concurrency=20, progress=False, max_seconds=10)
            lat = [float(x) for x in res.latencies]
            if len(lat) >= CALIBRATION_N // 2 and \
                    np.median(lat) <= 2 * prof.median_ms + 10:
                return lat
        raise TooBusy(f"the dependency's healthy median measured {np.median(lat):.0f} ms "
                      f"against the {prof.median_ms:.0f} ms it was given, "
                      f"{CALIBRATION_TRIES} times")
    finally:
        dep.faults.remove(rule)
        topo.tracer.clear()
        dep.forget()


async def _run_case(solution: dict, case: Case) -> Run:
    prm = case.params
    prof = _profile(prm)
    n, rate, bound_s = prm["n"], prm["rate"], prof.bound_ms / 1000
    secret = secrets.token_hex(8)      # the API cannot make the answer up: it must ask

    def token(i):
        return f"{secret}-{i}"

    dep = _Dependency("dep", token)
    dep.overloaded_p, dep.seed = prm.get("overloaded_p", 0.0), case.seed
    processes, instances = prm.get("processes", 1), prm.get("instances", 1)
    names = [f"api{p + 1}" + (f"-{j + 1}" if instances > 1 else "")
             for p in range(processes) for j in range(instances)]
    if len(names) == 1:
        names = ["api"]
    client_deadline = prm.get("client_deadline")
    deadline_s = bound_s * client_deadline if client_deadline else bound_s
    cut_off = CLIENT_GIVES_UP * bound_s
    starts: dict[str, float] = {}
    crashes: list = []
    holders = [{} for _ in range(processes)]     # each process's policy, once it is chosen

    apis = [_api(name, (lambda p=k // instances: holders[p]["policy"]),
                 solution["call_with_policy"], crashes) for k, name in enumerate(names)]

    gc.collect()      # now rather than in the middle of the run
    async with _Lag() as lag, Topology(*apis, dep, name=f"lab 5: {case.name}",
                                       seed=case.seed) as topo:
        for api in apis:                  # open the connections before the clock matters
            await topo.call(api.name, "GET", "/health", trace_id="warm-up")
            await topo.call("dep", "GET", "/health", caller=api.name, trace_id="warm-up")
        samples = await _calibrate(topo, apis[0].name, dep, prof)
        for p in range(processes):
            holders[p]["policy"] = solution["choose_policy"](list(samples), prof.bound_ms,
                                                             case.seed * 10 + p)
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
        for a, b in prm.get("down", ()):
            dep.faults.add(Error(1.0, 503), start=a, end=b)

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
            return {"answer": "right"}

        gc.disable()  # a collection in the middle of the run would be timed as latency
        try:
            res = await load.open_loop(one, rate=rate, n=n,
                                       max_seconds=n / rate + cut_off + 0.5, progress=False,
                                       label=case.name)
        finally:
            gc.enable()
        await asyncio.sleep(0.02)         # let cancelled calls record their spans
        spans = topo.tracer.df()
        t0 = topo.tracer.t0
        # What the solution raised while the run lasted. Handlers the load gave up on still
        # run while the topology shuts down; what they raise then ("Session is closed") is
        # the harness's doing, never the solution's.
        crashes = list(crashes)
    for e in crashes:
        if isinstance(e, NotImplementedError):
            raise NotImplementedError(str(e))
    return _measure(case, res, spans, t0, dep, starts, samples, deadline_s, bound_s, cut_off,
                    crashes, lag)


def _measure(case, res, spans, t0, dep, starts, samples, deadline_s, bound_s, cut_off,
             crashes, lag) -> Run:
    n = case.params["n"]
    calls = spans[spans.callee == "dep"] if len(spans) else spans
    if len(calls):
        # A call refused by the caller itself because the deadline had passed never left it.
        sent = calls[~((calls.status == "deadline") & (calls.duration_ms < 0.5))]
    else:
        sent = calls
    df = res.df
    lat = [min(x, cut_off * 1000) for x in df["latency_ms"]]
    hung = int(df["error"].isin(["timeout", "unfinished"]).sum())
    seen_shed, retried = set(), []
    reached_by: Counter = Counter()
    for trace, _, shed in dep.arrivals:
        reached_by[trace] += 1
        if trace in seen_shed:
            retried.append(trace)
        if shed:
            seen_shed.add(trace)
    traced_by = Counter(sent["trace_id"]) if len(sent) else Counter()
    timed_out_by = (Counter(sent.loc[sent.status == "timeout", "trace_id"]) if len(sent)
                    else Counter())
    last_end = sent.groupby("trace_id")["end"].max() if len(sent) else pd.Series(dtype=float)
    first_start = (sent.groupby("trace_id")["start"].min() if len(sent)
                   else pd.Series(dtype=float))
    late, allowed_ms = [], (deadline_s + (LATENCY_MARGIN - 1) * bound_s) * 1000
    ends = {}
    for trace, end in last_end.items():
        if trace in starts:
            took = end - (starts[trace] - t0) * 1000
            ends[trace] = took
            if took > allowed_ms:
                late.append((trace, took / (deadline_s * 1000)))
    history = []
    for r in df.itertuples():
        trace = f"r{case.seed}-{int(r.i)}"
        answer = "right answer" if r.ok else (r.error or "?")
        began = first_start.get(trace)
        waited = (float(began) - (starts[trace] - t0) * 1000) if began is not None \
            and trace in starts else math.inf
        history.append({"request": int(r.i), "due ms": round(r.due),
                        "first call after ms": round(waited) if math.isfinite(waited) else "-",
                        "answer": answer, "latency ms": round(min(r.latency_ms,
                                                                   cut_off * 1000)),
                        "calls reaching dep": max(reached_by[trace], traced_by[trace]),
                        "last call ended ms": round(ends.get(trace, 0.0)),
                        "timed out": timed_out_by[trace], "trace": trace})
    timeouts = sent[sent.status == "timeout"] if len(sent) else sent
    p99 = quantile(samples, 0.99)
    return Run(n=n, ok=int(df["ok"].sum()), latencies_ms=lat, hung=hung,
               reached=len(dep.arrivals), traced=len(sent),
               statuses=Counter(str(s) for s in sent.status) if len(sent) else Counter(),
               retried_overloaded=sorted(set(retried)), late=late,
               short_timeouts=int((timeouts.duration_ms < p99).sum()) if len(timeouts) else 0,
               deadline_cut=int((sent.status == "deadline").sum()) if len(sent) else 0,
               crashes=crashes, history=history, lag_p99_ms=lag.p99_ms, lag_max_ms=lag.max_ms,
               calibration_p50_ms=float(np.median(samples)))


# -- judging a run ---------------------------------------------------------------------------------
def _figures(run: Run, case: Case) -> str:
    prof = _profile(case.params)
    p99 = float(np.percentile(run.latencies_ms, 99))
    return (f"[measured: {run.ok}/{run.n} answered right ({run.ok / run.n:.0%}, floor "
            f"{case.params['floor']:.0%}); p99 latency {p99 / prof.bound_ms:.2f}x the "
            f"{prof.bound_ms:.0f} ms bound; {max(run.reached, run.traced) / run.n:.2f} calls "
            f"reached the dependency per request (limit {AMPLIFICATION_LIMIT}); dependency "
            f"calls by outcome: {dict(sorted(run.statuses.items()))}; calibration in this run: "
            f"healthy median {run.calibration_p50_ms:.0f} ms, event-loop lag p99 "
            f"{run.lag_p99_ms:.1f} ms]")


def _expected(case: Case) -> dict:
    prof = _profile(case.params)
    return {"expected": f"answered in <= {LATENCY_MARGIN * prof.bound_ms:.0f} ms, calls "
                        f"<= {AMPLIFICATION_LIMIT} per request on average"}


def _history(run: Run, case: Case, at_trace: str | None) -> str:
    rows = [{**r, **_expected(case)} for r in run.history]
    if not rows:
        return ""
    at = next((k for k, r in enumerate(rows) if r["trace"] == at_trace), 0)
    return ("  The requests around the first one that went wrong (actual beside expected):\n"
            + window(rows, at, before=4, after=3,
                     columns=("request", "due ms", "answer", "latency ms", "first call after ms",
                              "calls reaching dep", "last call ended ms", "expected")))


@dataclass
class _Verdict:
    message: str
    timing: bool
    at: str | None = None     # the trace of the request where it went wrong


def _judge(run: Run, case: Case) -> _Verdict | None:
    """The first failed criterion of this run (counts first: they cannot be noise)."""
    prof = _profile(case.params)
    figures = _figures(run, case)
    amplification = max(run.reached, run.traced) / run.n
    p99 = float(np.percentile(run.latencies_ms, 99)) / prof.bound_ms
    floor = case.params["floor"]
    hist = run.history

    def first(pred):
        return next((r["trace"] for r in hist if pred(r)), None)

    if run.reached > run.traced:
        return _Verdict(
            f"{run.reached} calls reached the dependency but only {run.traced} are in the "
            f"trace: make every call with service.call(...) so that it is traced and timed. "
            f"{figures}", False, first(lambda r: r["calls reaching dep"] > 0))
    if run.retried_overloaded:
        return _Verdict(
            f"the dependency answered 'overloaded' (503, CallError.kind == 'overloaded') and "
            f"{len(run.retried_overloaded)} requests sent the call again (e.g. trace "
            f"{run.retried_overloaded[0]}): a server that sheds load asks for less traffic; "
            f"never retry that answer. {figures}", False, run.retried_overloaded[0])
    if amplification > AMPLIFICATION_LIMIT:
        return _Verdict(
            f"{max(run.reached, run.traced)} calls reached the dependency for {run.n} client "
            f"requests: {amplification:.2f} per request (limit {AMPLIFICATION_LIMIT}). Retries "
            f"while the dependency is failing multiply its load; bound them with a retry "
            f"budget, one per process, that refills with requests, not with time. {figures}",
            False, first(lambda r: r["calls reaching dep"] > 1))
    if run.crashes:
        e = run.crashes[0]
        return _Verdict(
            f"call_with_policy raised {type(e).__name__}: {e} in {len(run.crashes)} of "
            f"{run.n} requests: it should return the answer or raise the last CallError. "
            f"{figures}", False, None)
    if run.hung:
        hung = [r for r in hist if r["answer"] in ("timeout", "unfinished")]
        waited = [r for r in hung if r["first call after ms"] == "-"
                  or r["first call after ms"] > prof.bound_ms / 2]
        if waited:
            why = (f"{len(waited)} of them waited {prof.bound_ms / 2:.0f} ms or more before "
                   f"their first call (a lock, a queue or a pool outside the deadline?): one "
                   f"deadline must cover every attempt, and any waiting before the first")
        elif hung and all(r["timed out"] for r in hung):
            why = ("their calls had timeouts, but the attempts together outlasted the "
                   "client: one deadline must cover every attempt")
        else:
            why = ("a call waited for a dependency that never answers. Does every call have "
                   "a timeout?")
        # A right solution misses twice the bound only on a machine too busy to time it: a
        # loop late by half the bound at once, or slow throughout (requests queue up before
        # their first call, or their attempts run late); such a run is timed again rather
        # than failed. A call that started in time and never timed out is no machine's doing.
        slow = bool(waited) or bool(hung and all(r["timed out"] for r in hung))
        return _Verdict(
            f"{run.hung} of {run.n} requests got no answer before the client gave up "
            f"({CLIENT_GIVES_UP:.0f}x the bound): {why} {figures}",
            run.lag_max_ms > prof.bound_ms / 2 or (slow and bool(_too_busy(run, case))),
            hung[0]["trace"] if hung else None)
    if p99 > LATENCY_MARGIN:
        slowest = max(hist, key=lambda r: r["latency ms"])["trace"] if hist else None
        return _Verdict(
            f"the p99 end-to-end latency was {p99:.2f}x the {prof.bound_ms:.0f} ms bound "
            f"(limit {LATENCY_MARGIN}x): timeouts x attempts + backoff (and any waiting before "
            f"the first call) exceed the time there is; one deadline must cover every attempt. "
            f"{figures}", True, slowest)
    if run.late:
        trace, ratio = max(run.late, key=lambda t: t[1])
        what = ("the client's own deadline (it sent one: the X-Toy-Deadline-Ms header)"
                if case.params.get("client_deadline") else f"the {prof.bound_ms:.0f} ms bound")
        return _Verdict(
            f"{len(run.late)} requests had calls still running after {what}: the latest, "
            f"trace {trace}, ended at {ratio:.2f}x it (allowed: {LATENCY_MARGIN - 1:.0%} of "
            f"the bound past it). Work for a client that has gone is wasted: one deadline must "
            f"cover every attempt. {figures}", True, trace)
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
        return _Verdict(f"only {run.ok} of {run.n} requests were answered right "
                        f"({run.ok / run.n:.0%}; floor {floor:.0%}).{hint} {figures}", True,
                        first(lambda r: r["answer"] != "right answer"))
    return None


def _too_busy(run: Run, case: Case) -> str:
    """Why this run could not time the case ('' when it could): the event loop woke up late
    by more than BUSY_LAG of the bound, or every healthy call took far longer than the
    dependency's injected delay (the machine's own share of each call)."""
    prof = _profile(case.params)
    if run.lag_p99_ms > BUSY_LAG * prof.bound_ms:
        return (f"the event loop woke up {run.lag_p99_ms:.0f} ms late (p99), more than "
                f"{BUSY_LAG:.0%} of the {prof.bound_ms:.0f} ms bound")
    if run.calibration_p50_ms > BUSY_CALL * prof.median_ms + 5:
        return (f"healthy calls took {run.calibration_p50_ms:.0f} ms (median) for a "
                f"{prof.median_ms:.0f} ms delay: the machine added more than "
                f"{BUSY_CALL - 1:.0%} to every call")
    return ""


async def _run(solution: dict, case: Case, replay: str = "", *,
               patience: int = BUSY_RUNS) -> None:
    """Run ``case``; a failure on timing is run again (fresh calibration) before it counts,
    and one that failed only in runs the machine was too busy to time is not graded.

    A run the machine was too busy to time (its own calibration says so) does not count
    towards the :data:`TIMING_RUNS`: the case pauses a little and runs again, so that a
    burst of load (a program starting, an install) passes, up to ``patience`` such runs
    and :data:`BUSY_BUDGET_S`; a machine busy throughout gets "not graded". (A generated
    case, one of several inside a time budget, has a patience of 1.)"""
    timed_runs, busy_runs, timed, busy_why = 0, 0, None, ""
    started = now()
    while timed_runs < TIMING_RUNS:
        try:
            run = await _run_case(solution, case)
        except TooBusy as e:          # its calibration could not get a calm sample
            run, verdict, busy_why = None, None, str(e)
        else:
            verdict = _judge(run, case)
            if verdict is None:
                return
            if not verdict.timing:
                break
            busy_why = _too_busy(run, case)
        if run is not None and not busy_why:
            timed_runs += 1
            timed = (run, verdict)      # a run the machine could time tells the mistake best
            continue
        busy_runs += 1
        if busy_runs >= patience or now() - started > BUSY_BUDGET_S:
            break
        await asyncio.sleep(BUSY_PAUSE_S * busy_runs)
    if timed is None and (verdict is None or verdict.timing):
        what = f"; what the last run measured: {verdict.message.split(' [')[0]}" \
            if verdict is not None else ""
        raise TooBusy(f"{case.name}: in {busy_runs} runs the machine was too busy to time it "
                      f"(the last: {busy_why}){what}")
    if verdict is None or verdict.timing:
        run, verdict = timed
    again = (f" (failed {timed_runs} run(s) the machine could time"
             + (f", and {busy_runs} it was too busy to time)" if busy_runs else ")")
             if verdict.timing else "")
    raise CaseFailed(verdict.message + again, detail=_history(run, case, verdict.at),
                     replay=replay)


# -- generated cases (Hypothesis, seeded, shrunk) --------------------------------------------------
def _strategy():
    from hypothesis import strategies as st

    @st.composite
    def params(draw):
        median = draw(st.sampled_from([15.0, 20.0, 30.0, 50.0]))
        sigma = draw(st.sampled_from([0.2, 0.3, 0.5]))
        p999 = median * math.exp(sigma * 3.09)
        bound = float(round(2.2 * p999 + 2 * median))     # one timeout, then one more try
        rate = draw(st.sampled_from([20.0, 50.0, 100.0, 200.0]))
        n = draw(st.integers(8, 60))
        out = {"profile": (median, sigma, bound), "n": n, "rate": rate,
               "processes": draw(st.integers(1, 3)), "instances": draw(st.integers(1, 3))}
        fault = draw(st.sampled_from(["none", "down", "outage-window", "errors", "hangs",
                                      "overloaded"]))
        run_s = n / rate
        ok_share = 1.0
        if fault == "down":
            out["down"] = ((0.0, None),)
            ok_share = 0.0
        elif fault == "outage-window":
            a = draw(st.sampled_from([0.0, 0.25, 0.5])) * run_s
            length = draw(st.sampled_from([0.25, 0.5])) * run_s
            out["down"] = ((round(a, 3), round(a + length, 3)),)
            ok_share = 1 - length / run_s
        elif fault == "errors":
            out["error_p"] = draw(st.sampled_from([0.05, 0.1, 0.2]))
        elif fault == "hangs":
            out["hang_p"] = draw(st.sampled_from([0.05, 0.1]))
            ok_share = 1 - out["hang_p"]
        elif fault == "overloaded":
            out["overloaded_p"] = draw(st.sampled_from([0.1, 0.2]))
            ok_share = 1 - out["overloaded_p"]
        # a floor any sound policy clears with room: half the share the faults leave
        out["floor"] = round(0.5 * ok_share, 2)
        return out
    return params()


def _size(params: dict) -> int:
    return params["n"] * params.get("processes", 1) * params.get("instances", 1)


def _search(solution: dict, seed: int, examples: int, budget_s: float):
    """The smallest failing generated case within the budget (see grading.search)."""
    def attempt(params: dict):
        try:
            asyncio.run(_run(solution, Case("generated", _size(params), seed, params),
                             patience=1))
        except TooBusy:
            return None                    # not the solution's fault: not a failure
        except Exception as e:
            return e
        return None

    return search(_strategy(), attempt, seed=seed, examples=examples, budget_s=budget_s)


async def _generated(solution: dict, case: Case) -> None:
    seed, examples = case.params["seed"], case.params["examples"]
    found, error, runs = await asyncio.to_thread(_search, solution, seed, examples,
                                                 GENERATED_BUDGET_S)
    if found is None:
        return
    replay = (f"await timeouts_lab.replay(choose_policy=..., call_with_policy=..., "
              f"params={found!r}, seed={seed})")
    if isinstance(error, NotImplementedError):
        raise error
    message = str(error) if isinstance(error, AssertionError) else \
        f"{type(error).__name__}: {error}"
    raise CaseFailed(
        f"a generated case failed (seed {seed}, {runs} cases run); Hypothesis shrank it to "
        f"{found} ({_what(found)}):\n  {message}",
        detail=getattr(error, "detail", ""), replay=replay)


async def _grade_case(solution: dict, case: Case) -> None:
    if case.name == "generated":
        await _generated(solution, case)
    else:
        await _run(solution, case)


# -- the public face -------------------------------------------------------------------------------
def _check_solution(choose_policy, call_with_policy) -> dict:
    if not callable(choose_policy):
        raise TypeError(f"choose_policy must be a function (latencies_ms, bound_ms, seed) -> "
                        f"policy; got {choose_policy!r}")
    if not asyncio.iscoroutinefunction(call_with_policy):
        raise TypeError(f"call_with_policy must be an async function (service, target, path, "
                        f"policy); got {call_with_policy!r}")
    return {"choose_policy": choose_policy, "call_with_policy": call_with_policy}


def cases_for(seed: int = GENERATED_SEED, examples: int = GENERATED_EXAMPLES) -> list[Case]:
    """The fixed cases and the generated one (drawn from ``seed``)."""
    return CASES + [Case("generated", 1000, seed, {"seed": seed, "examples": examples,
                                                   "profile": "fast", "floor": 0.0,
                                                   "n": 0, "rate": 0.0})]


async def check(*, choose_policy, call_with_policy, only: str | None = None,
                stop_after: int | None = None, seed: int = GENERATED_SEED,
                examples: int = GENERATED_EXAMPLES) -> Report:
    """Grade a solution: ``await check(choose_policy=..., call_with_policy=...)``.

    ``only`` replays one case by name; ``stop_after=1`` stops at the smallest failing case;
    ``seed`` seeds the generated cases (the report prints it), ``examples`` is how many are
    drawn (0: none).
    """
    solution = _check_solution(choose_policy, call_with_policy)
    v.number("seed", seed, low=0, high=2**32 - 1, integer=True)
    v.number("examples", examples, low=0, high=100, integer=True)
    cases = cases_for(seed, examples) if examples else list(CASES)
    return await grade(LAB, cases, _grade_case, solution, only=only, stop_after=stop_after,
                       timeout=CASE_TIMEOUT_S + GENERATED_BUDGET_S, attempts=1)


async def replay(*, choose_policy, call_with_policy, params: dict,
                 seed: int = GENERATED_SEED) -> Report:
    """Replay one generated case exactly (the ``params`` a report printed)."""
    solution = _check_solution(choose_policy, call_with_policy)
    if not isinstance(params, dict) or not {"profile", "n", "rate", "floor"} <= set(params):
        raise ValueError(f"params must be the dict a report printed (profile, n, rate, floor, "
                         f"...); got {params!r}")
    v.number("params['n']", params["n"], low=1, high=MAX_REQUESTS, integer=True)
    v.number("params['rate']", params["rate"], low=1, high=5000)
    v.number("seed", seed, low=0, high=2**32 - 1, integer=True)
    case = Case("generated", _size(params), seed, params)
    return await grade(LAB, [case], _run, solution, timeout=CASE_TIMEOUT_S, attempts=1)


def quantile(latencies_ms, q: float) -> float:
    """The ``q`` quantile of a list of latencies (linear interpolation, like numpy's)."""
    try:
        n = len(latencies_ms)
    except TypeError:
        raise TypeError(f"latencies_ms must be a list of numbers; got {latencies_ms!r}") \
            from None
    if not n:
        raise ValueError("latencies_ms must not be empty")
    v.probability("q", q)
    xs = np.asarray(latencies_ms, dtype=float)
    if not np.isfinite(xs).all():
        raise ValueError("latencies_ms must hold finite numbers (ms)")
    return float(np.quantile(xs, q))
