"""The source article's claims for this chapter, declared once, and judged from the runs.

Each :class:`~toylib.claims.Claim` below is the only place its words, its measured quantity,
its threshold and its assumptions are written; :func:`findings` turns the experiments' results
into :class:`~toylib.claims.Finding` objects (the chapter's last section, chapter 7 and the
claims page all render those), and :func:`audit` runs a small version of every experiment
behind them.

How each is measured, and why it does not flip on a busy machine:

* counts (coupling, autonomy, technology, saga, eventual): exact, deterministic, no timing;
* isolation: orders placed per report run beside them (a count over a count), repeated; a busy
  machine slows the report, which only raises the per-service count (the shared file lets about
  one order in per report whatever the speed), so it is judged from every trial;
* the shared file's bottleneck: writes over a window as a multiple of one writer's ceiling,
  over repeated trials (min-max spread); it cannot exceed 1 whatever the load, and per service
  it is several times that;
* scaling: a ratio of medians over repeated trials, with the widest interval the
  trials allow, against thresholds far from the measured factors, from the trials during which
  the event loop kept time (its lag is measured beside every trial; a trial spoilt by a
  burst of load is replaced by another, a few at most); "not shown by this run" when fewer
  than two such trials are left for a set-up;
* how stale the read model gets is shown (p99 over trials, beside the queue model), not
  judged: it depends on the consumer's headroom, which a busy machine takes away.
"""
from __future__ import annotations

from dataclasses import replace

from toylib import claims as cl
from toylib.chapters.ch03_shared_db.contention import (MIN_CALM, ContentionResult, calm,
                                                      contention)
from toylib.chapters.ch03_shared_db.knobs import CHAPTER, Knobs, knobs_or_default
from toylib.chapters.ch03_shared_db.migration import OTHERS, MigrationResult, migration
from toylib.chapters.ch03_shared_db.models import MAX_WRITERS
from toylib.chapters.ch03_shared_db.neighbour import NeighbourResult, noisy_neighbour
from toylib.chapters.ch03_shared_db.order_saga import SagaResult, sagas
from toylib.chapters.ch03_shared_db.scaling import ScalingResult, scaling
from toylib.chapters.ch03_shared_db.staleness import StalenessResult, staleness
from toylib.core.calibrate import BUSY_P99_MS

SOURCE_TABLE = "the source's comparison table, shared database vs database per service"

