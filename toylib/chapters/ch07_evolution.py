"""Chapter 7, Evolution: every chapter's claims judged in one run, and the source's closing
comparison rebuilt from them.

* :data:`EVOLUTION` holds the source article's "Evolution from Anti-Patterns to Best
  Practices" graph and its "Production Impact Comparison" table in one structure: per
  anti-pattern, the node ids and labels of the anti-pattern, the practice and the result, the
  impact and the improvement the source claims, and the id of the claim (declared once, in the
  chapter's module) that the improvement is. :func:`graph` draws it, :meth:`Audit.impact`
  tabulates it, so the picture and the table cannot disagree.
* :func:`run_all` runs each chapter's own ``audit()`` (a small run of the experiments behind
  every claim of that chapter) one after another, never together (they would share the CPU and
  distort each other's timings), and returns an :class:`Audit` of their findings.
* Nothing here judges a claim: every verdict is the chapter's own (``Claim.judge`` on the
  chapter's measurements); this module only gathers, renders and writes them.
"""
from __future__ import annotations

import json
import math
import os
import posixpath
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
from IPython.display import Markdown

from toylib import claims
from toylib.chapters import (ch01_monolith, ch02_chatty, ch03_shared_db, ch04_sync,
                             ch05_timeouts, ch06_breakers)
from toylib.claims import FAILS, HOLDS, HOLDS_IF, NOT_SHOWN, VERDICTS, Finding
from toylib.core import validate as v
from toylib.core.calibrate import LoopLag, loop_lag
from toylib.core.clock import now
from toylib.core.load import Progress
from toylib.present.diagrams import PLANE_STYLE, Mermaid, label

# Where the audit goes when the chapter runs outside the book build (from chapters/).
AUDIT_FILE = Path("..") / "build" / "audit" / "verdicts.json"

CHAPTER = "ch07_evolution"
MODULES = {m.CHAPTER: m for m in (ch01_monolith, ch02_chatty, ch03_shared_db, ch04_sync,
                                  ch05_timeouts, ch06_breakers)}


# -- the chapters and the source's closing section ------------------------------------------------
@dataclass(frozen=True)
class Chapter:
    number: int
    title: str

    @property
    def path(self) -> str:
        return f"chapters/{NAMES[self.number]}.ipynb"

    def link(self, from_dir: str = "chapters") -> str:
        """A Markdown link to the chapter from a page in ``from_dir`` (e.g. "book")."""
        if not isinstance(from_dir, str) or from_dir.startswith("/") or "\\" in from_dir:
            raise ValueError(f"from_dir must be a folder relative to the repository root, "
                             f"such as 'chapters' or 'book'; got {from_dir!r}")
        return f"[chapter {self.number}]({posixpath.relpath(self.path, from_dir or '.')})"


NAMES = {1: "ch01_monolith", 2: "ch02_chatty", 3: "ch03_shared_db", 4: "ch04_sync",
         5: "ch05_timeouts", 6: "ch06_breakers"}
CHAPTERS = {
    "ch01_monolith": Chapter(1, "Distributed monolith"),
    "ch02_chatty": Chapter(2, "Chatty APIs"),
    "ch03_shared_db": Chapter(3, "Shared database"),
    "ch04_sync": Chapter(4, "Synchronous communication everywhere"),
    "ch05_timeouts": Chapter(5, "No timeouts"),
    "ch06_breakers": Chapter(6, "No circuit breakers"),
}


@dataclass(frozen=True)
class Transition:
    """One anti-pattern's way out, as the source draws it (graph) and tabulates it (table).

    ``anti``, ``practice`` and ``result`` are (node id, label) pairs: the graph's nodes and the
    table's row labels alike. ``impact`` and ``improvement`` are the source table's cells;
    ``claim`` is the id of the chapter's declared claim that the improvement is.
    """
    chapter: str
    anti: tuple[str, str]
    practice: tuple[str, str]
    result: tuple[str, str]
    impact: str
    improvement: str
    claim: str


