"""Claims from the source article, each judged by a measurement with its uncertainty.

Every chapter module declares its claims once, as :class:`Claim` objects (the source article's
words, the measured quantity, the threshold that decides, the assumptions), and judges them
from its experiments' results with :meth:`Claim.judge`. The chapter's last section, chapter 7
(which lists every claim) all render the same :class:`Finding` objects with :func:`table`, and the
build writes them as JSON with :func:`records`; no verdict rule is written twice.

A measurement is an :class:`Estimate`: a value with an interval and a sample size. The verdict
is decided by the interval, not the point value:

* **holds** when the whole interval clears the threshold (``tolerance`` of the claimed figure);
  **holds under stated assumptions** when the claim is ``conditional`` on the assumptions shown;
* **does not hold here** when the whole interval misses it;
* **not shown by this run** when the interval straddles it: the sample cannot decide (for a
  proportion the finding says how many trials would).

So a verdict does not flip between runs because of noise the interval already covers.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from statistics import NormalDist

import pandas as pd

from toylib.core import validate as v

HOLDS, HOLDS_IF = "holds", "holds under stated assumptions"
FAILS, NOT_SHOWN = "does not hold here", "not shown by this run"
VERDICTS = (HOLDS, HOLDS_IF, FAILS, NOT_SHOWN)
CONFIDENCE = 0.95
MAX_N = 10**12          # a sample size beyond any run of this course


def _value(name: str, x, finite: bool = True) -> float:
    if isinstance(x, bool):
        raise TypeError(f"{name} must be a number, not a bool; got {x!r}")
    return float(v.number(name, x, finite=finite))


def _sequence(name: str, xs, limit: int = 1_000_000) -> list:
    if isinstance(xs, (str, bytes, dict)) or not hasattr(xs, "__iter__"):
        raise TypeError(f"{name} must be a list of values; got {type(xs).__name__}")
    out = list(xs)
    if len(out) > limit:
        raise ValueError(f"{name} must hold at most {limit:,} values; got {len(out):,}")
    return out


# -- measurements ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class Estimate:
    """A measured figure: ``value`` with the interval ``[low, high]`` from ``n`` observations.

    ``how`` says how the interval was made (shown in tables); ``k`` is the count of successes
    when the estimate is a proportion (it lets a finding say how many trials would decide).
    Build one with :meth:`exact`, :meth:`proportion`, :meth:`trials` or :meth:`ratio`.
    """
    value: float
    low: float
    high: float
    n: int
    how: str
    unit: str = ""
    k: int | None = None

    def __post_init__(self):
        for name in ("value", "low", "high"):     # a bound may be unbounded (a ratio over 0)
            _value(name, getattr(self, name), finite=name == "value")
        if not isinstance(self.how, str) or not isinstance(self.unit, str):
            raise TypeError(f"how and unit must be strings; got {self.how!r}, {self.unit!r}")
        if not self.low <= self.value <= self.high:
            raise ValueError(f"an estimate needs low <= value <= high; got {self.low!r} <= "
                             f"{self.value!r} <= {self.high!r}")
        v.number("n", self.n, low=1, high=MAX_N, integer=True)
        if self.k is not None:
            v.number("k", self.k, low=0, high=self.n, integer=True)

    @classmethod
    def exact(cls, value: float, n: int = 1, unit: str = "", how: str = "exact count"):
        """A deterministic figure (a count of requests, of services broken): no interval."""
        value = _value("value", value)
        v.number("n", n, low=1, high=MAX_N, integer=True)
        return cls(value, value, value, n, how, unit)

    @classmethod
    def proportion(cls, k: int, n: int, unit: str = "", confidence: float = CONFIDENCE):
        """``k`` successes in ``n`` trials, with the Wilson score interval."""
        v.number("n", n, low=1, high=MAX_N, integer=True)
        v.number("k", k, low=0, high=n, integer=True)
        low, high = wilson(k, n, confidence)
        return cls(k / n, min(low, k / n), max(high, k / n), n,
                   f"Wilson {confidence:.0%} interval", unit, k)

    @classmethod
    def trials(cls, values, unit: str = ""):
        """Repeated trials of one figure: the median, with the lowest and highest as the spread."""
        xs = sorted(_value("values", x) for x in _sequence("values", values))
        if not xs:
            raise ValueError("values must hold at least one trial")
        mid = len(xs) // 2
        med = xs[mid] if len(xs) % 2 else (xs[mid - 1] + xs[mid]) / 2
        how = "one trial" if len(xs) == 1 else f"median of {len(xs)} trials, min-max"
        return cls(med, xs[0], xs[-1], len(xs), how, unit)

    @classmethod
    def ratio(cls, num: "Estimate", den: "Estimate", unit: str = "x"):
        """``num / den`` with the widest interval the two allow (interval arithmetic)."""
        for name, e in (("num", num), ("den", den)):
            if not isinstance(e, Estimate):
                raise TypeError(f"{name} must be an Estimate; got {type(e).__name__}")
        if den.low <= 0:
            raise ValueError(f"den must be positive over its whole interval; got low={den.low!r}")
        if num.low < 0:
            raise ValueError(f"num must be >= 0 over its whole interval; got low={num.low!r}")
        return cls(num.value / den.value, num.low / den.high, num.high / den.low,
                   min(num.n, den.n), f"ratio of ({num.how}) to ({den.how})", unit)

    def too_busy(self, low: float, high: float) -> "Estimate":
        """This estimate widened to ``[low, high]`` (everything it could be), because the machine
        was too busy to time the run it came from: its verdict becomes "not shown by this run"
        rather than what the machine, not the design, produced. More trials at the same rate
        would not decide it, so the count ``k`` is dropped."""
        v.number("low", low, high=self.value)
        v.number("high", high, low=self.value)
        return Estimate(self.value, low, high, self.n, f"{self.how}; widened to [{low:g}, "
                        f"{high:g}]: the machine was too busy to time this run", self.unit)

    def fmt(self, spec: str = ".3g") -> str:
        """The value, and its interval when it has one: ``52.1 ms [48.9, 55.3]``."""
        u = f" {self.unit}" if self.unit and self.unit != "x" else ("x" if self.unit == "x" else "")
        if self.low == self.high:
            return f"{self.value:{spec}}{u}"
        return f"{self.value:{spec}}{u} [{self.low:{spec}}, {self.high:{spec}}]"


def wilson(k: int, n: int, confidence: float = CONFIDENCE) -> tuple[float, float]:
    """The Wilson score interval for a proportion of ``k`` in ``n`` (good at 0 and n too)."""
    v.number("n", n, low=1, high=MAX_N, integer=True)
    v.number("k", k, low=0, high=n, integer=True)
    v.number("confidence", confidence, low=0, high=1, low_open=True, high_open=True)
    z = NormalDist().inv_cdf(0.5 + confidence / 2)
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


# -- claims and findings --------------------------------------------------------------------------
@dataclass(frozen=True)
class Claim:
    """One claim of the source article, declared once in its chapter's module.

    ``claimed`` is the figure the source gives for ``quantity`` (a factor, a rate, a time);
    ``at_least`` says whether the claim is "at least" (an improvement factor, a success rate)
    or "at most" (a latency). The threshold is ``tolerance`` of the claim: ``tolerance *
    claimed`` for at-least claims, ``claimed / tolerance`` for at-most claims. ``conditional``
    claims hold only under ``assumptions`` (their verdict says so); ``assumptions`` are always
    shown beside the verdict.
    """
    id: str
    aspect: str
    source_says: str
    quantity: str
    claimed: float
    at_least: bool = True
    tolerance: float = 0.8
    assumptions: str = ""
    conditional: bool = False
    unit: str = ""

    def __post_init__(self):
        for name in ("aspect", "source_says", "quantity", "assumptions", "unit"):
            if not isinstance(getattr(self, name), str):
                raise TypeError(f"{name} must be a string; got {getattr(self, name)!r}")
        for name in ("at_least", "conditional"):
            if not isinstance(getattr(self, name), bool):
                raise TypeError(f"{name} must be True or False; got {getattr(self, name)!r}")
        if not isinstance(self.id, str) or "." not in self.id:
            raise ValueError(f"id must be '<chapter>.<name>', e.g. 'ch02_chatty.latency'; "
                             f"got {self.id!r}")
        v.number("claimed", self.claimed)
        v.number("tolerance", self.tolerance, low=0, high=1, low_open=True)

    @property
    def chapter(self) -> str:
        return self.id.split(".", 1)[0]

    @property
    def threshold(self) -> float:
        return self.claimed * self.tolerance if self.at_least else self.claimed / self.tolerance

    def decide(self, measured: Estimate) -> str:
        t = self.threshold
        clears = measured.low >= t if self.at_least else measured.high <= t
        misses = measured.high < t if self.at_least else measured.low > t
        if clears:
            return HOLDS_IF if self.conditional else HOLDS
        if misses:
            return FAILS
        return NOT_SHOWN

    def judge(self, measured: Estimate, *, ideal: float | None = None,
              note: str = "") -> "Finding":
        """The finding for this claim from ``measured`` (and the analytic ``ideal``, if any)."""
        if not isinstance(measured, Estimate):
            raise TypeError(f"measured must be an Estimate; got {type(measured).__name__}")
        if ideal is not None:
            v.number("ideal", ideal)
        verdict = self.decide(measured)
        return Finding(self, measured, ideal, verdict, note,
                       needed_trials(self, measured) if verdict == NOT_SHOWN else None)


def needed_trials(claim: Claim, measured: Estimate, limit: int = 10**9) -> int | None:
    """For a proportion the sample could not decide: the trials that would, at the same rate."""
    if measured.k is None:
        return None
    p = measured.k / measured.n
    if not claim.at_least and p == 0:
        return None
    n = measured.n
    while n < limit:
        n *= 2
        k = round(p * n)
        if claim.decide(Estimate.proportion(k, n)) != NOT_SHOWN:
            return n
    return None


@dataclass(frozen=True)
class Finding:
    """A claim, what this run measured for it, the ideal, and the verdict they give."""
    claim: Claim
    measured: Estimate
    ideal: float | None
    verdict: str
    note: str = ""
    needed: int | None = field(default=None)

    def sentence(self, spec: str = ".3g") -> str:
        """One generated sentence comparing the measurement with the claim (never typed)."""
        c, m = self.claim, self.measured
        side = "at least" if c.at_least else "at most"
        unit = "x" if c.unit == "x" else (f" {c.unit}" if c.unit else "")
        s = (f"{c.aspect}: measured {m.fmt(spec)} ({m.how}, n = {m.n}) against the source's "
             f"{c.claimed:{spec}}{unit} ({side} {c.threshold:{spec}}{unit} to hold): "
             f"{self.verdict}")
        if self.verdict == NOT_SHOWN and self.needed:
            s += f"; about {self.needed:,} trials at the same rate would decide it"
        return s + "."

    def record(self) -> dict:
        """The finding as plain JSON-able data (the build writes these next to the site)."""
        c, m = self.claim, self.measured
        return {"id": c.id, "chapter": c.chapter, "aspect": c.aspect,
                "source_says": c.source_says, "quantity": c.quantity, "claimed": c.claimed,
                "at_least": c.at_least, "threshold": c.threshold, "measured": m.value,
                "low": m.low, "high": m.high, "n": m.n, "how": m.how, "unit": m.unit,
                "ideal": self.ideal, "verdict": self.verdict, "needed_trials": self.needed,
                "assumptions": c.assumptions, "note": self.note}


# -- renderings -----------------------------------------------------------------------------------
class Table:
    """Findings as a table: rendered in full as Markdown in pages (nothing cut off), as a
    DataFrame with :meth:`df`, as JSON records with :meth:`records`."""

    COLUMNS = ("aspect", "the source says", "measured here", "ideal", "verdict", "assumptions")

    def __init__(self, findings):
        self.findings = _sequence("findings", findings)
        if not self.findings:
            raise ValueError("findings must not be empty")
        for f in self.findings:
            if not isinstance(f, Finding):
                raise TypeError(f"findings must be Finding objects; got {type(f).__name__}")

    def rows(self) -> list[dict]:
        out = []
        for f in self.findings:
            m = f.measured
            measured = f"{m.fmt()} (n = {m.n}; {m.how})"
            if f.note:
                measured += f"; {f.note}"
            out.append({"aspect": f.claim.aspect, "the source says": f.claim.source_says,
                        "measured here": measured,
                        "ideal": "" if f.ideal is None else f"{f.ideal:.3g}",
                        "verdict": f.verdict + (f" (about {f.needed:,} trials would decide)"
                                                if f.needed else ""),
                        "assumptions": f.claim.assumptions})
        return out

    def df(self) -> pd.DataFrame:
        return pd.DataFrame(self.rows(), columns=self.COLUMNS).set_index("aspect")

    def verdicts(self) -> dict[str, str]:
        return {f.claim.id: f.verdict for f in self.findings}

    def records(self) -> list[dict]:
        return [f.record() for f in self.findings]

    def markdown(self) -> str:
        def cell(x) -> str:
            return str(x).replace("|", "\\|").replace("\n", " ")
        lines = ["| " + " | ".join(self.COLUMNS) + " |",
                 "|" + "---|" * len(self.COLUMNS)]
        lines += ["| " + " | ".join(cell(r[c]) for c in self.COLUMNS) + " |" for r in self.rows()]
        return "\n".join(lines) + "\n"

    def _repr_markdown_(self) -> str:
        return self.markdown()

    def __repr__(self) -> str:
        return f"Table({len(self.findings)} findings)"


def table(findings) -> Table:
    return Table(findings)


def records(findings) -> list[dict]:
    return Table(findings).records()


def dumps(findings) -> str:
    return json.dumps(records(findings), indent=1, sort_keys=True)


def claim_ids(claims) -> list[str]:
    ids = [c.id for c in claims]
    dupes = {i for i in ids if ids.count(i) > 1}
    if dupes:
        raise ValueError(f"claim ids must be unique; repeated: {sorted(dupes)}")
    return ids
