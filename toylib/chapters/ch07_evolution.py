"""Chapter 7, Evolution: a small run of every chapter's experiment, and the seed's closing
comparison rebuilt from what they measure.

* :data:`EVOLUTION` holds the seed's "Evolution from Anti-Patterns to Best Practices" graph and
  its "Production Impact Comparison" table in one structure: per anti-pattern, the node ids and
  labels of the anti-pattern, the practice and the result, the impact and the improvement the
  seed claims, and the chapter that measures it. :func:`graph` draws it and :meth:`Audit.table`
  labels its rows with it, so the picture and the table cannot disagree.
* One async function per anti-pattern, :func:`distributed_monolith` to
  :func:`no_circuit_breakers`, runs a small version of its chapter's experiments with the
  chapter's own helpers and returns a :class:`Finding`: the measured figure beside the claim, a
  verdict from :func:`toylib.claims.verdict`, the assumptions it needs, and the rows of the
  chapter's own claims table that the run can judge.
* :func:`run_all` runs the six one after another (never together: they would share the CPU and
  distort each other's timings) and returns an :class:`Audit`.
* :data:`SEED_CLAIMS` lists every row of every chapter's claims table, for the claims page.

Each finding reduces its claim to a factor, ``before / after`` of one figure where smaller is
better (failed orders, ms, teams broken, hung requests). When the fix measured zero failures in
``n`` requests the factor is only known to be at least ``before / (3 / n)``: three in ``n`` is
the 95 % upper bound on a rate of which zero were seen (the rule of three).
"""
from __future__ import annotations

import math
import posixpath
import textwrap
from dataclasses import dataclass, field, replace

import pandas as pd
from IPython.display import Markdown

from toylib.core import validate as v
from toylib.chapters import ch06_breakers as cascade, ch02_chatty as chatty, ch04_sync as checkout, ch01_monolith as monolith, ch03_shared_db as shared_db, ch05_timeouts as timeouts
from toylib import claims
from toylib.core import load
from toylib.resilience.cache import ttl_hit_rate
from toylib.claims import FAILS, HOLDS, HOLDS_IF
from toylib.present.diagrams import PLANE_STYLE, Mermaid, label
from toylib.core.clock import now

VERDICTS = (HOLDS, HOLDS_IF, FAILS)
DESIGNS = ("before", "after")


# -- the chapters and the seed's closing section --------------------------------------------------
@dataclass(frozen=True)
class Chapter:
    number: int
    title: str
    path: str                       # relative to the repository root

    def link(self, from_dir: str) -> str:
        """A Markdown link to the chapter from a notebook in ``from_dir`` (e.g. "book")."""
        if not isinstance(from_dir, str) or from_dir.startswith("/") or "\\" in from_dir:
            raise ValueError(f"from_dir must be a folder relative to the repository root, "
                             f"such as 'chapters' or 'book'; got {from_dir!r}")
        target = posixpath.relpath(self.path, from_dir or ".")
        return f"[chapter {self.number}]({target})"


CHAPTERS = {
    "monolith": Chapter(1, "Distributed monolith", "chapters/ch01_monolith.ipynb"),
    "chatty": Chapter(2, "Chatty APIs", "chapters/ch02_chatty.ipynb"),
    "shared_db": Chapter(3, "Shared database", "chapters/ch03_shared_db.ipynb"),
    "sync": Chapter(4, "Synchronous communication everywhere",
                    "chapters/ch04_sync.ipynb"),
    "timeouts": Chapter(5, "No timeouts", "chapters/ch05_timeouts.ipynb"),
    "breakers": Chapter(6, "No circuit breakers", "chapters/ch06_breakers.ipynb"),
}
CLAIMS_SECTION = "The seed's claims, measured"     # the section every chapter ends with


@dataclass(frozen=True)
class Transition:
    """One anti-pattern's way out, as the seed draws it (graph) and tabulates it (table).

    ``anti``, ``practice`` and ``result`` are (node id, label) pairs: the graph's nodes and
    the table's row labels alike. ``impact`` and ``improvement`` are the seed table's cells.
    """
    key: str
    anti: tuple[str, str]
    practice: tuple[str, str]
    result: tuple[str, str]
    impact: str
    improvement: str

    @property
    def chapter(self) -> Chapter:
        return CHAPTERS[self.key]


# The seed's node ids and labels (its graph), with its table's impact and improvement. Where the
# seed's table words a name differently ("Sync Everywhere", "Event-driven services", "Batch APIs
# + cache", "Circuit protection"), the graph's label is used for both. The pairing of practices
# with results is the seed's own (e.g. proper timeouts -> team autonomy).
EVOLUTION = (
    Transition("monolith", ("DISTRIBUTED_MONOLITH", "Distributed Monolith"),
               ("EVENT_DRIVEN", "Event-Driven Architecture"), ("LOOSE_COUPLING", "Loose Coupling"),
               "Single point of failure", "10x availability"),
    Transition("chatty", ("CHATTY_APIS", "Chatty APIs"), ("BATCH_APIS", "Batch APIs + BFF"),
               ("HIGH_PERFORMANCE", "High Performance"), "500ms+ latency", "10x faster"),
    Transition("shared_db", ("SHARED_DATABASE", "Shared Database"),
               ("DATABASE_PER_SERVICE", "Database per Service"),
               ("FAULT_TOLERANCE", "Fault Tolerance"), "Cannot scale teams", "Unlimited teams"),
    Transition("sync", ("SYNC_EVERYWHERE", "Sync Communication"),
               ("ASYNC_MESSAGING", "Async Messaging"),
               ("INDEPENDENT_SCALING", "Independent Scaling"), "Cascading failures",
               "99.9% availability"),
    Transition("timeouts", ("NO_TIMEOUTS", "No Timeouts"), ("PROPER_TIMEOUTS", "Proper Timeouts"),
               ("TEAM_AUTONOMY", "Team Autonomy"), "Resource exhaustion", "No hanging requests"),
    Transition("breakers", ("NO_CIRCUITS", "No Circuit Breakers"),
               ("CIRCUIT_PROTECTION", "Circuit Breaker Protection"),
               ("OPERATIONAL_EXCELLENCE", "Operational Excellence"), "System-wide outages",
               "Graceful degradation"),
)
KEYS = tuple(t.key for t in EVOLUTION)
BY_KEY = {t.key: t for t in EVOLUTION}


def seed_table() -> pd.DataFrame:
    """The seed's "Production Impact Comparison", drawn from :data:`EVOLUTION`."""
    return pd.DataFrame([{"anti-pattern": t.anti[1], "impact": t.impact,
                          "best practice": t.practice[1], "improvement": t.improvement}
                         for t in EVOLUTION]).set_index("anti-pattern")


# -- the graph ------------------------------------------------------------------------------------
# The seed draws anti-patterns purple, practices green and results blue: the control, service
# and edge colours of its four-plane palette.
GROUPS = (("anti", "AntiPatterns", "Common Anti-Patterns", PLANE_STYLE["control"]),
          ("practice", "BestPractices", "Production Best Practices", PLANE_STYLE["service"]),
          ("result", "Results", "Production Results", PLANE_STYLE["edge"]))
VERDICT_COLOUR = {HOLDS: "#10B981", HOLDS_IF: "#F59E0B", FAILS: "#FF6666"}


def _label(s: str) -> str:
    return label(s).replace("|", "/")        # '|' would end an edge label


