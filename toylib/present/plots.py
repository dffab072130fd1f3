"""The figures every chapter needs: before vs after, measured vs ideal.

Figures get an opaque white background so they stay readable on a dark-mode page. The ideal
(analytic) value is always drawn beside the measurement, dashed, so the gap is visible.

Every figure a notebook shows carries a caption and an alt text that says what it shows:
:func:`describe` sets them (each plot function takes ``caption=`` and ``alt=``), and a figure
without them gets both from its own titles, axis labels and legend. They travel inside the PNG
(its standard ``Title`` and ``Description`` text chunks), so JupyterLab shows the plain image
and the book turns it into a numbered figure with that caption and alt text.

Importing this module also shows tables in full (:mod:`toylib.present.display`).
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from matplotlib.figure import Figure

from toylib.core import validate as v
from toylib.core.load import LoadResult
from toylib.present.display import full_tables

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
    full_tables()                 # tables in full: no cell cut to "…", no column hidden
    _register_png_formatter()


# -- captions and alt text -------------------------------------------------------------------
MAX_TEXT = 600   # characters of a caption or an alt text


def describe(fig: Figure, caption: str = "", alt: str = "") -> Figure:
    """Give ``fig`` a caption and an alt text (what the figure shows); returns ``fig``.

    Empty values keep the ones derived from the figure itself (see :func:`texts`).
    """
    if not isinstance(fig, Figure):
        raise TypeError(f"fig must be a matplotlib Figure; got {type(fig).__name__}")
    for name, value in (("caption", caption), ("alt", alt)):
        if not isinstance(value, str):
            raise TypeError(f"{name} must be a string; got {type(value).__name__}")
        if len(value) > MAX_TEXT:
            raise ValueError(f"{name} must be at most {MAX_TEXT} characters; got {len(value)}")
    if caption:
        fig._course_caption = " ".join(caption.split())
    if alt:
        fig._course_alt = " ".join(alt.split())
    return fig


def _clean(s) -> str:
    return " ".join(str(s).replace("$", "").split())


def _axis_words(ax) -> str:
    title = _clean(ax.get_title())
    x, y = _clean(ax.get_xlabel()), _clean(ax.get_ylabel())
    kind = "bar chart" if ax.patches and not ax.lines else "chart"
    if ax.get_yscale() == "log" or ax.get_xscale() == "log":
        kind = "log-scale " + kind
    words = f"{kind} '{title}'" if title else kind
    if y and x:
        words += f" of {y} against {x}"
    elif y or x:
        words += f" of {y or x}"
    handles, labels = ax.get_legend_handles_labels()
    labels = [_clean(lab) for lab in labels if lab and not str(lab).startswith("_")]
    if labels:
        words += "; series: " + ", ".join(labels)
    return words


def texts(fig: Figure) -> tuple[str, str]:
    """``(caption, alt)`` of ``fig``: those given to :func:`describe`, else derived from it."""
    axes = [ax for ax in fig.axes if ax.get_visible() and ax.has_data()]
    suptitle = _clean(fig._suptitle.get_text()) if getattr(fig, "_suptitle", None) else ""
    titles = [t for t in (_clean(ax.get_title()) for ax in axes) if t]
    caption = getattr(fig, "_course_caption", "") or suptitle or "; ".join(titles)
    alt = getattr(fig, "_course_alt", "")
    if not alt and axes:
        parts = [_axis_words(ax) for ax in axes]
        alt = ("Figure" + (f" '{suptitle}'" if suptitle else "") + ": "
               + (parts[0] if len(parts) == 1
                  else f"{len(parts)} panels: " + " | ".join(parts)))
    return caption[:MAX_TEXT], alt[:MAX_TEXT]


def png(fig: Figure) -> bytes:
    """The PNG a notebook shows for ``fig``, with its caption and alt text inside."""
    import io
    caption, alt = texts(fig)
    metadata = {"Software": None}
    if caption:
        metadata["Title"] = caption
    if alt:
        metadata["Description"] = alt
    buf = io.BytesIO()
    fig.canvas.print_figure(buf, format="png", bbox_inches="tight", metadata=metadata,
                            facecolor=fig.get_facecolor(), edgecolor=fig.get_edgecolor())
    return buf.getvalue()


def png_base64(fig: Figure) -> str:
    """:func:`png`, base64-encoded: what a notebook output (and a widget's) carries."""
    import base64
    return base64.b64encode(png(fig)).decode("ascii")


def _register_png_formatter() -> None:
    """In IPython, display every Figure through :func:`png` (plain images elsewhere)."""
    try:
        from IPython import get_ipython
    except ImportError:       # pragma: no cover - IPython comes with ipykernel
        return
    ip = get_ipython()
    if ip is None:
        return
    matplotlib.get_backend()  # let the inline backend register its formatter first
    # base64 text, as IPython's own figure formatter gives: a widget Output (the panels) sends
    # its outputs as JSON and shows raw bytes as a broken image
    ip.display_formatter.formatters["image/png"].for_type(Figure, png_base64)


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
                title: str = "", unit: str = "ms", ax=None, log: bool = False,
                caption: str = "", alt: str = ""):
    """Grouped bars: one group per percentile, one bar per design; the ideal as dashed lines."""
    ps = _numbers("ps", ps, low=0, high=100, low_open=True)
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
    return describe(fig, caption, alt)