CLAIMS = (
    cl.Claim(
        f"{CHAPTER}.coupling", "coupling",
        "Coupling: High (schema dependencies) with a shared database, Low (event-driven) with a "
        "database per service",
        "other teams' services broken by one team's schema migration: shared database minus "
        "database per service", claimed=1, at_least=True, tolerance=1.0, unit="teams",
        assumptions="the migration renames a column other teams read; per service the order "
                    "event, the public contract, keeps its shape"),
    cl.Claim(
        f"{CHAPTER}.autonomy", "team autonomy",
        "Team Autonomy: Low (coordination required) vs High (independent teams); Shared "
        "Database: 'Cannot scale teams' → Database per service: 'Unlimited teams'",
        "other teams that must change code before one team's schema change can ship, with a "
        "database per service", claimed=0, at_least=False, tolerance=1.0, unit="teams",
        conditional=True,
        assumptions="autonomy over a team's own schema, not over its contract: changing the "
                    "event needs the same coordination; one team's change is measured, "
                    "'unlimited' is not"),
    cl.Claim(
        f"{CHAPTER}.technology", "technology choice",
        "Technology Choice: Locked to one database vs Best tool per service",
        "database files opened by more than one team's services, with a database per service "
        "(a store only its owner opens could be any engine)", claimed=0, at_least=False,
        tolerance=1.0, unit="files", conditional=True,
        assumptions="necessary, not sufficient: every store here is SQLite, so no other engine "
                    "is tried; each extra engine costs backups, upgrades and on-call"),
    cl.Claim(
        f"{CHAPTER}.bottleneck", "scalability: the bottleneck",
        "Scalability: Limited (single bottleneck) with a shared database (its problems: "
        "'Performance Bottleneck', 'Cannot Scale Independently')",
        f"writes/s of {MAX_WRITERS} services writing at once to the shared file, as a multiple "
        f"of one writer's ceiling (1000 / hold_ms)", claimed=1.0, at_least=False,
        tolerance=0.8, unit="x",
        assumptions="SQLite admits one writer per file; a server database locks rows, but CPU, "
                    "I/O and connections stay one pool for everyone"),
    cl.Claim(
        f"{CHAPTER}.scaling", "scalability: independent",
        "Scalability: Independent scaling with a database per service",
        "order writes/s with 8 order workers ÷ with 1, database per service, the four other "
        "services writing beside them", claimed=2.0, at_least=True, tolerance=0.75, unit="x",
        assumptions="'independent scaling' read as: 8 times the workers at least double the "
                    "service's writes while the others keep theirs; its own file's one writer "
                    "caps it at 1000 / hold_ms"),
    cl.Claim(
        f"{CHAPTER}.isolation", "failure isolation",
        "Failure Isolation: None (cascading failures) vs Strong (isolated failures)",
        "orders one client places per heavy report analytics runs beside it (two counts): "
        "database per service ÷ shared file (rollback journal)", claimed=3.0, at_least=True,
        tolerance=1.0, unit="x", conditional=True,
        assumptions="a slow neighbour, not a crash; the toy isolates files, not machines (CPU "
                    "is shared); WAL mode alone removes this lock interaction"),
    cl.Claim(
        f"{CHAPTER}.saga", "consistency (saga)",
        "Data Consistency Strategy: a saga (create order, reserve inventory, process payment, "
        "send notification) with compensation (unreserve inventory, cancel order, send failure "
        "notification) when the payment fails",
        "saga invariants broken, read from the five databases, plus sagas that ended other "
        "than their payment draw decided", claimed=0, at_least=False, tolerance=1.0,
        unit="broken",
        assumptions="idempotent participants; compensations tolerate 'nothing to undo'; no "
                    "isolation between sagas (a pending order is a semantic lock)"),
    cl.Claim(
        f"{CHAPTER}.eventual", "analytics (eventual consistency)",
        "Eventual Consistency - Analytics: order events update the analytics data",
        "orders committed that the analytics read model never shows, once its consumer has "
        "caught up", claimed=0, at_least=False, tolerance=1.0, unit="orders",
        conditional=True,
        assumptions="eventually, not at once: how stale the read model is depends on the "
                    "consumer's headroom (the staleness is in the note); the shared design is "
                    "never stale"),
)
CLAIM = {c.id.split(".", 1)[1]: c for c in CLAIMS}
cl.claim_ids(CLAIMS)          # refuses a repeated id at import

SCALE_FROM, SCALE_TO = 1, 8   # order workers compared by the scaling claim


def _of(name: str, value, kind):
    if not isinstance(value, kind):
        raise TypeError(f"{name} must be a {kind.__name__} (from {CHAPTER}.{name}()); "
                        f"got {type(value).__name__}")
    return value


def calm_trials(rows, column: str, lag: str = "lag p99 ms") -> tuple[list[float], int]:
    """The values of ``column`` from the trials during which the event loop kept time (its lag,
    measured beside each trial, within the limit), and how many trials were left out."""
    ok = rows[rows[lag].map(calm)]               # NaN (no sample): left out
    return list(ok[column]), len(rows) - len(ok)


def timed(claim: cl.Claim, groups: dict, make, note: str, ideal=None) -> cl.Finding:
    """Judge ``claim`` from the calm trials of each group (rows of one set-up); when a group
    has fewer than :data:`MIN_CALM` of them the machine was too busy: "not shown by this run",
    with the estimate from every trial shown for what it is."""
    kept, dropped, every = {}, 0, {}
    for key, (rows, column) in groups.items():
        values, left_out = calm_trials(rows, column)
        kept[key], dropped, every[key] = values, dropped + left_out, list(rows[column])
    if all(len(x) >= MIN_CALM for x in kept.values()):
        extra = f"; {dropped} busy trial(s) left out" if dropped else ""
        return claim.judge(make(kept), ideal=ideal, note=note + extra)
    found = claim.judge(make(every), ideal=ideal, note=note)
    worst = max(float(x) for rows, _ in groups.values() for x in rows["lag p99 ms"])
    return replace(found, verdict=cl.NOT_SHOWN, needed=None,
                   note=f"{note}; the machine was too busy to time this (event-loop lag p99 "
                        f"above {BUSY_P99_MS:.0f} ms in {dropped} of "
                        f"{sum(len(r) for r, _ in groups.values())} trials, up to {worst:.0f} "
                        f"ms; fewer than {MIN_CALM} calm trials per set-up)")


