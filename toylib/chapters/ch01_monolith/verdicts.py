"""The source article's claims for chapter 1, declared once, judged from the experiments'
results (:func:`findings`), and the small audit run behind them (:func:`audit`)."""
from __future__ import annotations

from dataclasses import replace

from toylib.chapters.ch01_monolith.designs import ideal
from toylib.chapters.ch01_monolith.experiments import (Availability, BlastRadius, Latency,
                                                       availability, blast_radius, degradation,
                                                       latency)
from toylib.chapters.ch01_monolith.knobs import (CHAPTER, MAX_P, MIGRATIONS, SERVICES, Knobs,
                                                 as_knobs)
from toylib.claims import Claim, Estimate, Finding
from toylib.core.calibrate import stalls_from_env


# -- the source article's claims, declared once ---------------------------------------------------
CLAIMS = (
    Claim(f"{CHAPTER}.latency", "latency",
          "Latency: 200ms+ (sync chain) vs 50ms (async processing)",
          "order latency before / time to accept an order after, per trial of orders taken "
          "alternately (median and spread of the trials)",
          claimed=200 / 50, at_least=True, tolerance=0.8, unit="x", conditional=True,
          assumptions="each service's own work costs the same; after answers when the order is "
                      "accepted, not when every consumer has processed it"),
    Claim(f"{CHAPTER}.degradation", "availability",
          "Availability: Single point of failure vs Graceful degradation",
          "share of orders accepted after while one dependency is down (each in turn)",
          claimed=1.0, at_least=True, tolerance=0.95,
          assumptions="the order service itself is up; a down service's work waits in its "
                      "queue and is done once it is back"),
    Claim(f"{CHAPTER}.availability_10x", "availability (summary table)",
          "Distributed Monolith: Single point of failure -> Event-driven services: "
          "10x availability",
          "failed orders before / failed orders after, every service failing with probability p",
          claimed=10.0, at_least=True, tolerance=0.8, unit="x",
          assumptions="failures independent, the same p for every service: the factor is "
                      "(1-(1-p)^5)/p, about the number of services an order waits for (5 here); "
                      "unbounded against a full outage"),
    Claim(f"{CHAPTER}.deployment", "deployment",
          "Deployment: All services together vs Independent deployments",
          "share of the other services still working after one team's schema migration, "
          "after (every column of the customers table renamed in turn)",
          claimed=1.0, at_least=True, tolerance=0.99,
          assumptions="the owner ships its code with the migration and keeps its event contract"),
)
CLAIM = {c.id.split(".", 1)[1]: c for c in CLAIMS}


def findings(latency: Latency, degraded: list[Availability], flaky: Availability,
             radius: list[BlastRadius]) -> list[Finding]:
    """Judge every claim in :data:`CLAIMS` from the experiments' results (same order)."""
    if not isinstance(latency, Latency):
        raise TypeError(f"latency must be a {CHAPTER}.Latency (from latency(...)); "
                        f"got {latency!r}")
    degraded, radius = list(degraded), list(radius)
    if not degraded or not all(isinstance(a, Availability) and a.down for a in degraded):
        raise TypeError("degraded must be a non-empty list of Availability results with a "
                        "service down (from degradation(...))")
    if not isinstance(flaky, Availability) or flaky.down or not flaky.knobs.p:
        raise ValueError("flaky must be an Availability result with no service down and "
                         "p > 0 (from availability(Knobs(p=...)))")
    if not radius or not all(isinstance(r, BlastRadius) for r in radius):
        raise TypeError("radius must be a non-empty list of BlastRadius results "
                        "(from blast_radius(...))")
    out = []
    # latency: a factor of two medians over repeated trials
    m = latency.medians()
    done = m["after: completed"]
    out.append(CLAIM["latency"].judge(
        latency.factor(), ideal=ideal(latency.knobs)["latency_before_ms"]
        / ideal(latency.knobs)["accept_after_ms"],
        note=f"before {m['before: answered'].fmt('.0f')}, after accepted in "
             f"{m['after: accepted'].fmt('.0f')}, completed in {done.fmt('.0f')}"))
    # degradation: a proportion of orders accepted after, over every dependency down
    k_after = sum(a.rows["after"]["ok"] for a in degraded)
    n_after = sum(a.rows["after"]["orders"] for a in degraded)
    k_before = sum(a.rows["before"]["ok"] for a in degraded)
    n_before = sum(a.rows["before"]["orders"] for a in degraded)
    lost = sum(a.rows["after"]["not processed"] for a in degraded)
    out.append(CLAIM["degradation"].judge(
        Estimate.proportion(k_after, n_after), ideal=1.0,
        note=f"before: {k_before} of {n_before} orders confirmed; after: {lost} accepted "
             f"orders never processed"))
    # 10x: the ratio of two failure proportions
    fb, fa = flaky.failures("before"), flaky.failures("after")
    if fa.low <= 0:
        raise ValueError("flaky must have at least one failed order after: run it with more "
                         "orders or a larger p")
    out.append(CLAIM["availability_10x"].judge(
        Estimate.ratio(fb, fa), ideal=ideal(flaky.knobs)["failure_factor"],
        note=f"p = {flaky.knobs.p:g}; failed orders: before {fb.fmt('.1%')}, after "
             f"{fa.fmt('.1%')}"))
    # deployment: exact counts of services broken by each migration
    others = len(SERVICES) - 1
    kept = sum(others - len(r.broken("after")) for r in radius)
    broke_before = sum(len(r.broken("before")) for r in radius)
    total = others * len(radius)
    out.append(CLAIM["deployment"].judge(
        Estimate.exact(kept / total, n=total), ideal=1.0,
        note=f"{len(radius)} migration(s): after, {total - kept} of {total} other services "
             f"broke; before, {broke_before} of {total}"))
    return out


# -- the audit: a small, fast run of everything behind the claims ---------------------------------
AUDIT_KNOBS = Knobs(latency_ms=100, p=0.1, seed=1)   # 100 ms of work: far above a busy loop's lag
AUDIT_SIZES = {"latency_orders": 5, "latency_trials": 3, "orders_down": 25, "orders_flaky": 300}


async def audit(knobs: Knobs | None = None) -> list[Finding]:
    """Every claim judged from a small run (about 15 s on a quiet 2-core machine): latency
    with ``knobs.latency_ms`` and no failures, availability with no delay and ``knobs.p``
    (which must be above 0), the migrations with neither."""
    k = AUDIT_KNOBS if knobs is None else as_knobs(knobs)
    if not k.p:
        raise ValueError(f"knobs.p must be in (0, {MAX_P}] for the audit: the availability "
                         f"factor needs failures to count; got {k.p!r}")
    s = AUDIT_SIZES
    stalls = stalls_from_env()          # the stress check's event-loop stalls, if asked for
    try:
        lat = await latency(replace(k, p=0.0), orders=s["latency_orders"],
                            trials=s["latency_trials"])
        quiet = replace(k, latency_ms=0.0, p=0.0)
        degraded = await degradation(quiet, n=s["orders_down"])
        flaky = await availability(replace(k, latency_ms=0.0), n=s["orders_flaky"])
        radius = [await blast_radius(quiet, m) for m in MIGRATIONS]
    finally:
        if stalls is not None:
            await stalls.stop()
    return findings(lat, degraded, flaky, radius)