def distributions(results, *, ideal: Mapping | None = None, title: str = "",
                  unit: str = "ms", ax=None, log: bool = True, caption: str = "",
                  alt: str = ""):
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
    return describe(fig, caption, alt)


def measured_vs_ideal(x: Sequence, measured: Mapping, ideal: Mapping | None = None, *,
                      xlabel: str = "", ylabel: str = "", title: str = "", ax=None,
                      logy: bool = False, caption: str = "", alt: str = ""):
    """Lines with markers for each measured series, dashed lines for each analytic one."""
    x = _numbers("x", x)
    if not isinstance(measured, Mapping) or not measured:
        raise TypeError(f"measured must be a non-empty dict of label -> values (one per x); "
                        f"got {measured!r}")
    for lab, ys in measured.items():
        ys = _numbers(f"measured[{lab!r}]", ys, finite=False, gaps=True)
        if len(ys) != len(x):
            raise ValueError(f"measured[{lab!r}] must have {len(x)} values, one per x")
    if ideal is not None and not isinstance(ideal, Mapping):
        raise TypeError(f"ideal must be a dict of label -> values or None; got {ideal!r}")
    fig, ax = _axes(ax)
    for k, (lab, ys) in enumerate(measured.items()):
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
    return describe(fig, caption, alt)


def _numbers(name: str, xs, *, low=None, high=None, low_open=False, finite=True,
             gaps=False) -> list:
    """A non-empty list of numbers (no bools; finite unless ``finite`` is False; NaN only as a
    gap in a measured series, ``gaps``)."""
    if isinstance(xs, (str, bytes, Mapping)) or not hasattr(xs, "__iter__"):
        raise TypeError(f"{name} must be a list of numbers; got {xs!r}")
    out = list(xs)
    if not out or len(out) > 100_000:
        raise ValueError(f"{name} must hold 1 to 100,000 numbers; got {len(out)}")
    for x in out:
        if isinstance(x, bool):
            raise TypeError(f"{name} must hold numbers, not bools; got {x!r}")
        if gaps and isinstance(x, float) and x != x:
            continue                          # a point not measured: drawn as a gap
        v.number(name, x, low=low, high=high, low_open=low_open, finite=finite)
    return out


def _axes(ax):
    if ax is None:
        fig, ax = plt.subplots(layout="constrained")
        _register_png_formatter()   # after the backend is surely loaded
        return fig, ax
    return ax.figure, ax