def graph(audit: Audit | None = None, *, direction: str = "TB") -> Mermaid:
    """The seed's evolution graph. Each practice's edge to its result carries the improvement
    the seed claims; given an :class:`Audit`, also what was measured and the verdict, and the
    edge is coloured by the verdict (green holds, amber under assumptions, red does not)."""
    v.one_of("direction", direction, ("TB", "LR", "BT", "RL"))
    if audit is not None and not isinstance(audit, Audit):
        raise TypeError(f"audit must be an evolution.Audit (from run_all) or None; got {audit!r}")
    lines = [f"flowchart {direction}"]
    for role, sub_id, title, _ in GROUPS:
        lines.append(f'  subgraph {sub_id}["{title}"]')
        lines += [f'    {getattr(t, role)[0]}["{_label(getattr(t, role)[1])}"]' for t in EVOLUTION]
        lines.append("  end")
    lines += [f"  {t.anti[0]} --> {t.practice[0]}" for t in EVOLUTION]
    shown = [t for t in EVOLUTION if audit is None or t.key in audit.findings]
    for t in EVOLUTION:
        label = t.improvement
        if audit is not None and t.key in audit.findings:
            f = audit[t.key]
            label = f"{t.improvement}?<br/>measured: {f.headline}<br/>{f.verdict}"
        lines.append(f'  {t.practice[0]} -->|"{_label(label)}"| {t.result[0]}')
    for role, _, _, (fill, stroke) in GROUPS:
        lines.append(f"  classDef {role}Style fill:{fill},stroke:{stroke},color:#fff")
        lines.append(f"  class {','.join(getattr(t, role)[0] for t in EVOLUTION)} {role}Style")
    if audit is not None:
        for t in shown:
            i = len(EVOLUTION) + KEYS.index(t.key)     # practice -> result edges come second
            lines.append(f"  linkStyle {i} stroke:{VERDICT_COLOUR[audit[t.key].verdict]},"
                         "stroke-width:3px")
    return Mermaid("\n".join(lines))


# -- how big the small runs are -------------------------------------------------------------------
# Chapter 6's outage, shortened: payment fails slowly for 1.4 s instead of 2 s, answering after
# 1 s instead of 1.5 s. Users wait 0.5 s instead of 1 s, so that a request queued behind the
# first blocked checkouts misses its user's patience by a clear margin (it waits about 0.65 s),
# as in chapter 6; a second after the outage shows the recovery.
SHORT_OUTAGE = cascade.Knobs(run_s=2.8, outage_start=0.4, outage_end=1.8, outage_delay_ms=1000,
                             patience_ms=500, grace_s=0.5)


@dataclass(frozen=True)
class Plan:
    """The sizes of the small runs. :meth:`fast` is the closing chapter's (about 20 s in all);
    :meth:`full` is closer to the chapters' and adds the experiments the fast run leaves out
    (chapter 3's scaling, noisy neighbour and saga; chapter 5's deadline and jitter)."""
    orders: int = 200               # ch. 1: orders at p = 0.05 per design (chapter 1's own run)
    orders_down: int = 20           # ch. 1: orders with payment down
    latency_orders: int = 2         # ch. 1: orders timed, per design
    pages: int = 2                  # ch. 2: pages timed, per design
    failure_pages: int = 100        # ch. 2: pages at p = 0.02, per design
    zipf_seconds: float = 1.5       # ch. 2: the cache under Zipf popularity, at 300 requests/s
    writers_seconds: float = 0.3    # ch. 3: five services writing at once, per design
    checkouts: int = 5              # ch. 4: checkouts timed, per design (5 clients)
    checkouts_p: int = 100          # ch. 4: checkouts at p = 0.05, per design and tries
    timeout_rate: float = 120.0     # ch. 5: requests per second on the product API
    timeout_seconds: float = 1.0
    amp_requests: int = 2           # ch. 5: client requests per chain of k layers
    outage: cascade.Knobs = SHORT_OUTAGE    # ch. 6
    extras: bool = False

    def __post_init__(self):
        for name in ("orders", "orders_down", "latency_orders", "pages", "failure_pages",
                     "checkouts", "checkouts_p", "amp_requests"):
            v.number(name, getattr(self, name), low=1, high=10_000, integer=True)
        v.number("zipf_seconds", self.zipf_seconds, low=0.2, high=30)
        v.number("writers_seconds", self.writers_seconds, low=0.05, high=30)
        v.number("timeout_rate", self.timeout_rate, low=10, high=500)
        v.number("timeout_seconds", self.timeout_seconds, low=0.2, high=30)
        if not isinstance(self.outage, cascade.Knobs):
            raise TypeError(f"outage must be a cascade.Knobs; got {self.outage!r}")
        if not isinstance(self.extras, bool):
            raise TypeError(f"extras must be True or False; got {self.extras!r}")

    @classmethod
    def fast(cls) -> Plan:
        return cls()

    @classmethod
    def full(cls) -> Plan:
        return cls(latency_orders=5, pages=5, failure_pages=300, zipf_seconds=3.0,
                   writers_seconds=0.5, checkouts=10, timeout_rate=60.0, timeout_seconds=2.5,
                   amp_requests=10, outage=cascade.Knobs(), extras=True)


# -- what a run finds -----------------------------------------------------------------------------
@dataclass
class Finding:
    """One anti-pattern's claim beside its measurement.

    ``before`` and ``after`` are the same figure (``unit``, smaller is better) for the
    anti-pattern and for the practice; ``claimed`` is the factor ``before / after`` that the
    seed's improvement amounts to (``math.inf``: nothing left after). ``n_after``: when
    ``after`` is a share of ``n_after`` requests, a measured zero is a bound, not a zero.
    ``counts`` are results that depend on seeded draws and counting only (the same on every
    machine); ``facts`` are every other measured number. ``rows`` are the chapter's own
    claims-table rows that this run can judge.
    """
    key: str
    measured: str
    headline: str
    verdict: str
    assumptions: str
    before: float
    after: float
    unit: str
    claimed: float
    n_after: int | None = None
    deterministic: bool = False
    counts: dict = field(default_factory=dict)
    facts: dict = field(default_factory=dict)
    rows: list = field(default_factory=list)

    def __post_init__(self):
        v.one_of("key", self.key, KEYS)
        v.one_of("verdict", self.verdict, VERDICTS)
        v.non_negative("before", self.before)
        v.non_negative("after", self.after)
        v.positive("claimed", self.claimed)
        v.optional(v.positive, "n_after", self.n_after, integer=True)
        for row in self.rows:
            if not isinstance(row, claims.LegacyClaim):
                raise TypeError(f"rows must be claims.LegacyClaim objects; got {row!r}")

    @property
    def transition(self) -> Transition:
        return BY_KEY[self.key]

    @property
    def bounded(self) -> bool:
        """The fix measured no failure in ``n_after`` requests: :attr:`ratio` is a lower bound."""
        return self.after == 0 and self.n_after is not None

    @property
    def ratio(self) -> float:
        """``before / after``; with nothing measured after, the rule-of-three bound (or inf)."""
        if self.after > 0:
            return self.before / self.after
        if self.n_after is not None:
            return self.before / (3 / self.n_after)
        return math.inf if self.before > 0 else 1.0

    @property
    def ratio_text(self) -> str:
        """The measured factor as the figure labels it: '5.4x', '≥ 21x' (a bound) or '∞'."""
        return ("≥ " if self.bounded else "") + _factor(self.ratio)

    @property
    def claimed_text(self) -> str:
        return _factor(self.claimed)


def _factor(x: float) -> str:
    return "∞" if math.isinf(x) else f"{x:.0f}x" if x >= 10 else f"{x:.2g}x"


# -- 1. distributed monolith ----------------------------------------------------------------------
RENAME = monolith.Migration("id", "customer_id")     # chapter 1's main migration