def findings(*, migration: MigrationResult, contention: ContentionResult,
             scaling: ScalingResult, neighbour: NeighbourResult, sagas: SagaResult,
             staleness: StalenessResult) -> list[cl.Finding]:
    """Every claim of :data:`CLAIMS`, judged from the experiments' results."""
    m = _of("migration", migration, MigrationResult)
    c = _of("contention", contention, ContentionResult)
    s = _of("scaling", scaling, ScalingResult)
    nb = _of("neighbour", neighbour, NeighbourResult)
    sg = _of("sagas", sagas, SagaResult)
    st = _of("staleness", staleness, StalenessResult)
    out = []

    # coupling and autonomy: counts of teams broken, from the requests' own outcomes
    by, n_after = m.others_broken, m.requests_after["before"]
    out.append(CLAIM["coupling"].judge(
        cl.Estimate.exact(by["before"] - by["after"], n=n_after, unit="teams"),
        note=f"{by['before']} of {len(OTHERS)} other teams broken on the shared file "
             f"({m.failed_after['before']} failed requests), {by['after']} per service"))
    out.append(CLAIM["autonomy"].judge(
        cl.Estimate.exact(by["after"], n=m.requests_after["after"], unit="teams"), ideal=0,
        note=f"{by['before']} other teams would have had to change first on the shared file"))
    shared = m.shared_files
    out.append(CLAIM["technology"].judge(
        cl.Estimate.exact(shared["after"], n=len(m.sharing["after"]), unit="files"), ideal=0,
        note=f"shared design: {shared['before']} file opened by "
             f"{max(len(t) for t in m.sharing['before'].values())} teams"))

    # the shared file's ceiling: writes over a window, repeated trials
    top = int(c.rows.writers.max())
    if top != MAX_WRITERS:
        raise ValueError(f"contention must include writers={MAX_WRITERS}; got up to {top}")
    before = cl.Estimate.trials(c.ceiling_multiples("before", top), unit="x")
    after = cl.Estimate.trials(c.ceiling_multiples("after", top), unit="x")
    out.append(CLAIM["bottleneck"].judge(
        before, ideal=1.0, note=f"per service the same writers got {after.fmt('.2f')} "
                                f"(ideal {MAX_WRITERS})"))

    # scaling one service: ratio of repeated trials
    for w in (SCALE_FROM, SCALE_TO):
        if w not in set(s.rows["order workers"]):
            raise ValueError(f"scaling must include {w} order workers")
    per = {w: cl.Estimate.trials(s.trials("after", w, "order writes/s"), unit="writes/s")
           for w in (SCALE_FROM, SCALE_TO)}
    oth = {w: cl.Estimate.trials(s.trials("after", w, "other writes/s"), unit="writes/s")
           for w in (SCALE_FROM, SCALE_TO)}
    everyone = {w: cl.Estimate.trials(s.trials("before", w, "everyone writes/s"))
                for w in (SCALE_FROM, SCALE_TO)}
    ideal = s.ideal(SCALE_TO)["order, per service"] / s.ideal(SCALE_FROM)["order, per service"]
    after = s.rows[s.rows.design == "after"]
    out.append(timed(
        CLAIM["scaling"],
        {w: (after[after["order workers"] == w], "order writes/s") for w in (SCALE_FROM, SCALE_TO)},
        lambda v_: cl.Estimate.ratio(cl.Estimate.trials(v_[SCALE_TO]),
                                     cl.Estimate.trials(v_[SCALE_FROM])),
        note=f"the other four services: {oth[SCALE_TO].value / oth[SCALE_FROM].value:.2f}x "
             f"their writes; shared file, everyone together: "
             f"{everyone[SCALE_TO].value / everyone[SCALE_FROM].value:.2f}x", ideal=ideal))

    # the noisy neighbour: orders per report (counts), repeated trials, every trial
    per_report = {s_: cl.Estimate.trials(nb.trials(s_, "orders per report"))
                  for s_ in ("shared (journal)", "per service")}
    rate = {s_: cl.Estimate.trials(nb.trials(s_), unit="orders/s")
            for s_ in ("shared (journal)", "per service")}
    p50 = {s_: cl.Estimate.trials(nb.trials(s_, "p50 ms"), unit="ms")
           for s_ in ("shared (journal)", "per service")}
    out.append(CLAIM["isolation"].judge(
        cl.Estimate.ratio(per_report["per service"], per_report["shared (journal)"]),
        note=f"orders per report {per_report['per service'].fmt('.1f')} per service vs "
             f"{per_report['shared (journal)'].fmt('.2f')} shared (journal); orders/s "
             f"{rate['per service'].fmt('.1f')} vs {rate['shared (journal)'].fmt('.1f')}, "
             f"median order write {p50['per service'].fmt('.0f')} vs "
             f"{p50['shared (journal)'].fmt('.0f')}"))

    # the saga: counts read from the databases
    drawn = sg.drawn
    out.append(CLAIM["saga"].judge(
        cl.Estimate.exact(sg.violated + sg.wrong_outcomes, n=sg.orders, unit="broken"),
        ideal=0,
        note=f"{len(sg.checks)} invariants over {sg.orders} orders with {drawn['declined']} "
             f"declined and {drawn['lost_reply']} lost payment replies"))

    # eventual consistency: a count read from the two databases; the staleness as a note
    fastest = min(st.runs)
    model = st.model(fastest)
    p99 = cl.Estimate.trials(st.p99s(fastest), unit="ms")
    out.append(CLAIM["eventual"].judge(
        cl.Estimate.exact(st.missing, n=st.placed, unit="orders"), ideal=0,
        note=f"{st.placed} orders at {st.rate:g}/s; p99 staleness {p99.fmt('.0f')} with "
             f"{fastest:g} ms of consumer work per event (queue model: "
             f"{float(sorted(model)[min(len(model) - 1, int(0.99 * len(model)))]):.0f} ms)"))
    return out


