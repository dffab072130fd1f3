"""Mermaid diagrams generated from the objects that run, so a picture cannot disagree with code.

* :func:`flowchart` draws a topology in the four planes with the seed's colours; edges come
  from each node's ``uses`` or, given a trace, from the calls that really happened (with counts).
* :func:`sequence` draws the spans of one recorded trace as a sequence diagram with the
  measured milliseconds; calls that overlapped in time are drawn inside a ``par`` block.

Both return a :class:`Mermaid` object, displayed as a fenced ```mermaid block in Markdown:
JupyterLab 4 renders it natively, and the book renders it with sphinxcontrib-mermaid.
"""
from __future__ import annotations

import re

import pandas as pd

from toylib.core import validate as v
from toylib.core.services import Topology

PLANE_STYLE = {  # fill, stroke: the seed's four-plane palette
    "edge": ("#3B82F6", "#2563EB"),
    "service": ("#10B981", "#059669"),
    "state": ("#F59E0B", "#D97706"),
    "control": ("#8B5CF6", "#7C3AED"),
}
PLANE_TITLE = {"edge": "Edge Plane", "service": "Service Plane", "state": "State Plane",
               "control": "Control Plane"}
PROBLEM_STYLE = ("#FF6666", "#8B5CF6")


class Mermaid:
    """Mermaid source that displays as a diagram in notebooks and on the book site."""

    def __init__(self, source: str):
        self.source = source.strip() + "\n"

    def _repr_markdown_(self) -> str:
        return f"```mermaid\n{self.source}```\n"

    def __str__(self) -> str:
        return self.source

    def __repr__(self) -> str:
        return f"Mermaid({len(self.source.splitlines())} lines)"


def _id(name: str) -> str:
    return re.sub(r"\W", "_", name)


def label(s: str) -> str:
    # Mermaid labels: quotes and brackets would end the label early; ';' ends a statement.
    return str(s).replace('"', "'").replace("[", "(").replace("]", ")").replace(";", ",")


def _shape(node) -> str:
    t = label(node.title)
    return {"db": f'[("{t}")]', "queue": f'[["{t}"]]', "client": f'(["{t}"])'}.get(
        node.shape, f'["{t}"]')


def _topology(topology):
    """A Topology, or the topology of a design (anything with a ``.topology``)."""
    t = getattr(topology, "topology", topology)
    if not isinstance(t, Topology):
        raise TypeError(f"topology must be a Topology or a chapter's design; "
                        f"got {type(topology).__name__}")
    return t


SPAN_COLUMNS = ("trace_id", "caller", "callee", "start")


def _spans(spans) -> pd.DataFrame:
    if not isinstance(spans, pd.DataFrame):
        raise TypeError(f"spans must be a span DataFrame (topo.tracer.df()); "
                        f"got {type(spans).__name__}")
    missing = [c for c in SPAN_COLUMNS if c not in spans.columns]
    if missing:
        raise ValueError(f"spans must be a span DataFrame (topo.tracer.df()); it has no "
                         f"columns {missing}")
    if spans.empty:
        raise ValueError("spans must be a non-empty span DataFrame (topo.tracer.df())")
    return spans


def flowchart(topology, *, trace: pd.DataFrame | None = None, problems: dict | None = None,
              direction: str = "LR", title: str | None = None) -> Mermaid:
    """Draw ``topology`` in its planes.

    ``trace``: a span DataFrame (``topo.tracer.df()``); edges are then the observed calls,
    labelled with their count. ``problems``: ``{node name: note}`` adds a red note node
    attached to that node, as the seed marks anti-pattern problems.
    """
    v.one_of("direction", direction, ("LR", "TB", "RL", "BT"))
    topology = _topology(topology)
    if problems is not None and not isinstance(problems, dict):
        raise TypeError(f"problems must be a dict of node name -> note; got {problems!r}")
    problems = problems or {}
    for name in problems:
        topology[name]  # KeyError naming the allowed names if unknown
    lines = []
    if title:
        # Quoted: the front matter is YAML, where "Before: chatty" would be a syntax error.
        lines += ["---", f'title: "{label(title)}"', "---"]
    lines.append(f"flowchart {direction}")
    by_plane: dict[str, list] = {p: [] for p in PLANE_STYLE}
    for node in topology.nodes.values():
        by_plane[node.plane].append(node)
    for plane, nodes in by_plane.items():
        if not nodes:
            continue
        lines.append(f'  subgraph {plane}_plane["{PLANE_TITLE[plane]}"]')
        lines += [f"    {_id(n.name)}{_shape(n)}" for n in nodes]
        lines.append("  end")
    if trace is not None and len(trace):
        counts = trace.groupby(["caller", "callee"]).size()
        for (a, b), c in counts.items():
            if a not in topology.nodes:
                lines.append(f'  {_id(a)}(["{label(a)}"])')
            lines.append(f"  {_id(a)} -->|{c}×| {_id(b)}")
    else:
        for node in topology.nodes.values():
            lines += [f"  {_id(node.name)} --> {_id(u)}" for u in node.uses]
    for i, (name, note) in enumerate(problems.items()):
        lines.append(f'  problem{i}["⚠ {label(note)}"]')
        lines.append(f"  {_id(name)} -.- problem{i}")
    for plane, (fill, stroke) in PLANE_STYLE.items():
        lines.append(f"  classDef {plane} fill:{fill},stroke:{stroke},color:#fff")
    lines.append(f"  classDef problem fill:{PROBLEM_STYLE[0]},stroke:{PROBLEM_STYLE[1]},"
                 "color:#fff")
    for plane, nodes in by_plane.items():
        if nodes:
            lines.append(f"  class {','.join(_id(n.name) for n in nodes)} {plane}")
    if problems:
        lines.append(f"  class {','.join(f'problem{i}' for i in range(len(problems)))} problem")
    return Mermaid("\n".join(lines))


