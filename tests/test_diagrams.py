"""Mermaid diagrams generated from running topologies and recorded traces."""
from __future__ import annotations

import re

import pytest

from toylib import Service, Store, Topology
from toylib.chapters import ch02_chatty as chatty
from toylib.present.diagrams import PLANE_STYLE, PROBLEM_STYLE, Mermaid, flowchart, sequence

SEED_COLOURS = {"edge": "#3B82F6", "service": "#10B981", "state": "#F59E0B",
                "control": "#8B5CF6"}
K = chatty.Knobs(n_posts=5, n_friends=6, latency_ms=0)


def blocks_balanced(source: str, openers: tuple[str, ...]) -> bool:
    """Every opener line is closed by an ``end`` line, properly nested."""
    depth = 0
    for line in source.splitlines():
        word = line.strip().split(" ", 1)[0]
        if word in openers:
            depth += 1
        elif word == "end":
            depth -= 1
            if depth < 0:
                return False
    return depth == 0


def node_ids(source: str) -> set[str]:
    return set(re.findall(r"^\s+(\w+)[\[\(]", source, re.M))


def edges(source: str) -> list[tuple[str, str, str]]:
    """(from, label, to) of every solid edge."""
    return re.findall(r"^\s+(\w+) -->(?:\|([^|]*)\|)? (\w+)$", source, re.M)


@pytest.fixture(scope="module")
def traces():
    """Spans of one chatty page (before) and one cold + one warm page (after)."""
    import asyncio

    async def record():
        async with chatty.design("before", K) as b:
            await b.call("gateway", "GET", "/profile/3")
        async with chatty.design("after", K) as a:
            await a.call("bff", "GET", "/profile/3")
            await a.call("bff", "GET", "/profile/3")
        return b.topology, a.topology

    return asyncio.run(record())


# -- flowchart -------------------------------------------------------------------------------
def test_flowchart_has_one_subgraph_per_plane_used():
    src = str(flowchart(chatty.design("before", K).topology))
    assert src.startswith("flowchart LR\n")
    subgraphs = re.findall(r"^\s+subgraph (\w+)", src, re.M)
    assert subgraphs == ["edge_plane", "service_plane", "state_plane"]   # no control node
    assert blocks_balanced(src, ("subgraph",))
    topo = Topology(Service("s"), Store("bus", "control"))
    src = str(flowchart(topo, direction="TB"))
    assert src.startswith("flowchart TB\n")
    assert re.findall(r"subgraph (\w+)", src) == ["service_plane", "control_plane"]


def test_flowchart_nodes_sit_in_their_plane_with_the_seed_colours():
    src = str(flowchart(chatty.design("after", K).topology))
    for plane, colour in SEED_COLOURS.items():
        assert PLANE_STYLE[plane][0] == colour
        assert re.search(rf"classDef {plane} fill:{colour}\b", src), plane
    classes = dict((c, set(ns.split(","))) for ns, c in
                   re.findall(r"^\s+class (\S+) (\w+)$", src, re.M))
    assert classes["edge"] == {"bff", "cache"}
    assert classes["service"] == {"composite", "users", "posts"}
    assert classes["state"] == {"user_db", "post_db"}
    # each node is declared inside its plane's subgraph
    body = src.split("subgraph state_plane", 1)[1].split("end", 1)[0]
    assert 'user_db[("User DB")]' in body and "users" not in body.replace("user_db", "")


def test_flowchart_edges_come_from_uses():
    src = str(flowchart(chatty.design("before", K).topology))
    assert sorted((a, b) for a, _, b in edges(src)) == sorted(
        [("gateway", "users"), ("gateway", "posts"), ("users", "user_db"),
         ("posts", "post_db")])
    assert node_ids(src) >= {a for a, _, _ in edges(src)} | {b for _, _, b in edges(src)}


def test_every_chatty_design_declares_the_nodes_its_edges_use():
    for name in chatty.DESIGNS:
        src = str(flowchart(chatty.design(name, K).topology))
        ends = {a for a, _, _ in edges(src)} | {b for _, _, b in edges(src)}
        missing = ends - node_ids(src)
        assert not missing, f"{name}: edges to undeclared nodes {missing}"


def test_flowchart_edges_from_a_trace_carry_counts(traces):
    before, after = traces
    src = str(flowchart(before, trace=before.tracer.df()))
    got = {(a, b): label for a, label, b in edges(src)}
    assert got == {("client", "gateway"): "1×", ("gateway", "users"): f"{1 + K.n_friends}×",
                   ("gateway", "posts"): f"{K.n_posts}×"}
    assert 'client(["client"])' in src         # the outside caller is drawn too
    src = str(flowchart(after, trace=after.tracer.df()))
    got = {(a, b): label for a, label, b in edges(src)}
    assert got == {("client", "bff"): "2×", ("bff", "composite"): "1×",
                   ("composite", "users"): "2×", ("composite", "posts"): "1×"}