async def distributed_monolith(plan: Plan) -> Finding:
    """Chapter 1 in small: availability when every service fails with p = 0.05 (chapter 1's own
    seeded run), orders with the payment service down, the blast radius of a column rename,
    and the time to answer an order with 50 ms of work per service."""
    kp, k0 = monolith.Knobs(latency_ms=0, p=0.05, seed=1), monolith.Knobs(latency_ms=0)
    avail, down, broken, lat = {}, {}, {}, {}
    for design in DESIGNS:
        avail[design] = await monolith.availability(design, kp, n=plan.orders)
        down[design] = await monolith.availability(design, k0, n=plan.orders_down,
                                                   down="payment")
        broken[design] = int((await monolith.blast_radius(design, RENAME))["broken"].sum())
    for design in DESIGNS:
        async with monolith.DESIGNS[design](monolith.Knobs(latency_ms=50)) as system:
            lat[design] = await monolith.order_latencies(system, plan.latency_orders)
    return _judge_monolith(plan, kp, avail, down, broken, lat)


def _judge_monolith(plan, kp, avail, down, broken, lat) -> Finding:
    failed = {d: round((1 - avail[d]["answered ok"]) * plan.orders) for d in DESIGNS}
    fb, fa = failed["before"] / plan.orders, failed["after"] / plan.orders
    fewer = fb / max(fa, 1e-9)
    ideal = (1 - (1 - kp.p) ** len(monolith.SERVICES)) / kp.p
    before_ms = float(lat["before"].latencies.median())
    accept_ms = float(lat["after"].latencies.median())
    complete_ms = float(lat["after"].df["completion_ms"].median())
    speedup = before_ms / accept_ms
    others = len(monolith.SERVICES) - 1
    rows = [
        claims.LegacyClaim("latency", "200 ms+ (sync chain) vs 50 ms (async processing)",
                     f"{before_ms:.0f} ms vs {accept_ms:.0f} ms to accept ({speedup:.1f}x); "
                     f"{complete_ms:.0f} ms to complete", claims.verdict(speedup, 200 / 50,
                                                                         assumed=True),
                     "50 ms of work per service; 'after' is the time to accept, not to complete"),
        claims.LegacyClaim("availability", "single point of failure vs graceful degradation",
                     f"payment down: {down['before']['answered ok']:.0%} of orders vs "
                     f"{down['after']['answered ok']:.0%} accepted, "
                     f"{down['after']['not processed']} lost",
                     claims.verdict(down["after"]["answered ok"], 1.0, tolerance=0.99),
                     "the order service itself is up; the failed service's work waits in its "
                     "queue"),
        claims.LegacyClaim("availability (summary table)", "10x availability",
                     f"{fewer:.1f}x fewer failed orders at p = 0.05", claims.verdict(fewer, 10),
                     "failures independent with the same p per service: the factor is the "
                     "number of services an order waits for (5 here); unbounded for a full "
                     "outage"),
        claims.LegacyClaim("deployment", "all services together vs independent deployments",
                     f"renaming customers.id breaks {broken['before']} of {others} other "
                     f"services before, {broken['after']} after",
                     claims.verdict((others - broken["after"]) / others, 1.0, tolerance=0.99),
                     "the owner ships its code with the migration and keeps its event contract"),
    ]
    return Finding(
        "monolith",
        measured=f"{fb:.1%} vs {fa:.1%} of orders failed with every service's work failing "
                 f"at p = 0.05: {fewer:.1f}x fewer (ideal {ideal:.1f}x); with payment down, "
                 f"{down['before']['answered ok']:.0%} vs {down['after']['answered ok']:.0%} "
                 "of orders taken",
        headline=f"{fewer:.1f}x fewer failed orders", verdict=rows[2].verdict,
        assumptions="independent failures, the same p for every service: the factor is about "
                    "the number of services an order waits for (5 here, so 5x, not 10x); "
                    "against a dependency that is down it is unbounded",
        before=fb, after=fa, unit="share of orders failed (p = 0.05)",
        claimed=10.0, n_after=plan.orders, deterministic=True,
        counts={"orders at p = 0.05": plan.orders, "failed before": failed["before"],
                "failed after": failed["after"],
                "payment down: orders sent": plan.orders_down,
                "payment down: orders taken before": round(down["before"]["answered ok"]
                                                           * plan.orders_down),
                "payment down: orders taken after": round(down["after"]["answered ok"]
                                                          * plan.orders_down),
                "services broken by the rename, before": broken["before"],
                "services broken by the rename, after": broken["after"]},
        facts={"ideal factor": ideal, "order ms before": before_ms, "accept ms after": accept_ms,
               "complete ms after": complete_ms},
        rows=rows)


# -- 2. chatty APIs -------------------------------------------------------------------------------
ZIPF = dict(rate=300, ttl=1.5, users=2000, skew=1.1, seed=3)    # chapter 2's experiment 4


async def _pages(topo, entry: str, n: int, prefix: str) -> load.LoadResult:
    return await load.sequential(
        lambda i: topo.call(entry, "GET", f"/profile/{i}", trace_id=f"{prefix}{i}"), n=n,
        progress=False, label=prefix)


async def _page_failures(design: str, pages: int) -> float:
    """The share of ``pages`` cold pages that fail when every call fails with p = 0.02."""
    kp = chatty.Knobs(latency_ms=0, p=0.02, seed=1)
    build, entry = (chatty.before, "gateway") if design == "before" else (chatty.after, "bff")
    async with build(kp) as topo:
        r = await load.closed_loop(lambda i: topo.call(entry, "GET", f"/profile/{i}"),
                                   n=pages, concurrency=10, progress=False)
    return 1 - float(r.df["ok"].mean())


async def _zipf_hit_rate(seconds: float) -> tuple[float, float]:
    z = ZIPF
    k = chatty.Knobs(latency_ms=20, users=z["users"], ttl_s=z["ttl"])
    who = chatty.zipf_users(int(z["rate"] * seconds), z["users"], z["skew"], seed=z["seed"])
    async with chatty.after(k) as topo:
        await load.open_loop(lambda i: topo.call("bff", "GET", f"/profile/{who[i]}"),
                             rate=z["rate"], n=len(who), max_seconds=seconds + 5,
                             arrivals="poisson", seed=z["seed"], progress=False)
        hit = topo.cache.hit_rate
    rates = [z["rate"] * w for w in chatty.zipf_weights(z["users"], z["skew"])]
    return hit, ttl_hit_rate(rates, z["ttl"])


async def chatty_apis(plan: Plan) -> Finding:
    """Chapter 2 in small: the calls and bytes behind one page, page latency cold and warm
    with 20 ms per call, pages failing at p = 0.02, and the cache under Zipf popularity."""
    k = chatty.Knobs(n_posts=10, n_friends=10, latency_ms=20)
    lat, spans = {}, {}
    async with chatty.before(k) as topo:
        lat["before"] = await _pages(topo, "gateway", plan.pages, "page-")
        spans["before"] = topo.tracer.df()
    async with chatty.after(k) as topo:
        lat["cold"] = await _pages(topo, "bff", plan.pages, "page-")
        lat["warm"] = await _pages(topo, "bff", plan.pages, "warm-")
        spans["after"] = topo.tracer.df()
    failed = {d: await _page_failures(d, plan.failure_pages) for d in DESIGNS}
    hit, hit_ideal = await _zipf_hit_rate(plan.zipf_seconds)
    return _judge_chatty(plan, k, lat, spans, failed, hit, hit_ideal)