def sequence(spans: pd.DataFrame, *, trace_id: str | None = None, title: str | None = None,
             collapse: int = 4, participants: list[str] | None = None) -> Mermaid:
    """Draw one trace as a sequence diagram with measured times.

    ``spans``: a span DataFrame (``topo.tracer.df()``). ``trace_id``: which trace (default: the
    first). Runs of more than ``collapse`` consecutive identical calls (same caller, callee and
    route, one after another) are drawn once inside a ``loop`` box with their count and mean
    time, as the seed draws its N+1 loops.
    """
    if isinstance(collapse, bool):
        raise TypeError(f"collapse must be an integer in [2, 1000]; got {collapse!r}")
    v.number("collapse", collapse, low=2, high=1000, integer=True)
    spans = _spans(spans)
    if trace_id is None:
        trace_id = spans["trace_id"].iloc[0]
    df = spans[spans["trace_id"] == trace_id].sort_values("start")
    if df.empty:
        raise ValueError(f"trace_id must be one of the recorded traces; got {trace_id!r}")
    t0 = df["start"].min()
    order = participants or list(dict.fromkeys(
        x for pair in zip(df["caller"], df["callee"]) for x in pair))
    lines = ["sequenceDiagram"]
    if title:
        lines.append(f"  title {label(title)}")
    lines += [f"  participant {_id(p)} as {label(p)}" for p in order]
    children: dict = {}
    for row in df.itertuples():
        children.setdefault(row.parent_id if pd.notna(row.parent_id) else None, []).append(row)
    roots = [r for r in df.itertuples()
             if not (pd.notna(r.parent_id) and r.parent_id in set(df["span_id"]))]
    _emit(lines, roots, children, t0, collapse, "  ")
    return Mermaid("\n".join(lines))


def _status(row) -> str:
    return f"{row.status}" if isinstance(row.status, str) else f"{int(row.status)}"


def _emit(lines, rows, children, t0, collapse, ind):
    """Emit calls made by one caller in time order, grouping overlaps (par) and runs (loop)."""
    groups: list[list] = []
    for r in sorted(rows, key=lambda r: r.start):
        if groups and r.start < max(x.end for x in groups[-1]):
            groups[-1].append(r)      # started before the previous call ended: concurrent
        else:
            groups.append([r])
    i = 0
    while i < len(groups):
        g = groups[i]
        if len(g) == 1:
            j = i
            key = (g[0].caller, g[0].callee, g[0].route)
            while (j + 1 < len(groups) and len(groups[j + 1]) == 1
                   and (groups[j + 1][0].caller, groups[j + 1][0].callee,
                        groups[j + 1][0].route) == key):
                j += 1
            run = [groups[k][0] for k in range(i, j + 1)]
            if len(run) > collapse:
                mean = sum(r.duration_ms for r in run) / len(run)
                lines.append(f"{ind}loop {len(run)} calls, one after another")
                _call(lines, run[0], children, t0, collapse, ind + "  ",
                      f"{mean:.1f} ms each, {run[-1].end - run[0].start:.0f} ms in all")
                lines.append(f"{ind}end")
                i = j + 1
                continue
            _call(lines, g[0], children, t0, collapse, ind)
        else:
            lines.append(f"{ind}par {len(g)} calls in parallel")
            for k, r in enumerate(g):
                if k:
                    lines.append(f"{ind}and")
                _call(lines, r, children, t0, collapse, ind + "  ")
            lines.append(f"{ind}end")
        i += 1


def _call(lines, r, children, t0, collapse, ind, note=None):
    a, b = _id(r.caller), _id(r.callee)
    lines.append(f"{ind}{a}->>+{b}: {r.method} {label(r.route)} @{r.start - t0:.0f} ms")
    kids = children.get(r.span_id, [])
    if kids:
        _emit(lines, kids, children, t0, collapse, ind)
    lines.append(f"{ind}{b}-->>-{a}: {_status(r)} · {note or f'{r.duration_ms:.1f} ms'}")
