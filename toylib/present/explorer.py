"""Knobs that move without a kernel: measured results over a grid, explored in the page.

A chapter's live panel (:mod:`toylib.present.widgets`) reruns the experiment, so it needs a
kernel. The published site has none, so its readers never saw a knob move. An
:func:`explorer` is the site's counterpart: the experiment is run at build time over a small
grid of its knobs (a chapter's ``async def sweep() -> DataFrame``: one row per grid point and
design, knob columns and result columns), the measured rows are embedded in the page, and
client-side controls pick which measured rows the chart shows. Nothing is computed in the
browser; every value shown was measured, and the explorer says when and where.

The chart is a Vega-Lite specification with parameters bound to dropdowns and sliders. On the
book site, ``book/_static/course-explorer.js`` renders it with the site's own copies of Vega,
Vega-Lite and vega-embed (nothing from a third-party host); JupyterLab renders the same
specification natively (``application/vnd.vegalite.v5+json``). Without JavaScript the measured
table is there to read.
"""
from __future__ import annotations

import datetime as _dt
import html
import json
import os
import platform
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

from toylib.core import validate as v
from toylib.present.plots import PALETTE

MAX_ROWS = 5000          # rows of measured data embedded in one page
MAX_KNOBS = 6
MAX_VALUES = 60          # distinct values of one knob (a dropdown stays usable)
MAX_RESULTS = 12
VEGALITE_MIME = "application/vnd.vegalite.v5+json"
SPEC_TYPE = "application/vnd.course-explorer+json"


def build_machine() -> str:
    """What measured the data: the machine's architecture, cores and Python (no host name)."""
    return (f"{platform.machine() or 'unknown machine'}, {os.cpu_count() or '?'} cores, "
            f"Python {platform.python_version()}")


def _plain(x):
    """A JSON-safe scalar (numpy numbers become Python numbers; NaN becomes None)."""
    if isinstance(x, (np.integer,)):
        return int(x)
    if isinstance(x, (np.floating, float)):
        return None if not np.isfinite(x) else float(x)
    if isinstance(x, (np.bool_,)):
        return bool(x)
    return x


def _column(df: pd.DataFrame, param: str, name) -> str:
    if not isinstance(name, str) or name not in df.columns:
        raise ValueError(f"{param} must name a column of the data; got {name!r} "
                         f"(columns: {', '.join(map(str, df.columns))})")
    return name