# The source's node ids and labels (its graph), with its table's impact and improvement. Where
# the source's table words a name differently ("Sync Everywhere", "Event-driven services",
# "Batch APIs + cache", "Circuit protection"), the graph's label is used for both. The pairing of
# practices with results is the source's own (e.g. proper timeouts -> team autonomy).
EVOLUTION = (
    Transition("ch01_monolith", ("DISTRIBUTED_MONOLITH", "Distributed Monolith"),
               ("EVENT_DRIVEN", "Event-Driven Architecture"), ("LOOSE_COUPLING", "Loose Coupling"),
               "Single point of failure", "10x availability", "ch01_monolith.availability_10x"),
    Transition("ch02_chatty", ("CHATTY_APIS", "Chatty APIs"), ("BATCH_APIS", "Batch APIs + BFF"),
               ("HIGH_PERFORMANCE", "High Performance"), "500ms+ latency", "10x faster",
               "ch02_chatty.latency"),
    Transition("ch03_shared_db", ("SHARED_DATABASE", "Shared Database"),
               ("DATABASE_PER_SERVICE", "Database per Service"),
               ("FAULT_TOLERANCE", "Fault Tolerance"), "Cannot scale teams", "Unlimited teams",
               "ch03_shared_db.autonomy"),
    Transition("ch04_sync", ("SYNC_EVERYWHERE", "Sync Communication"),
               ("ASYNC_MESSAGING", "Async Messaging"),
               ("INDEPENDENT_SCALING", "Independent Scaling"), "Cascading failures",
               "99.9% availability", "ch04_sync.availability"),
    Transition("ch05_timeouts", ("NO_TIMEOUTS", "No Timeouts"),
               ("PROPER_TIMEOUTS", "Proper Timeouts"), ("TEAM_AUTONOMY", "Team Autonomy"),
               "Resource exhaustion", "No hanging requests", "ch05_timeouts.no_hanging"),
    Transition("ch06_breakers", ("NO_CIRCUITS", "No Circuit Breakers"),
               ("CIRCUIT_PROTECTION", "Circuit Breaker Protection"),
               ("OPERATIONAL_EXCELLENCE", "Operational Excellence"), "System-wide outages",
               "Graceful degradation", "ch06_breakers.graceful"),
)
BY_CHAPTER = {t.chapter: t for t in EVOLUTION}


def source_table() -> pd.DataFrame:
    """The source's "Production Impact Comparison", drawn from :data:`EVOLUTION`."""
    return pd.DataFrame([{"anti-pattern": t.anti[1], "impact": t.impact,
                          "best practice": t.practice[1], "improvement": t.improvement}
                         for t in EVOLUTION]).set_index("anti-pattern")