def test_problem_nodes_are_red_and_attached():
    src = str(flowchart(chatty.design("before", K).topology, problems={"gateway": '1+N+M "serial" [calls]'}))
    assert PROBLEM_STYLE[0] == "#FF6666"
    assert re.search(r"classDef problem fill:#FF6666\b", src)
    assert re.search(r"^\s+class problem0 problem$", src, re.M)
    assert re.search(r"^\s+gateway -\.- problem0$", src, re.M)
    label = re.search(r'problem0\["([^"]*)"\]', src).group(1)
    assert "1+N+M" in label and "[" not in label      # quotes/brackets cannot end it early
    with pytest.raises(KeyError, match="gateway"):
        flowchart(chatty.design("before", K).topology, problems={"nowhere": "x"})


def test_flowchart_title_is_quoted_front_matter():
    src = str(flowchart(chatty.design("before", K).topology, title="Before: chatty"))
    lines = src.splitlines()
    assert lines[0] == "---" and lines[2] == "---" and lines[3].startswith("flowchart")
    # YAML: an unquoted "Before: chatty" would be a syntax error in Mermaid's front matter
    assert re.fullmatch(r'title: "[^"]*"', lines[1]), lines[1]


def test_flowchart_rejects_a_bad_direction():
    with pytest.raises(ValueError, match="direction"):
        flowchart(chatty.design("before", K).topology, direction="UP")


# -- sequence --------------------------------------------------------------------------------
def test_sequence_collapses_the_n_plus_1_calls_into_loops(traces):
    before, _ = traces
    m = sequence(before.tracer.df(), title="Before")
    src = str(m)
    assert src.startswith("sequenceDiagram\n")
    assert blocks_balanced(src, ("loop", "par", "alt", "opt"))
    loops = re.findall(r"^\s+loop (\d+) calls", src, re.M)
    assert loops == [str(K.n_posts), str(K.n_friends)]
    assert "par " not in src                  # nothing ran in parallel
    # one request line per drawn call: client, first user, one per loop
    assert len(re.findall(r"->>\+", src)) == 4
    assert len(re.findall(r"-->>-", src)) == 4
    participants = re.findall(r"^\s+participant (\w+)", src, re.M)
    assert participants == ["client", "gateway", "users", "posts"]


def test_sequence_shows_the_composite_parallel_calls_in_a_par_block(traces):
    _, after = traces
    df = after.tracer.df()
    src = str(sequence(df))
    assert blocks_balanced(src, ("loop", "par", "alt", "opt"))
    assert re.search(r"^\s+par 3 calls in parallel$", src, re.M)
    par = src.split("par 3 calls", 1)[1].split("\n  end", 1)[0]
    assert par.count("composite->>+") == 3 and len(re.findall(r"^\s+and$", par, re.M)) == 2
    assert "loop" not in src
    # nesting: client -> bff -> composite -> (users | posts | users)
    order = [l.strip().split(":")[0] for l in src.splitlines() if "->>+" in l]
    assert order[:2] == ["client->>+bff", "bff->>+composite"]
    # the warm page is another trace: only client -> bff
    warm = str(sequence(df, trace_id=df["trace_id"].iloc[-1]))
    assert len(re.findall(r"->>\+", warm)) == 1


def test_sequence_collapse_threshold_and_errors(traces):
    before, _ = traces
    df = before.tracer.df()
    src = str(sequence(df, collapse=100))
    assert "loop" not in src
    assert len(re.findall(r"->>\+", src)) == 2 + K.n_posts + K.n_friends
    with pytest.raises(ValueError, match="trace_id"):
        sequence(df, trace_id="nope")
    with pytest.raises(ValueError, match="spans"):
        sequence(df.iloc[0:0])
    with pytest.raises(ValueError, match="collapse"):
        sequence(df, collapse=0)


def test_sequence_titles_cannot_break_the_statement():
    import pandas as pd
    from toylib.core.trace import Span, Tracer
    t = Tracer()
    t.record(Span("t1", 1, None, "client", "a", "GET", "/x", "/x", t.t0, t.t0 + 0.01,
                  "timeout", 0, 0, 0))
    src = str(sequence(t.df(), title="Order: 1; done"))
    assert ";" not in src
    assert "timeout" in src
    assert isinstance(t.df(), pd.DataFrame)


# -- display ---------------------------------------------------------------------------------
def test_repr_markdown_is_a_mermaid_fence(traces):
    before, _ = traces
    for m in (flowchart(before), sequence(before.tracer.df())):
        assert isinstance(m, Mermaid)
        md = m._repr_markdown_()
        assert md.startswith("```mermaid\n") and md.endswith("```\n")
        assert md[len("```mermaid\n"):-len("```\n")] == str(m)
        assert str(m).endswith("\n") and "```" not in str(m)
    assert repr(Mermaid("flowchart LR\n  a --> b")) == "Mermaid(2 lines)"
    assert flowchart(before).source