def _judge_chatty(plan, k, lat, spans, failed, hit, hit_ideal) -> Finding:
    first = {d: s[(s["trace_id"] == "page-0") & (s["caller"] != "client")]
             for d, s in spans.items()}
    calls_before = len(first["before"])
    fanout = int((first["after"]["caller"] == "composite").sum())
    wire = {d: int(f["wire_bytes"].sum()) for d, f in first.items()}
    wire_ratio = wire["before"] / wire["after"]
    ms = {d: float(r.latencies.median()) for d, r in lat.items()}
    speedup = ms["before"] / ms["cold"]
    fail_ratio = failed["before"] / max(failed["after"], 1e-9)
    cached = fail_ratio / max(1 - hit, 1e-9)
    rows = [
        claims.LegacyClaim("requests per page", "21 vs 3: 7x fewer",
                     f"{calls_before} vs {fanout} (+1 BFF hop): {calls_before / fanout:.0f}x "
                     "fewer", claims.verdict(calls_before / fanout, 7),
                     "N = M = 10; counting the composite's fan-out"),
        claims.LegacyClaim("latency", "500 ms+ vs 50 ms: 10x faster",
                     f"{ms['before']:.0f} ms vs {ms['cold']:.0f} ms cold ({speedup:.0f}x), "
                     f"{ms['warm']:.1f} ms warm", claims.verdict(speedup, 10),
                     "20 ms per call; the backends keep up with the parallel calls"),
        claims.LegacyClaim("failure rate", "20x better",
                     f"{fail_ratio:.1f}x at p = 0.02 on cold pages; {cached:.0f}x with the "
                     f"measured {hit:.0%} hit rate", claims.verdict(cached, 20, assumed=True),
                     "needs the cache: cold pages alone give about 7x (21/3)"),
        claims.LegacyClaim("network usage", "5x more efficient", f"{wire_ratio:.1f}x fewer HTTP bytes",
                     claims.verdict(wire_ratio, 5),
                     "HTTP/1.1, JSON posts of ~100-250 bytes; headers are the only per-call "
                     "cost"),
        claims.LegacyClaim("cache hit rate", "95 %", f"{hit:.0%} (ideal {hit_ideal:.0%})",
                     claims.verdict(hit, 0.95, assumed=True),
                     f"Zipf s = {ZIPF['skew']}, {ZIPF['rate']} req/s, TTL {ZIPF['ttl']} s: a "
                     "property of the traffic, not of the design"),
    ]
    return Finding(
        "chatty",
        measured=f"{ms['before']:.0f} ms vs {ms['cold']:.0f} ms per cold page "
                 f"({speedup:.0f}x), {ms['warm']:.1f} ms from the cache; "
                 f"{calls_before} calls vs {fanout}",
        headline=f"{speedup:.0f}x faster (cold)", verdict=rows[1].verdict,
        assumptions=f"N = M = 10 and {k.latency_ms:.0f} ms per call: the factor is about the "
                    f"{calls_before} serial calls becoming one parallel round trip; each call's "
                    "own overhead counts 21 times before",
        before=ms["before"], after=ms["cold"], unit="ms per cold page (median)",
        claimed=10.0,
        counts={"calls per page before": calls_before, "calls per page after": fanout,
                "pages at p = 0.02": plan.failure_pages,
                "pages failed before": round(failed["before"] * plan.failure_pages),
                "pages failed after": round(failed["after"] * plan.failure_pages)},
        facts={"warm ms": ms["warm"], "wire bytes before": wire["before"],
               "wire bytes after": wire["after"], "hit rate": hit, "hit rate ideal": hit_ideal},
        rows=rows)


# -- 3. shared database ---------------------------------------------------------------------------
async def shared_database(plan: Plan) -> Finding:
    """Chapter 3 in small: one team's migration in both designs, five services writing at once,
    and the staleness of the analytics read model (plus, in the full plan, scaling one
    service, a heavy report next to order writes, and the order saga)."""
    broken, writes = {}, {}
    for name, design in shared_db.DESIGNS.items():
        async with design() as d:
            broken[name] = shared_db.broken(await shared_db.migration(d, rounds=20,
                                                                      migrate_after=10))
    for name, design in shared_db.DESIGNS.items():
        async with design(hold_ms=10) as d:
            writes[name] = shared_db.write_summary(
                await shared_db.contention(d, writers=5, seconds=plan.writers_seconds))
    async with shared_db.DatabasePerService(analytics_delay_ms=0) as d:
        stale = await shared_db.staleness(d, rate=100, seconds=0.5)
    extra_rows = await _shared_extras() if plan.extras else []
    return _judge_shared(broken, writes, stale, extra_rows)


async def _shared_extras() -> list:
    """Chapter 3's scalability, failure-isolation and saga rows, with its own sizes."""
    gain = {}
    for name, design in shared_db.DESIGNS.items():
        got = {}
        for workers in (1, 8):
            async with design(hold_ms=10, order_workers=workers) as d:
                got[workers] = await shared_db.scaling(d, seconds=0.8, work_ms=40)
        gain[name] = {c: got[8][c] / got[1][c] if got[1][c] else math.nan
                      for c in ("order writes/s", "other writes/s")}
        gain[name]["everyone writes/s"] = (
            (got[8]["order writes/s"] + got[8]["other writes/s"])
            / (got[1]["order writes/s"] + got[1]["other writes/s"]))
    p50 = {}
    for label, design, analysts in (("shared (journal)", shared_db.SharedDatabase, 1),
                                    ("per service", shared_db.DatabasePerService, 1),
                                    ("no report", shared_db.SharedDatabase, 0)):
        async with design(history=20_000, analysts=1) as d:
            df = await shared_db.noisy_neighbour(d, analysts=analysts, rate=40, seconds=1.2)
        p50[label] = float(df.loc[df["ok"], "latency_ms"].median())
    slow = {k: p50[k] / p50["no report"] for k in ("shared (journal)", "per service")}
    saga = shared_db.Config(p_decline=0.2, p_lost_reply=0.05, seed=3)
    async with shared_db.DatabasePerService(saga) as d:
        await shared_db.run_sagas(d, orders=150, concurrency=20)
        checks = await shared_db.invariants(d)
    per, shared = gain["per service"], gain["shared"]
    return [
        claims.LegacyClaim("scalability", "limited (single bottleneck) vs independent scaling",
                     f"order workers 1→8: per service order x{per['order writes/s']:.1f}, "
                     f"others x{per['other writes/s']:.2f}; shared: everyone "
                     f"x{shared['everyone writes/s']:.2f}",
                     shared_db.verdict_if(per["order writes/s"] > 2
                                          and shared["everyone writes/s"] < 1.4, assumed=True),
                     "SQLite: one writer per file; a server database locks rows, but CPU, I/O "
                     "and connections stay one pool for everyone"),
        claims.LegacyClaim("failure isolation", "none (cascading failures) vs strong",
                     f"a running report slowed order writes x{slow['shared (journal)']:.0f} at "
                     f"p50 (shared, journal), x{slow['per service']:.1f} (per service)",
                     shared_db.verdict_if(slow["shared (journal)"] > 5
                                          and slow["per service"] < 3, assumed=True),
                     "the toy isolates files, not machines: CPU is shared"),
        claims.LegacyClaim("consistency (saga)", "compensation instead of a transaction",
                     f"{len(checks)} invariants hold over 150 orders with injected payment "
                     "failures", shared_db.verdict_if(bool(checks["holds"].all())),
                     "idempotent participants; compensations tolerate 'nothing to undo'; "
                     "no isolation"),
    ]