# -- an audit: every chapter's findings from one run ----------------------------------------------
@dataclass
class Audit:
    """The findings of one run of every chapter's ``audit()``, by chapter."""
    findings: dict[str, list[Finding]]
    seconds: dict[str, float] = field(default_factory=dict)
    lag: LoopLag | None = None

    def __post_init__(self):
        for ch, fs in self.findings.items():
            v.one_of("chapter", ch, tuple(CHAPTERS))
            for f in fs:
                if not isinstance(f, Finding):
                    raise TypeError(f"findings must be claims.Finding objects; got {f!r}")

    def all(self) -> list[Finding]:
        return [f for ch in CHAPTERS if ch in self.findings for f in self.findings[ch]]

    def by_id(self) -> dict[str, Finding]:
        return {f.claim.id: f for f in self.all()}

    def __getitem__(self, claim_id: str) -> Finding:
        found = self.by_id()
        if claim_id not in found:
            raise KeyError(f"claim_id must be one of the audited claims {sorted(found)}; "
                           f"got {claim_id!r}")
        return found[claim_id]

    def headline(self, chapter: str) -> Finding:
        """The finding for the source's closing-table improvement of ``chapter``."""
        v.one_of("chapter", chapter, tuple(BY_CHAPTER))
        return self[BY_CHAPTER[chapter].claim]

    def verdicts(self) -> dict[str, str]:
        return {f.claim.id: f.verdict for f in self.all()}

    def table(self, chapter: str | None = None) -> claims.Table:
        """Every finding (or one chapter's), rendered as each chapter renders its own."""
        if chapter is None:
            return claims.table(self.all())
        v.one_of("chapter", chapter, tuple(self.findings))
        return claims.table(self.findings[chapter])

    def impact(self, from_dir: str = "chapters") -> Markdown:
        """The source's "Production Impact Comparison", one row per anti-pattern, measured."""
        rows = ["| anti-pattern | the source claims | measured here | verdict | measured in |",
                "|---|---|---|---|---|"]
        for t in EVOLUTION:
            if t.chapter not in self.findings:
                continue
            f = self.headline(t.chapter)
            rows.append(f"| {t.anti[1]} → {t.practice[1]} | {t.improvement} | "
                        f"{f.measured.fmt()} (n = {f.measured.n}) | {f.verdict} | "
                        f"{CHAPTERS[t.chapter].link(from_dir)} |")
        return Markdown("\n".join(rows) + "\n")

    def summary(self) -> pd.DataFrame:
        """How many claims got each verdict, per chapter."""
        data = {ch: {vd: sum(f.verdict == vd for f in fs) for vd in VERDICTS}
                for ch, fs in self.findings.items()}
        df = pd.DataFrame(data).T.reindex(columns=list(VERDICTS)).fillna(0).astype(int)
        df.loc["all chapters"] = df.sum()
        return df

    def grouped(self) -> Markdown:
        """The closing table's verdicts, grouped, each with its generated sentence."""
        out = []
        for vd in VERDICTS:
            fs = [self.headline(t.chapter) for t in EVOLUTION if t.chapter in self.findings
                  and self.headline(t.chapter).verdict == vd]
            if not fs:
                continue
            out.append(f"**{vd.capitalize()}** ({len(fs)} of "
                       f"{sum(t.chapter in self.findings for t in EVOLUTION)}):\n")
            out += [f"* {BY_CHAPTER[f.claim.chapter].improvement}: {f.sentence()}" for f in fs]
            out.append("")
        return Markdown("\n".join(out))

    def records(self) -> list[dict]:
        return claims.records(self.all())

    def write(self, path=None) -> Path:
        """Write every finding as JSON (the build publishes it as audit.json).

        Without a path: into the folder the book build names in ``TOYLIB_STATUS_DIR`` (so a
        build and a test run of this chapter at the same time never write one file), else
        ``../build/audit/verdicts.json`` from the chapter's folder.
        """
        if path is None:
            folder = os.environ.get("TOYLIB_STATUS_DIR", "").strip()
            path = Path(folder) / "verdicts.json" if folder else AUDIT_FILE
        p = Path(path)
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(json.dumps(self.records(), indent=1, sort_keys=True))
        return p

    def figure(self, ax=None):
        """Each headline: the measured interval against the source's threshold."""
        import matplotlib.pyplot as plt

        from toylib.present import plots
        fs = [(t, self.headline(t.chapter)) for t in EVOLUTION if t.chapter in self.findings]
        if ax is None:
            _, ax = plt.subplots(figsize=(8, 0.6 * len(fs) + 1.2))
        colours = {HOLDS: "#10B981", HOLDS_IF: "#F59E0B", FAILS: "#FF6666", NOT_SHOWN: "#9CA3AF"}
        for i, (t, f) in enumerate(fs):
            m, c = f.measured, f.claim
            scale = c.threshold if c.threshold else 1.0
            lo, val, hi = (m.low / scale, m.value / scale, m.high / scale) if scale else (
                m.low, m.value, m.high)
            ax.plot([lo, hi], [i, i], color=colours[f.verdict], lw=6, solid_capstyle="butt")
            ax.plot([val], [i], "k|", ms=14)
        ax.axvline(1.0, color="black", lw=1, ls="--")
        ax.set_yticks(range(len(fs)), [f"{t.improvement}\n({t.anti[1]})" for t, _ in fs])
        ax.set_xlabel("measured / the claim's threshold (right of the line: at-least claims "
                      "hold; left: at-most claims hold)")
        ax.set_xscale("symlog", linthresh=0.1)
        ax.set_title("The source's closing claims: measured interval against the threshold")
        verdicts = ", ".join(f"{t.improvement}: {f.verdict}" for t, f in fs)
        return plots.describe(ax.figure, caption="The source's closing claims against this run: "
                              "each bar is the measured interval divided by the claim's "
                              "threshold, coloured by its verdict.",
                              alt=f"Measured intervals against thresholds. {verdicts}.")


