"""The figures every chapter needs: before vs after, measured vs ideal.

Figures get an opaque white background so they stay readable on a dark-mode page. The ideal
(analytic) value is always drawn beside the measurement, dashed, so the gap is visible.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from toylib.core import validate as v
from toylib.core.load import LoadResult

BEFORE, AFTER, IDEAL = "#FF6666", "#10B981", "#374151"   # problem red, service green, grey
PALETTE = [BEFORE, AFTER, "#3B82F6", "#F59E0B", "#8B5CF6", "#6B7280"]


def style() -> None:
    """Opaque figures (dark mode), readable sizes. Called on import of this module."""
    matplotlib.rcParams.update({
        "figure.facecolor": "white", "axes.facecolor": "white", "savefig.facecolor": "white",
        "savefig.transparent": False, "figure.figsize": (7.5, 3.6), "figure.dpi": 100,
        "axes.grid": True, "grid.alpha": 0.3, "axes.spines.top": False,
        "axes.spines.right": False, "font.size": 10,
    })


style()


def _latencies(x) -> pd.Series:
    if isinstance(x, LoadResult):
        return x.latencies
    s = pd.Series(x, dtype=float)
    if s.isna().any():
        raise ValueError("latencies must not contain NaN")
    return s


def _labels(results) -> tuple[list[str], list[pd.Series]]:
    if not isinstance(results, Mapping) or not results:
        raise ValueError("results must be a non-empty mapping of label -> LoadResult or "
                         "a sequence of latencies in ms")
    return list(results), [_latencies(r) for r in results.values()]


def percentiles(results, *, ideal: Mapping | None = None, ps: Sequence[float] = (50, 90, 99),
                title: str = "", unit: str = "ms", ax=None, log: bool = False):
    """Grouped bars: one group per percentile, one bar per design; the ideal as dashed lines."""
    for p in ps:
        v.number("ps", p, low=0, high=100)
    labels, series = _labels(results)
    fig, ax = _axes(ax)
    width = 0.8 / len(labels)
    x = np.arange(len(ps))
    for k, (lab, s) in enumerate(zip(labels, series)):
        vals = [np.percentile(s, p) if len(s) else np.nan for p in ps]
        bars = ax.bar(x + k * width, vals, width, label=lab, color=PALETTE[k % len(PALETTE)])
        ax.bar_label(bars, fmt="%.0f", fontsize=8, padding=2)
        if ideal and lab in ideal:
            ax.hlines(ideal[lab], x[0] - width / 2, x[-1] + len(labels) * width - width / 2,
                      colors=PALETTE[k % len(PALETTE)], linestyles="dashed",
                      label=f"{lab}: ideal {ideal[lab]:.0f} {unit}")
    ax.set_xticks(x + width * (len(labels) - 1) / 2, [f"p{p:g}" for p in ps])
    ax.set_ylabel(f"latency ({unit})")
    if log:
        ax.set_yscale("log")
    ax.set_title(title)
    ax.legend(fontsize=8)
    return fig


def distributions(results, *, ideal: Mapping | None = None, title: str = "",
                  unit: str = "ms", ax=None, log: bool = True):
    """Empirical CDFs of latency, one line per design; the ideal as a dashed vertical line."""
    labels, series = _labels(results)
    fig, ax = _axes(ax)
    for k, (lab, s) in enumerate(zip(labels, series)):
        xs = np.sort(s.to_numpy())
        if len(xs):
            ax.step(xs, np.arange(1, len(xs) + 1) / len(xs), where="post", label=lab,
                    color=PALETTE[k % len(PALETTE)])
        if ideal and lab in ideal:
            ax.axvline(ideal[lab], color=PALETTE[k % len(PALETTE)], ls="--", lw=1,
                       label=f"{lab}: ideal")
    if log:
        ax.set_xscale("log")
    ax.set_xlabel(f"latency ({unit})")
    ax.set_ylabel("fraction of requests ≤ x")
    ax.set_title(title)
    ax.legend(fontsize=8)
    return fig


def measured_vs_ideal(x: Sequence, measured: Mapping, ideal: Mapping | None = None, *,
                      xlabel: str = "", ylabel: str = "", title: str = "", ax=None,
                      logy: bool = False):
    """Lines with markers for each measured series, dashed lines for each analytic one."""
    x = list(x)
    fig, ax = _axes(ax)
    for k, (lab, ys) in enumerate(measured.items()):
        if len(ys) != len(x):
            raise ValueError(f"measured[{lab!r}] must have {len(x)} values, one per x")
        ax.plot(x, ys, "o-", label=f"{lab} (measured)", color=PALETTE[k % len(PALETTE)])
        if ideal and lab in ideal:
            ax.plot(x, ideal[lab], "--", label=f"{lab} (ideal)",
                    color=PALETTE[k % len(PALETTE)], alpha=0.7)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if logy:
        ax.set_yscale("log")
    ax.set_title(title)
    ax.legend(fontsize=8)
    return fig


def _axes(ax):
    if ax is None:
        fig, ax = plt.subplots(layout="constrained")
        return fig, ax
    return ax.figure, ax