def _judge_shared(broken, writes, stale, extra_rows) -> Finding:
    others = [s for s in shared_db.SERVICES if s != "orders"]
    by = {name: int((b.loc[others, "failed after"] > 0).sum()) for name, b in broken.items()}
    failed_requests = int(broken["shared"]["failed after"].sum())
    ws = {name: w["writes/s"] for name, w in writes.items()}
    p99 = float(stale["staleness_ms"].quantile(0.99))
    coupling = shared_db.verdict_if(by["shared"] > 0 and by["per service"] == 0)
    autonomy = shared_db.verdict_if(by["per service"] == 0, assumed=True)
    rows = [
        claims.LegacyClaim("coupling", "high (schema dependencies) vs low (event-driven)",
                     f"one migration broke {by['shared']} of {len(others)} other services "
                     f"({failed_requests} failed requests) vs {by['per service']} per service",
                     coupling, "the event keeps its shape; changing the event needs the same "
                               "coordination"),
        claims.LegacyClaim("technology choice", "locked to one database vs best tool per service",
                     "not measurable here: every service uses SQLite", "argued, not measured",
                     "per service, nobody else reads a service's store, so it can be any "
                     "engine; the cost is running several"),
        claims.LegacyClaim("team autonomy", "low (coordination required) vs high",
                     f"the order team's deploy needed {by['shared']} other teams to change code "
                     f"first (shared) vs {by['per service']} (per service)", autonomy,
                     "autonomy over the schema, not over the contract: events need versioning"),
        claims.LegacyClaim("analytics (eventual consistency)", "analytics updated from events",
                     f"staleness p99 {p99:.0f} ms with a consumer that keeps up",
                     shared_db.verdict_if(p99 < 100, assumed=True),
                     "the consumer keeps up; the shared design is never stale"),
        *extra_rows,
    ]
    n_others = len(others)
    return Finding(
        "shared_db",
        measured=f"one team's migration broke {by['shared']} of {n_others} other teams' "
                 f"services on the shared file, {by['per service']} with a database per "
                 f"service; five teams writing at once: {ws['per service']:.0f} vs "
                 f"{ws['shared']:.0f} writes/s ({ws['per service'] / ws['shared']:.1f}x, "
                 "ideal 5x)",
        headline=f"{by['shared']} → {by['per service']} teams broken by a migration",
        verdict=claims.verdict((n_others - by["per service"]) / n_others, 1.0, tolerance=1.0,
                               assumed=True),
        assumptions="'unlimited' in the sense that no other team changes code when one team "
                    "changes its schema: the event is the contract, and changing it needs the "
                    "same coordination; each store has its own capacity, the machine and the "
                    "on-call rota are still shared",
        before=by["shared"], after=by["per service"],
        unit="other teams broken by a migration", claimed=math.inf, deterministic=True,
        counts={"other teams broken, shared": by["shared"],
                "other teams broken, per service": by["per service"],
                "requests failed after the migration, shared": failed_requests},
        facts={"writes/s shared": ws["shared"], "writes/s per service": ws["per service"],
               "staleness p99 ms": p99},
        rows=rows)


# -- 4. synchronous communication everywhere ------------------------------------------------------
async def sync_everywhere(plan: Plan) -> Finding:
    """Chapter 4 in small: response and completion time with the seed's latencies, and
    checkouts completed when every call fails with p = 0.05, with 1 and 3 tries per call."""
    resp = {}
    for design in DESIGNS:
        resp[design], _ = await checkout.checkouts(design, checkout.Knobs(), n=plan.checkouts,
                                                   concurrency=min(plan.checkouts, 5))
    kp = checkout.Knobs(scale=0, p=0.05, attempts=1, backoff_ms=1, seed=2)
    done = {}
    runs = [("before", 1), ("before", 3), ("after", 3)] + ([("after", 1)] if plan.extras else [])
    for design, attempts in runs:
        _, inv = await checkout.checkouts(design, replace(kp, attempts=attempts),
                                          n=plan.checkouts_p, concurrency=10)
        done[design, attempts] = inv
    return _judge_sync(plan, kp, resp, done)


def _judge_sync(plan, kp, resp, done) -> Finding:
    n = plan.checkouts_p
    ms = {d: float(r.latencies.median()) for d, r in resp.items()}
    complete_ms = float(resp["after"].df["completion_ms"].median())
    completed = {key: inv["completed"] / n for key, inv in done.items()}
    chain_ideal = checkout.ideal(kp)["success_before"]
    saga_ideal = checkout.ideal(replace(kp, attempts=3))["success_after"]
    chain1, saga3 = completed["before", 1], completed["after", 3]
    verdict99 = claims.verdict(saga3, 0.999, tolerance=0.999, assumed=True)
    rows = [
        claims.LegacyClaim("response time", "530 ms (chain) vs 10 ms (immediate response)",
                     f"{ms['before']:.0f} ms vs {ms['after']:.1f} ms "
                     f"({ms['before'] / ms['after']:.0f}x); completion after: {complete_ms:.0f} ms",
                     claims.verdict(ms["after"], 10, higher_is_better=False),
                     "'10 ms' is the time to accept; the order is done no sooner than before"),
        claims.LegacyClaim("failure multiplication", "all five must succeed",
                     f"{chain1:.0%} of chained checkouts completed at p = 0.05 (product of "
                     f"five: {chain_ideal:.0%})", claims.verdict(1 - chain1, 1 - chain_ideal),
                     "independent failures, no retries"),
        claims.LegacyClaim("availability (summary table)", "99.9 %",
                     f"accepted: 100 % of checkouts; completed at p = 0.05 with 3 tries per "
                     f"call: {saga3:.1%} (ideal {saga_ideal:.2%})", verdict99,
                     f"transient, independent failures and 3 tries per call; {n} orders cannot "
                     f"tell 99.9 % from 99 %"),
    ]
    return Finding(
        "sync",
        measured=f"checkouts completed with every call failing at p = 0.05: {chain1:.0%} "
                 f"(chain, one try) vs {saga3:.0%} (saga, 3 tries per call; ideal "
                 f"{saga_ideal:.2%}); answered in {ms['before']:.0f} ms vs {ms['after']:.1f} ms",
        headline=f"{saga3:.0%} of {n} checkouts completed", verdict=verdict99,
        assumptions=f"transient, independent failures that retries overcome: the chain with "
                    f"3 tries completes {completed['before', 3]:.0%} too, so the retries do "
                    f"this work and asynchrony moves the wait off the client; {n} orders "
                    f"bound the failure rate only below {3 / n:.0%}",
        before=1 - chain1, after=1 - saga3, unit="share of checkouts not completed",
        claimed=(1 - chain1) / 0.001, n_after=n, deterministic=True,
        counts={"checkouts at p = 0.05": n,
                **{f"completed: {d}, {a} {'try' if a == 1 else 'tries'}": inv["completed"]
                   for (d, a), inv in done.items()},
                "charged, order not completed: chain": done["before", 1][
                    "charged, order not completed"],
                "charged, order not completed: saga": done["after", 3][
                    "charged, order not completed"]},
        facts={"response ms before": ms["before"], "response ms after": ms["after"],
               "completion ms after": complete_ms},
        rows=rows)


# -- 5. no timeouts -------------------------------------------------------------------------------
async def no_timeouts(plan: Plan) -> Finding:
    """Chapter 5 in small: the product API under load while the recommender hangs on 20 % of
    calls, with and without timeouts (100 ms, about the recommender's p99.9, a 500 ms deadline,
    backoff with jitter, a retry budget), and retry amplification through 1 to 4 layers."""
    k = timeouts.Knobs()
    runs, pools = {}, {}
    for design, build in (("before", timeouts.before), ("after", timeouts.after)):
        async with build(k) as topo:
            runs[design], pools[design] = await timeouts.mixed_load(
                topo, rate=plan.timeout_rate, seconds=plan.timeout_seconds, label=design)
    amp = {}
    for layers in range(1, 5):
        r = await timeouts.amplification(layers, requests=plan.amp_requests)
        amp[layers] = r["calls reaching the database"]
    extra_rows = await _timeout_extras(k) if plan.extras else []
    return _judge_timeouts(plan, k, runs, pools, amp, extra_rows)