async def run_all(only=None, *, progress: bool | None = None) -> Audit:
    """Run every chapter's ``audit()`` one after another; return their findings."""
    keys = tuple(CHAPTERS) if only is None else tuple(only)
    for k in keys:
        v.one_of("only", k, tuple(CHAPTERS))
    lag = await loop_lag()
    findings, seconds = {}, {}
    bar = Progress(len(keys), "chapters", progress)
    try:
        for k in keys:
            t0 = now()
            findings[k] = list(await MODULES[k].audit())
            seconds[k] = now() - t0
            bar.step()
    finally:
        bar.close()
    return Audit(findings, seconds, lag)


# -- the graph ------------------------------------------------------------------------------------
# The source draws anti-patterns purple, practices green and results blue: the control, service
# and edge colours of its four-plane palette.
GROUPS = (("anti", "AntiPatterns", "Common Anti-Patterns", PLANE_STYLE["control"]),
          ("practice", "BestPractices", "Production Best Practices", PLANE_STYLE["service"]),
          ("result", "Results", "Production Results", PLANE_STYLE["edge"]))
VERDICT_COLOUR = {HOLDS: "#10B981", HOLDS_IF: "#F59E0B", FAILS: "#FF6666", NOT_SHOWN: "#9CA3AF"}


def _edge_label(s: str) -> str:
    return label(s).replace("|", "/")        # '|' would end an edge label


def graph(audit: Audit | None = None, *, direction: str = "TB") -> Mermaid:
    """The source's evolution graph. Each practice's edge to its result carries the improvement
    the source claims; given an :class:`Audit`, also what was measured and the verdict, and the
    edge is coloured by the verdict."""
    v.one_of("direction", direction, ("TB", "LR", "BT", "RL"))
    if audit is not None and not isinstance(audit, Audit):
        raise TypeError(f"audit must be an Audit (from run_all) or None; got {audit!r}")
    lines = [f"flowchart {direction}"]
    for role, sub_id, title, _ in GROUPS:
        lines.append(f'  subgraph {sub_id}["{title}"]')
        lines += [f'    {getattr(t, role)[0]}["{_edge_label(getattr(t, role)[1])}"]'
                  for t in EVOLUTION]
        lines.append("  end")
    lines += [f"  {t.anti[0]} --> {t.practice[0]}" for t in EVOLUTION]
    for t in EVOLUTION:
        text = t.improvement
        if audit is not None and t.chapter in audit.findings:
            f = audit.headline(t.chapter)
            text = f"{t.improvement}?<br/>measured: {f.measured.fmt()}<br/>{f.verdict}"
        lines.append(f'  {t.practice[0]} -->|"{_edge_label(text)}"| {t.result[0]}')
    for role, _, _, (fill, stroke) in GROUPS:
        lines.append(f"  classDef {role}Style fill:{fill},stroke:{stroke},color:#fff")
        lines.append(f"  class {','.join(getattr(t, role)[0] for t in EVOLUTION)} {role}Style")
    if audit is not None:
        for i, t in enumerate(EVOLUTION):
            if t.chapter in audit.findings:
                edge = len(EVOLUTION) + i          # practice -> result edges come second
                lines.append(f"  linkStyle {edge} stroke:"
                             f"{VERDICT_COLOUR[audit.headline(t.chapter).verdict]},stroke-width:3px")
    return Mermaid("\n".join(lines))


def declared() -> pd.DataFrame:
    """Every claim the chapters declare: the source's words, the quantity, the rule, the
    assumptions (what the audit judges, before it runs)."""
    rows = []
    for ch, m in MODULES.items():
        for c in m.CLAIMS:
            side = ">=" if c.at_least else "<="
            rows.append({"claim": c.id, "aspect": c.aspect, "the source says": c.source_says,
                         "measured quantity": c.quantity,
                         "holds when": f"interval {side} {c.threshold:.3g}",
                         "assumptions": c.assumptions})
    return pd.DataFrame(rows).set_index("claim")


def factor_text(x: float) -> str:
    return "∞" if math.isinf(x) else f"{x:.0f}x" if x >= 10 else f"{x:.2g}x"