# -- the small run behind every claim (chapter 7 and the claims page call it) -------------------
AUDIT_KNOBS = Knobs(hold_ms=20, history=20_000, p_decline=0.2, p_lost_reply=0.05, seed=3)
AUDIT_PLAN = {"rounds": 6, "migrate_after": 3, "seconds": 0.4, "trials": 3, "extra_trials": 6,
              "work_ms": 80.0,
              "scale_seconds": 0.6, "neighbour_seconds": 0.6, "orders": 60,
              "stale_seconds": 0.5, "stale_rate": 40}


async def audit(knobs: Knobs | None = None) -> list[cl.Finding]:
    """A small, fast run of every experiment behind :data:`CLAIMS` (about 20 s), judged.

    ``knobs`` default to :data:`AUDIT_KNOBS`; ``hold_ms`` must be > 0 and ``history`` at
    least a few thousand (the noisy neighbour's report scans it). Only the noisy neighbour
    needs the history, so the other experiments run without it (faster to set up).
    """
    knobs = AUDIT_KNOBS if knobs is None else knobs_or_default(knobs)
    p = AUDIT_PLAN
    light = knobs.but(history=0)
    return findings(
        migration=await migration(light, rounds=p["rounds"], migrate_after=p["migrate_after"]),
        contention=await contention(light, writers=(MAX_WRITERS,), seconds=p["seconds"],
                                    trials=p["trials"]),
        scaling=await scaling(light, workers=(SCALE_FROM, SCALE_TO), work_ms=p["work_ms"],
                              seconds=p["scale_seconds"], trials=p["trials"],
                              extra_trials=p["extra_trials"]),
        neighbour=await noisy_neighbour(knobs, setups=("shared (journal)", "per service"),
                                        seconds=p["neighbour_seconds"], trials=p["trials"]),
        sagas=await sagas(light, orders=p["orders"]),
        staleness=await staleness(light, rate=p["stale_rate"], seconds=p["stale_seconds"],
                                  delays=(0,),
                                  trials=p["trials"]),
    )