async def _timeout_extras(k: timeouts.Knobs) -> list:
    """Chapter 5's deadline and jitter rows, with its own sizes."""
    kd = replace(k, hang_p=0.5, timeout_ms=150)
    prop = await timeouts.deadline_experiment(kd, deadline_ms=250, propagate=True)
    fixed = await timeouts.deadline_experiment(kd, deadline_ms=250, propagate=False)
    rec = {p: await timeouts.shared_recovery(p) for p in ("none", "full")}
    calls = rec["none"]["calls"] / rec["full"]["calls"]
    drain = rec["none"]["drain_s"] / rec["full"]["drain_s"]
    return [
        claims.LegacyClaim("deadline bounds the request", "one deadline covers all attempts (gRPC, SRE)",
                     f"latest end {prop['over_ms'].max():+.1f} ms from a 250 ms deadline; "
                     f"{fixed['over_ms'].max():+.0f} ms without",
                     claims.verdict(prop["over_ms"].max(), 50, tolerance=1.0,
                                    higher_is_better=False),
                     "margin 50 ms for scheduling on one event loop"),
        claims.LegacyClaim("jitter", "no jitter is clearly worst: more calls, more time",
                     f"{calls:.2f}x the calls and {drain:.1f}x the time of full jitter",
                     claims.verdict(min(calls, drain), 1.0, tolerance=1.0),
                     "40 clients failing together against a dependency serving 5 at a time"),
    ]


def _judge_timeouts(plan, k, runs, pools, amp, extra_rows) -> Finding:
    summ = {d: timeouts.starvation_summary(r) for d, r in runs.items()}
    hung = {d: int(s["hung"].sum()) for d, s in summ.items()}
    total = {d: int(s["requests"].sum()) for d, s in summ.items()}
    healthy = {d: s.loc[timeouts.HEALTHY] for d, s in summ.items()}
    peak = int(pools["before"]["busy"].max())
    answered_after = 1 - hung["after"] / total["after"]
    per_request = amp[4] / plan.amp_requests
    p999 = timeouts.lognormal_quantile(0.999, k.latency_ms, k.sigma)
    rows = [
        claims.LegacyClaim("impact: resource exhaustion", "no timeouts exhaust resources",
                     f"the pool was full ({peak} of {k.pool} workers); /product success "
                     f"{healthy['before']['success']:.0%}",
                     claims.verdict(peak / k.pool, 1.0, tolerance=1.0),
                     "a bounded worker pool; an unbounded server would run out of memory or "
                     "sockets instead, later"),
        claims.LegacyClaim("no hanging requests", "proper timeouts: no hanging requests",
                     f"hung: {hung['before']} before, {hung['after']} after, of "
                     f"{total['after']} requests; worst /product "
                     f"{healthy['after']['worst_ms']:.0f} ms",
                     claims.verdict(answered_after, 1.0, tolerance=1.0),
                     f"timeout {k.timeout_ms:.0f} ms (the recommender's p99.9 is "
                     f"{p999:.0f} ms), a {k.deadline_ms:.0f} ms deadline; a request may still "
                     "fail (fast 504)"),
        claims.LegacyClaim("retry amplification", "3 tries at each of 5 layers = 3^5 = 243x",
                     f"3^k exactly for k = 1..4 ({per_request:.0f} database calls per request "
                     "at k = 4)", claims.verdict(per_request, 81, tolerance=1.0),
                     "every layer retries every failure and the bottom always fails"),
        *extra_rows,
    ]
    return Finding(
        "timeouts",
        measured=f"hung requests: {hung['before']} of {total['before']} without timeouts, "
                 f"{hung['after']} of {total['after']} with them; /product, which needs only "
                 f"the healthy catalog: {healthy['before']['success']:.0%} vs "
                 f"{healthy['after']['success']:.0%} answered, worst "
                 f"{healthy['before']['worst_ms']:.0f} ms vs {healthy['after']['worst_ms']:.0f} ms",
        headline=f"{hung['before']} → {hung['after']} hung requests",
        verdict=rows[1].verdict,
        assumptions=f"a timeout near the dependency's p99.9 ({k.timeout_ms:.0f} ms), a "
                    f"{k.deadline_ms:.0f} ms deadline, retries with jitter within a budget; "
                    "'no hanging' is not 'no failing': hung calls become fast 504s",
        before=hung["before"] / total["before"], after=hung["after"] / total["after"],
        unit="share of requests hung", claimed=math.inf, n_after=total["after"],
        counts={f"database calls for {plan.amp_requests} requests, k = {layers}": calls
                for layers, calls in amp.items()},
        facts={"hung before": hung["before"], "hung after": hung["after"],
               "requests": total["after"], "peak busy workers before": peak},
        rows=rows)


# -- 6. no circuit breakers -----------------------------------------------------------------------
async def no_circuit_breakers(plan: Plan) -> Finding:
    """Chapter 6 in small: one slow payment outage with a start and an end, through the design
    without breakers and the design with a breaker per dependency and a fallback cache."""
    outages = {}
    for design in DESIGNS:
        outages[design] = await cascade.outage(design, plan.outage)
    return _judge_breakers(plan.outage, outages)


def _judge_breakers(k: cascade.Knobs, outages: dict) -> Finding:
    table = cascade.summary(*outages.values())
    un = {d: cascade.during_outage(o) for d, o in outages.items()}
    b_un, a_un = un["before"]["success"], un["after"]["success"]
    n_after = un["after"]["requests"]
    bound = max(1 - a_un, 3 / n_after)                 # rule of three: 0 failures in n
    gain = (1 - b_un) / bound
    peak = int(table.loc["before", "peak busy workers"])
    calls = table[f"calls reaching {outages['before'].target} during outage"]
    crashed = any(not o.timeline[(o.timeline["t_s"] >= k.outage_end)
                                 & (o.timeline["endpoint"] == ep)]["ok"].any()
                  for ep in cascade.ENDPOINTS for o in (outages["before"],))
    graceful = claims.verdict(a_un, 1.0, tolerance=0.99)
    rows = [
        claims.LegacyClaim("system-wide outages", "without breakers, one failing service takes all down",
                     f"/stock and /profile: {1 - b_un:.0%} of requests failed during the payment "
                     "outage, though their services were healthy",
                     claims.verdict(1 - b_un, 1.0, tolerance=0.5),
                     f"one pool of {k.pool} workers for every endpoint and no timeout; holds "
                     "when at least half fail"),
        claims.LegacyClaim("threads blocked waiting", "payment down: threads blocked waiting",
                     f"peak {peak} of {k.pool} workers busy, all waiting on payment",
                     claims.verdict(peak / k.pool, 1.0, tolerance=1.0),
                     "a bounded pool shared by all endpoints"),
        claims.LegacyClaim("memory exhaustion, system crash",
                     "blocked threads exhaust memory, system crashes",
                     "no crash: every endpoint answered again after the outage" if not crashed
                     else "an endpoint never answered again after the outage",
                     claims.verdict(float(crashed), 1.0),
                     "a bounded pool queues work instead of starting a thread per request"),
        claims.LegacyClaim("graceful degradation", "circuit protection: graceful degradation",
                     f"/stock and /profile {a_un:.1%} during the outage; checkouts failed fast "
                     f"(p99 {table.loc['after', 'checkout p99 (ms)']:.0f} ms)", graceful,
                     "a breaker per dependency, short timeouts, a fallback only for reads"),
        claims.LegacyClaim("99.9 % availability", "99.9 % availability (seed: async messaging)",
                     f"{a_un:.1%} of {n_after} unaffected requests during the outage",
                     claims.verdict(a_un, 0.999, tolerance=1.0, assumed=True),
                     f"only {n_after} requests: 0 failures bound the failure rate below "
                     f"{3 / n_after:.1%} (95 %)"),
        claims.LegacyClaim("10x availability", "10x availability (seed: event-driven services)",
                     f"unavailability of /stock and /profile during the outage: {1 - b_un:.0%} "
                     f"before, at most {bound:.1%} after: at least {gain:.0f}x",
                     claims.verdict(gain, 10),
                     "during this outage, for the endpoints it should not touch"),
    ]
    return Finding(
        "breakers",
        measured=f"/stock and /profile, which never touch payment, during its outage: "
                 f"{b_un:.0%} vs {a_un:.0%} answered in time; calls still reaching payment "
                 f"{calls['before']:.0f} vs {calls['after']:.0f}; checkouts failed fast "
                 f"(p99 {table.loc['after', 'checkout p99 (ms)']:.0f} ms)",
        headline=f"{b_un:.0%} → {a_un:.0%} of unaffected requests served",
        verdict=graceful,
        assumptions=f"a breaker per dependency with a {k.call_timeout_ms:.0f} ms timeout, a "
                    "fallback only for reads; the failing path still fails (fast), and "
                    f"{n_after} requests bound the rest's failure rate only below "
                    f"{3 / n_after:.1%}",
        before=1 - b_un, after=1 - a_un, unit="share of unaffected requests failed",
        claimed=(1 - b_un) / 0.01 if b_un < 1 else 1.0, n_after=n_after,
        counts={}, facts={"peak busy workers before": peak,
                          "calls to payment before": float(calls["before"]),
                          "calls to payment after": float(calls["after"])},
        rows=rows)