class Explorer:
    """A measured grid and a chart whose controls choose the knobs; see :func:`explorer`."""

    def __init__(self, df, *, knobs: Sequence[str], results: Sequence[str],
                 design: str = "design", x: str | None = None, title: str = "",
                 ideal: Mapping[str, str] | None = None, measured_on: str | None = None,
                 measured_at: str | None = None, width: int | None = None,
                 height: int = 300):
        if not isinstance(df, pd.DataFrame):
            raise TypeError(f"df must be a pandas DataFrame; got {type(df).__name__}")
        if df.empty:
            raise ValueError("df must have at least one measured row")
        v.number("len(df)", len(df), low=1, high=MAX_ROWS, integer=True)
        if isinstance(knobs, str) or not knobs:
            raise ValueError("knobs must be a non-empty list of column names")
        if isinstance(results, str) or not results:
            raise ValueError("results must be a non-empty list of column names")
        v.number("len(knobs)", len(knobs), low=1, high=MAX_KNOBS, integer=True)
        v.number("len(results)", len(results), low=1, high=MAX_RESULTS, integer=True)
        self.design = _column(df, "design", design)
        self.knobs = [_column(df, "knobs", k) for k in knobs]
        self.results = [_column(df, "results", r) for r in results]
        if len(set(self.knobs) | set(self.results) | {self.design}) \
                != len(self.knobs) + len(self.results) + 1:
            raise ValueError("knobs, results and design must name different columns")
        for r in self.results:
            if not pd.api.types.is_numeric_dtype(df[r]):
                raise ValueError(f"results column {r!r} must be numeric; got {df[r].dtype}")
        for k in self.knobs:
            n = df[k].nunique()
            if n > MAX_VALUES:
                raise ValueError(f"knob {k!r} has {n} values; at most {MAX_VALUES} fit a control")
            if df[k].isna().any():
                raise ValueError(f"knob {k!r} must have a value in every row")
        if x is not None:
            x = _column(df, "x", x)
            if x not in self.knobs:
                raise ValueError(f"x must be one of the knobs {self.knobs}; got {x!r}")
        self.x = x
        self.ideal = dict(ideal or {})
        for r, col in self.ideal.items():
            if r not in self.results:
                raise ValueError(f"ideal keys must be result columns {self.results}; got {r!r}")
            _column(df, "ideal", col)
        if width is not None:      # None: as wide as the page (phones included)
            v.number("width", width, low=200, high=2000, integer=True)
        v.number("height", height, low=120, high=1200, integer=True)
        self.width, self.height = width, height
        self.title = str(title)
        self.measured_on = measured_on or build_machine()
        self.measured_at = measured_at or _dt.datetime.now(_dt.timezone.utc).strftime(
            "%Y-%m-%d %H:%M UTC")
        cols = [self.design, *self.knobs, *self.results, *self.ideal.values()]
        self.df = df[list(dict.fromkeys(cols))].reset_index(drop=True)

    # -- the specification ---------------------------------------------------------------
    def _control(self, k: str, i: int) -> dict:
        values = sorted(self.df[k].unique().tolist(), key=lambda a: (str(type(a)), a))
        values = [_plain(a) for a in values]
        integers = all(isinstance(a, int) and not isinstance(a, bool) for a in values)
        step = values[1] - values[0] if integers and len(values) > 1 else None
        evenly = bool(step) and all(b - a == step for a, b in zip(values, values[1:]))
        if integers and evenly and len(values) > 4:
            bind = {"input": "range", "min": values[0], "max": values[-1], "step": step,
                    "name": f"{k} "}
        else:
            bind = {"input": "select", "options": values, "name": f"{k} "}
        return {"name": f"knob_{i}", "value": values[0], "bind": bind}

    @property
    def spec(self) -> dict:
        """The Vega-Lite specification (data included)."""
        params, filters = [], []
        for i, k in enumerate(self.knobs):
            if k == self.x:
                continue
            params.append(self._control(k, i))
            filters.append({"filter": f"datum[{json.dumps(k)}] == knob_{i}"})
        fold = []
        if len(self.results) > 1:
            params.append({"name": "result", "value": self.results[0],
                           "bind": {"input": "select", "options": self.results,
                                    "name": "result "}})
            fold = [{"fold": self.results, "as": ["result", "value"]},
                    {"filter": "datum.result == result"}]
            y_field, y_title = "value", {"expr": "result"}
        else:
            y_field, y_title = self.results[0], self.results[0]
        designs = list(dict.fromkeys(self.df[self.design].tolist()))
        color = {"field": self.design, "type": "nominal", "title": self.design,
                 "legend": {"orient": "bottom", "direction": "horizontal"},
                 "scale": {"domain": designs,
                           "range": [PALETTE[i % len(PALETTE)] for i in range(len(designs))]}}
        y = {"field": y_field, "type": "quantitative", "title": y_title}
        tooltip = [{"field": c, "type": "nominal" if c == self.design else None}
                   for c in [self.design, *self.knobs]]
        tooltip = [{k: val for k, val in t.items() if val is not None} for t in tooltip]
        tooltip.append({"field": y_field, "type": "quantitative", "format": ".4~g",
                        "title": "measured"})
        if self.x is None:
            mark = {"type": "bar", "tooltip": True}
            enc = {"x": {"field": self.design, "type": "nominal", "sort": designs,
                         "axis": {"labelAngle": 0}},
                   "y": y, "color": color, "tooltip": tooltip}
        else:
            numeric = pd.api.types.is_numeric_dtype(self.df[self.x])
            mark = {"type": "line", "point": True, "tooltip": True}
            x_enc = {"field": self.x, "type": "quantitative" if numeric else "ordinal"}
            if numeric:   # ticks at the measured grid points only
                x_enc["axis"] = {"values": sorted(_plain(a) for a in self.df[self.x].unique())}
                if pd.api.types.is_integer_dtype(self.df[self.x]):
                    x_enc["axis"]["format"] = "d"
            enc = {"x": x_enc, "y": y, "color": color, "tooltip": tooltip}
        layers = [{"mark": mark, "encoding": enc}]
        for r, col in self.ideal.items():
            ideal_enc = {"y": {"field": col, "type": "quantitative"}, "color": color,
                         "x": enc["x"]}
            mark_ideal = ({"type": "tick", "strokeDash": [6, 4], "thickness": 2, "size": 40}
                          if self.x is None else
                          {"type": "line", "strokeDash": [6, 4], "strokeWidth": 1.5,
                           "opacity": 0.8})
            layer = {"mark": mark_ideal, "encoding": ideal_enc}
            if len(self.results) > 1:
                layer["transform"] = [{"filter": f"result == {json.dumps(r)}"}]
            layers.append(layer)
        records = [{c: _plain(val) for c, val in row.items()}
                   for row in self.df.to_dict(orient="records")]
        spec = {
            "description": self.alt(),
            "title": {"text": self.title or "Measured results",
                      "subtitle": f"measured at build time on the build machine "
                                  f"({self.measured_on}, {self.measured_at})",
                      "anchor": "start"},
            "width": "container" if self.width is None else self.width,
            "height": self.height,
            "autosize": {"type": "fit-x", "contains": "padding"},
            "background": "white",
            "data": {"values": records},
            "params": params,
            "transform": fold + filters,
            "layer": layers,
            "config": {"font": "sans-serif", "axis": {"labelFontSize": 12, "titleFontSize": 13},
                       "legend": {"labelFontSize": 12, "titleFontSize": 13}},
        }
        return spec

    # -- what a reader sees -----------------------------------------------------------------
    def alt(self) -> str:
        what = ", ".join(self.results)
        over = ", ".join(self.knobs)
        return (f"Chart of the measured {what} for each {self.design} "
                f"({', '.join(map(str, dict.fromkeys(self.df[self.design])))}), "
                f"chosen by the controls for {over}; {len(self.df)} measured rows.")

    def note(self) -> str:
        return (f"Measured at build time on the build machine ({self.measured_on}, "
                f"{self.measured_at}): {len(self.df)} rows over a grid of "
                f"{', '.join(self.knobs)}. The controls choose which measured rows are shown; "
                "nothing is recomputed in your browser. Run the notebook to measure your own "
                "machine.")

    def _repr_html_(self) -> str:
        spec = json.dumps(self.spec, separators=(",", ":")).replace("</", "<\\/")
        table = self.df.to_html(index=False, border=0, classes="course-explorer-table")
        return (
            f'<div class="course-explorer" role="figure" aria-label="{html.escape(self.alt())}">'
            f'<p class="course-explorer-note">{html.escape(self.note())}</p>'
            f'<div class="course-explorer-chart"></div>'
            f'<script type="{SPEC_TYPE}">{spec}</script>'
            f'<details class="course-explorer-fallback"><summary>The measured values '
            f'({len(self.df)} rows)</summary><div class="course-scroll">{table}</div></details>'
            f'</div>')

    def _repr_mimebundle_(self, include=None, exclude=None):
        return {"text/html": self._repr_html_(), VEGALITE_MIME: self.spec,
                "text/plain": repr(self)}

    def __repr__(self) -> str:
        return (f"Explorer({len(self.df)} measured rows; knobs {self.knobs}; "
                f"results {self.results})")


def explorer(df, *, knobs: Sequence[str], results: Sequence[str], design: str = "design",
             x: str | None = None, title: str = "", ideal: Mapping[str, str] | None = None,
             measured_on: str | None = None, measured_at: str | None = None,
             width: int | None = None, height: int = 300) -> Explorer:
    """An explorer of measured rows ``df``: display it as the last expression of a cell.

    ``knobs``: the columns a reader chooses (a dropdown or slider each, except ``x``);
    ``results``: the measured columns (a dropdown picks one when there are several);
    ``design``: the column naming the design of each row (one colour each);
    ``x``: a knob drawn along the x axis (a line per design) instead of getting a control;
    ``ideal``: ``{result column: ideal column}``, drawn dashed beside the measurement;
    ``width``: pixels, or None to fill the page's width.
    """
    return Explorer(df, knobs=knobs, results=results, design=design, x=x, title=title,
                    ideal=ideal, measured_on=measured_on, measured_at=measured_at,
                    width=width, height=height)