# -- all six --------------------------------------------------------------------------------------
EXPERIMENTS = {"monolith": distributed_monolith, "chatty": chatty_apis,
               "shared_db": shared_database, "sync": sync_everywhere,
               "timeouts": no_timeouts, "breakers": no_circuit_breakers}


@dataclass
class Audit:
    """What :func:`run_all` found: a :class:`Finding` per anti-pattern, in the seed's order."""
    findings: dict
    plan: Plan
    seconds: dict = field(default_factory=dict)

    def __post_init__(self):
        for key, f in self.findings.items():
            v.one_of("findings key", key, KEYS)
            if not isinstance(f, Finding) or f.key != key:
                raise TypeError(f"findings[{key!r}] must be the Finding of {key!r}; got {f!r}")

    def __getitem__(self, key: str) -> Finding:
        v.one_of("key", key, KEYS)
        if key not in self.findings:
            raise KeyError(f"{key!r} was not run; run_all(only=...) ran {list(self.findings)}")
        return self.findings[key]

    def __iter__(self):
        return (self.findings[k] for k in KEYS if k in self.findings)

    def table(self) -> pd.DataFrame:
        """The seed's Production Impact Comparison as measured: claim, measurement, verdict,
        assumptions, and the chapter that measures it in full."""
        rows = [claims.LegacyClaim(f"{f.transition.anti[1]} → {f.transition.practice[1]}",
                             f.transition.improvement, f.measured, f.verdict, f.assumptions)
                for f in self]
        df = claims.legacy_table(rows)
        df["measured in full"] = [f"chapter {f.transition.chapter.number}" for f in self]
        return df

    def markdown(self, from_dir: str = "chapters") -> Markdown:
        """:meth:`table` as Markdown, each row linking to its chapter (seen from ``from_dir``)."""
        head = ["anti-pattern → practice", "the seed claims", "measured here", "verdict",
                "assumptions"]
        body = [[f"{f.transition.anti[1]} → {f.transition.practice[1]} "
                 f"({f.transition.chapter.link(from_dir)})", f"**{f.transition.improvement}**",
                 f.measured, f"**{f.verdict}**", f.assumptions] for f in self]
        return Markdown(_md_table(head, body))

    def verdicts(self) -> pd.Series:
        return pd.Series({f.transition.anti[1]: f.verdict for f in self}, name="verdict")

    def counts(self) -> dict:
        """The results that depend on seeded draws and counting only, per anti-pattern, with
        the verdicts that rest on them alone: what nbval may compare on every machine."""
        out = {}
        for f in self:
            entry = dict(f.counts)
            if f.deterministic:
                entry["verdict"] = f.verdict
            if entry:
                out[f.transition.anti[1]] = entry
        return out

    def figure(self, ax=None):
        """Measured factors (bars) against the claimed ones (black diamonds), log scale."""
        return ratio_figure(list(self), ax=ax)


def _md_table(head: list[str], body: list[list[str]]) -> str:
    def cell(s) -> str:
        return str(s).replace("|", "\\|").replace("\n", " ")
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(cell(c) for c in row) + " |" for row in body]
    return "\n".join(lines) + "\n"


def _keys(only) -> tuple[str, ...]:
    if only is None:
        return KEYS
    if isinstance(only, str) or not all(isinstance(k, str) for k in only) or not only:
        raise ValueError(f"only must be None or a non-empty list of keys from "
                         f"{', '.join(KEYS)}; got {only!r}")
    for k in only:
        v.one_of("only", k, KEYS)
    return tuple(k for k in KEYS if k in set(only))


async def run_all(fast: bool = True, *, only=None, progress: bool | None = None) -> Audit:
    """Run the small version of every chapter's experiments, one after another.

    ``fast``: the closing chapter's sizes (about 20 s on two cores); ``False``: the
    :meth:`Plan.full` sizes and the extra experiments (a minute or more). ``only``: a subset
    of :data:`KEYS`. ``progress``: a progress bar (None: once the run has lasted 2 s).
    """
    if not isinstance(fast, bool):
        raise TypeError(f"fast must be True or False; got {fast!r}")
    if progress is not None and not isinstance(progress, bool):
        raise TypeError(f"progress must be True, False or None; got {progress!r}")
    keys = _keys(only)
    plan = Plan.fast() if fast else Plan.full()
    findings, seconds = {}, {}
    bar = load.Progress(len(keys), "anti-patterns", progress)   # toylib's 2-second rule
    try:
        for key in keys:
            t0 = now()
            findings[key] = await EXPERIMENTS[key](plan)
            seconds[key] = now() - t0
            bar.step()
    finally:
        bar.close()
    return Audit(findings, plan, seconds)


# -- the figure -----------------------------------------------------------------------------------
def _wrap(s: str) -> str:
    return textwrap.fill(s, 13, break_long_words=False)


def ratio_figure(findings: list, ax=None):
    """One bar per anti-pattern: the measured factor ``before / after`` (hatched, with '≥',
    when the fix measured no failure and the bar is the rule-of-three bound), coloured by the
    verdict; the claimed factor as a black diamond. Unbounded factors sit on the '∞' line."""
    import matplotlib.pyplot as plt
    import numpy as np

    from toylib.present import plots

    if not findings or not all(isinstance(f, Finding) for f in findings):
        raise ValueError("findings must be a non-empty list of evolution.Finding")
    finite = [x for f in findings for x in (f.ratio, f.claimed) if math.isfinite(x) and x > 0]
    top = 10 ** (math.ceil(math.log10(max(finite + [10]))) + 1)       # where '∞' is drawn
    if ax is None:
        fig, ax = plt.subplots(figsize=(9.5, 4.4), layout="constrained")
    fig = ax.figure
    for i, f in enumerate(findings):
        height = top if math.isinf(f.ratio) else f.ratio
        ax.bar(i, height, width=0.6, color=VERDICT_COLOUR[f.verdict],
               hatch="//" if f.bounded else None, edgecolor="white")
        ax.annotate(f.ratio_text, (i - 0.3, height), ha="left", va="bottom", fontsize=8,
                    xytext=(0, 2), textcoords="offset points")
        ax.scatter(i, top if math.isinf(f.claimed) else f.claimed, marker="D", color="black",
                   zorder=5, s=30)
    ax.axhline(top, color=plots.IDEAL, lw=0.8, ls=":")
    ax.axhline(1, color=plots.IDEAL, lw=0.8)
    ax.set_yscale("log")
    ax.set_ylim(0.5, top * 4)
    ticks = [10.0 ** e for e in range(0, int(round(math.log10(top))))]
    ax.set_yticks(ticks + [top], [f"{t:g}" for t in ticks] + ["∞"])
    ax.minorticks_off()
    ax.set_xticks(np.arange(len(findings)),
                  [_wrap(f.transition.anti[1]) + "\n" + _wrap(f"“{f.transition.improvement}”")
                   for f in findings],
                  fontsize=7.5)
    ax.set_ylabel("before / after (log scale)")
    ax.set_title("Each fix's measured factor against the seed's claim")
    handles = [plt.Rectangle((0, 0), 1, 1, color=c) for c in VERDICT_COLOUR.values()]
    handles += [plt.Rectangle((0, 0), 1, 1, facecolor="grey", hatch="//", edgecolor="white"),
                plt.Line2D([], [], marker="D", color="black", ls="")]
    ax.legend(handles, [*VERDICT_COLOUR, "≥: no failure after;\nthe rule-of-three bound",
                        "the seed's claim"], fontsize=7, loc="upper left",
              bbox_to_anchor=(1.01, 1))
    return fig


# -- every claim of every chapter, for the claims page -------------------------------------------
@dataclass(frozen=True)
class SeedClaim:
    """One row of a chapter's claims table. ``run``: "fast" (judged by ``run_all()``), "full"
    (only by ``run_all(fast=False)``), "argued" (no measurement exists here) or "not measured"
    (the seed's row that the chapter leaves out)."""
    chapter: str
    aspect: str
    seed_says: str
    measurement: str
    run: str = "fast"

    def __post_init__(self):
        v.one_of("chapter", self.chapter, KEYS)
        v.one_of("run", self.run, ("fast", "full", "argued", "not measured"))


def _claims(chapter: str, *rows) -> list[SeedClaim]:
    return [SeedClaim(chapter, *row) for row in rows]


SEED_CLAIMS = (
    *_claims("monolith",
             ("latency", "200 ms+ (sync chain) vs 50 ms (async processing)",
              "order latency with 50 ms of work per service: to the answer before, to "
              "acceptance after"),
             ("availability", "single point of failure vs graceful degradation",
              "orders taken while the payment service is down"),
             ("availability (summary table)", "10x availability",
              "failed orders when every service's work fails with p = 0.05 (seeded)"),
             ("deployment", "all services together vs independent deployments",
              "services broken by the customer team's column rename (SQLite's own errors)"),
             ("scalability", "scale entire system vs scale individual services",
              "not in chapter 1; chapter 3's scalability row adds workers to one service",
              "not measured"),
             ("development", "team dependencies vs independent team velocity",
              "velocity is not measured; the deployment row measures what one team dependency "
              "costs", "not measured")),
    *_claims("chatty",
             ("requests per page", "21 vs 3: 7x fewer", "calls behind one page, from its trace"),
             ("latency", "500 ms+ vs 50 ms: 10x faster",
              "page latency with 20 ms per call, cold and from the cache"),
             ("failure rate", "20x better",
              "pages failed when every call fails with p = 0.02, with the cache's share"),
             ("network usage", "5x more efficient", "HTTP bytes behind one page, from its trace"),
             ("cache hit rate", "95 %", "the BFF cache's hit rate under Zipf popularity")),
    *_claims("shared_db",
             ("coupling", "high (schema dependencies) vs low (event-driven)",
              "requests failing after one team's migration, with SQLite's own errors"),
             ("scalability", "limited (single bottleneck) vs independent scaling",
              "writes/s as one service gets 1 to 8 workers, beside the others", "full"),
             ("technology choice", "locked to one database vs best tool per service",
              "nothing: an argument, not an experiment", "argued"),
             ("team autonomy", "low (coordination required) vs high",
              "teams that must change code before one team's deploy"),
             ("failure isolation", "none (cascading failures) vs strong",
              "order write latency while analytics runs a heavy report", "full"),
             ("consistency (saga)", "compensation instead of a transaction",
              "saga invariants read from five databases, with injected payment failures",
              "full"),
             ("analytics (eventual consistency)", "analytics updated from events",
              "staleness of the analytics read model")),
    *_claims("sync",
             ("response time", "530 ms (chain) vs 10 ms (immediate response)",
              "checkout response and completion time with the seed's latencies"),
             ("failure multiplication", "all five must succeed",
              "chained checkouts completed when every call fails with p = 0.05"),
             ("availability (summary table)", "99.9 %",
              "checkouts completed by the saga with 3 tries per call at p = 0.05")),
    *_claims("timeouts",
             ("impact: resource exhaustion", "no timeouts exhaust resources",
              "busy workers of the product API while the recommender hangs"),
             ("no hanging requests", "proper timeouts: no hanging requests",
              "requests still unanswered after the run, with and without timeouts"),
             ("deadline bounds the request", "one deadline covers all attempts (gRPC, SRE)",
              "how far past a 250 ms deadline any call of a request ran", "full"),
             ("retry amplification", "3 tries at each of 5 layers = 3^5 = 243x",
              "calls reaching a failing database through k = 1..4 retrying layers"),
             ("jitter", "no jitter is clearly worst: more calls, more time",
              "40 clients retrying against a recovering dependency, with and without jitter",
              "full")),
    *_claims("breakers",
             ("system-wide outages", "without breakers, one failing service takes all down",
              "success of /stock and /profile during a slow payment outage"),
             ("threads blocked waiting", "payment down: threads blocked waiting",
              "busy workers of the order service"),
             ("memory exhaustion, system crash", "blocked threads exhaust memory, system crashes",
              "whether every endpoint answers again after the outage"),
             ("graceful degradation", "circuit protection: graceful degradation",
              "success of the unaffected endpoints with breakers and a fallback cache"),
             ("99.9 % availability", "99.9 % availability (seed: async messaging)",
              "the same, against 99.9 %"),
             ("10x availability", "10x availability (seed: event-driven services)",
              "the same, as a factor")),
)


def claims_markdown(audit: Audit, chapter: str, *, from_dir: str = "book") -> Markdown:
    """Every claims-table row of ``chapter``: what the seed says, what is measured, and the
    measurement and verdict of ``audit`` where its run judges the row."""
    if not isinstance(audit, Audit):
        raise TypeError(f"audit must be an evolution.Audit (from run_all); got {audit!r}")
    v.one_of("chapter", chapter, KEYS)
    ch = CHAPTERS[chapter]
    judged = {r.aspect: r for r in (audit[chapter].rows if chapter in audit.findings else [])}
    body = []
    for c in (c for c in SEED_CLAIMS if c.chapter == chapter):
        r = judged.get(c.aspect)
        if r is not None:
            measured, verdict = r.measured, f"**{r.verdict}**"
        elif c.run == "full":
            measured = "not in the fast run: `run_all(fast=False)`"
            verdict = f"see {ch.link(from_dir)}"
        else:
            measured, verdict = "—", c.run if c.run == "not measured" else "argued, not measured"
        body.append([c.aspect, c.seed_says, c.measurement, measured, verdict])
    head = ["aspect", "the seed says", "what is measured", "measured here", "verdict"]
    return Markdown(f"Measured in full in {ch.link(from_dir)}, section *{CLAIMS_SECTION}*.\n\n"
                    + _md_table(head, body))


def claims_summary(audit: Audit) -> pd.DataFrame:
    """How many claims got each verdict, per chapter (rows the audit did not judge: 'open')."""
    if not isinstance(audit, Audit):
        raise TypeError(f"audit must be an evolution.Audit (from run_all); got {audit!r}")
    rows = []
    for c in SEED_CLAIMS:
        judged = {r.aspect: r for r in (audit[c.chapter].rows
                                        if c.chapter in audit.findings else [])}
        r = judged.get(c.aspect)
        rows.append({"chapter": f"chapter {CHAPTERS[c.chapter].number}",
                     "verdict": r.verdict if r is not None else
                     ("argued, not measured" if c.run == "argued" else
                      "not measured" if c.run == "not measured" else "open")})
    for f in audit:
        rows.append({"chapter": "summary table", "verdict": f.verdict})
    df = pd.DataFrame(rows)
    order = [*VERDICTS, "argued, not measured", "not measured", "open"]
    table = df.groupby(["chapter", "verdict"], sort=False).size().unstack(fill_value=0)
    return table.reindex(columns=[c for c in order if c in table.columns])
