"""Chapter 7's audit: the seed's evolution graph and comparison table come from one structure;
findings have the right shape and a verdict from the three categories; the small runs count
what the chapters count; bad input is refused with the parameter named.

Most tests use hand-made findings (no services run). One module fixture runs the whole fast
audit once (about 20 s) and the tests that need real measurements read it.
"""
from __future__ import annotations

import asyncio
import math
import re
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402

from toylib import claims
from toylib.chapters import ch07_evolution as evolution  # noqa: E402
from toylib.chapters.ch07_evolution import (EVOLUTION, KEYS, SEED_CLAIMS, VERDICTS, Audit, Finding,  # noqa: E402
                              Plan)

ROOT = Path(__file__).resolve().parent.parent
SEED_IMPROVEMENTS = ["10x availability", "10x faster", "Unlimited teams", "99.9% availability",
                     "No hanging requests", "Graceful degradation"]
SEED_COLOURS = {"anti": "#8B5CF6", "practice": "#10B981", "result": "#3B82F6"}
NOT_JUDGED = ("argued, not measured", "not measured")


def finding(key: str, verdict: str = claims.HOLDS, *, before=0.5, after=0.05, claimed=10.0,
            n_after=None, rows=()) -> Finding:
    return Finding(key, measured=f"measured {key}", headline=f"headline {key}", verdict=verdict,
                   assumptions=f"assumed {key}", before=before, after=after, unit="share",
                   claimed=claimed, n_after=n_after, rows=list(rows))


def fake_audit(keys=KEYS) -> Audit:
    verdicts = {k: VERDICTS[i % 3] for i, k in enumerate(KEYS)}
    return Audit({k: finding(k, verdicts[k]) for k in keys}, Plan.fast())


@pytest.fixture(scope="module")
def audit() -> Audit:
    """The fast audit, run once for the module (its own event loop, closed afterwards)."""
    return asyncio.run(evolution.run_all(progress=False))


# -- the seed's structure -------------------------------------------------------------------------
def test_evolution_is_the_seeds_six_transitions_in_order():
    assert KEYS == tuple(evolution.EXPERIMENTS) == tuple(evolution.CHAPTERS)
    assert [t.improvement for t in EVOLUTION] == SEED_IMPROVEMENTS
    ids = [t.anti[0] for t in EVOLUTION] + [t.practice[0] for t in EVOLUTION] \
        + [t.result[0] for t in EVOLUTION]
    assert len(set(ids)) == 18 and all(re.fullmatch(r"[A-Z_]+", i) for i in ids)
    assert EVOLUTION[0].anti == ("DISTRIBUTED_MONOLITH", "Distributed Monolith")
    assert EVOLUTION[4].result == ("TEAM_AUTONOMY", "Team Autonomy")   # the seed's own pairing
    for t in EVOLUTION:
        assert (ROOT / t.chapter.path).is_file(), t.chapter.path


def test_seed_table_is_drawn_from_the_same_structure():
    table = evolution.seed_table()
    assert list(table.index) == [t.anti[1] for t in EVOLUTION]
    assert list(table["improvement"]) == SEED_IMPROVEMENTS
    assert list(table["best practice"]) == [t.practice[1] for t in EVOLUTION]


def _edges(source: str) -> list[tuple[str, str, str]]:
    return re.findall(r"^\s+(\w+) -->(?:\|\"(.*?)\"\|)? (\w+)$", source, re.M)


def test_the_graph_has_every_node_and_edge_of_the_structure_and_nothing_else():
    src = evolution.graph().source
    assert src.startswith("flowchart TB")
    for t in EVOLUTION:
        for node_id, label in (t.anti, t.practice, t.result):
            assert len(re.findall(rf'^\s+{node_id}\["{re.escape(label)}"\]$', src, re.M)) == 1
    edges = [(a, b) for a, _, b in _edges(src)]
    assert edges == [(t.anti[0], t.practice[0]) for t in EVOLUTION] + \
        [(t.practice[0], t.result[0]) for t in EVOLUTION]
    labels = [label for _, label, _ in _edges(src) if label]
    assert labels == SEED_IMPROVEMENTS
    assert "linkStyle" not in src


def test_the_graph_uses_the_seeds_colours():
    src = evolution.graph().source
    for role, fill in SEED_COLOURS.items():
        assert re.search(rf"classDef {role}Style fill:{fill},", src), role
        ids = re.search(rf"^\s+class (\S+) {role}Style$", src, re.M).group(1).split(",")
        assert ids == [getattr(t, role)[0] for t in EVOLUTION]


def test_the_graph_of_an_audit_says_what_its_table_says():
    a = fake_audit()
    src = evolution.graph(a).source
    table = a.table()
    results = {b: label for _, label, b in _edges(src) if label}
    for i, t in enumerate(EVOLUTION):
        f = a[t.key]
        label = results[t.result[0]]
        assert label.startswith(f"{t.improvement}?") and f.headline in label
        assert label.endswith(f.verdict)
        row = table.loc[f"{t.anti[1]} → {t.practice[1]}"]
        assert (row["the seed says"], row["verdict"]) == (t.improvement, f.verdict)
        colour = evolution.VERDICT_COLOUR[f.verdict]
        assert f"linkStyle {len(EVOLUTION) + i} stroke:{colour}," in src


def test_a_partial_audit_colours_only_what_it_measured():
    a = fake_audit(("chatty",))
    src = evolution.graph(a).source
    assert src.count("linkStyle") == 1 and f"linkStyle {len(EVOLUTION) + 1} " in src
    assert len(a.table()) == 1
    with pytest.raises(KeyError, match="was not run"):
        a["monolith"]


def test_the_markdown_table_links_every_row_to_its_chapter():
    a = fake_audit()
    for from_dir in ("chapters", "book"):
        md = a.markdown(from_dir).data
        links = re.findall(r"\[chapter (\d)\]\(([^)]+)\)", md)
        assert [int(n) for n, _ in links] == [1, 2, 3, 4, 5, 6]
        for _, target in links:
            assert (ROOT / from_dir / target).resolve().is_file(), target
        assert md.count("\n") == 2 + len(EVOLUTION)


# -- findings ------------------------------------------------------------------------------------
def test_a_zero_after_is_a_bound_with_a_sample_and_unbounded_without():
    assert finding("monolith", before=0.2, after=0.05).ratio == pytest.approx(4.0)
    bounded = finding("sync", before=0.23, after=0.0, n_after=100)
    assert bounded.bounded and bounded.ratio == pytest.approx(0.23 / 0.03)
    count = finding("shared_db", before=3, after=0, claimed=math.inf)
    assert not count.bounded and math.isinf(count.ratio)
    assert finding("shared_db", before=0, after=0).ratio == 1.0
    assert (finding("monolith", before=0.2, after=0.05).ratio_text, bounded.ratio_text,
            count.ratio_text, count.claimed_text) == ("4x", "≥ 7.7x", "∞", "∞")


@pytest.mark.parametrize("kw, name", [
    ({"verdict": "holds, mostly"}, "verdict"), ({"before": -1.0}, "before"),
    ({"after": float("nan")}, "after"), ({"claimed": 0.0}, "claimed"),
    ({"n_after": 0}, "n_after"), ({"key": "monolith2"}, "key")])
def test_a_finding_refuses_bad_input_naming_the_field(kw, name):
    args = {"key": "chatty", "verdict": claims.HOLDS, "before": 1.0, "after": 0.5,
            "claimed": 10.0, "n_after": None, **kw}
    key = args.pop("key")
    with pytest.raises((TypeError, ValueError), match=name):
        finding(key, **args)


def test_a_finding_rows_must_be_claims():
    with pytest.raises(TypeError, match="rows"):
        finding("chatty", rows=[("latency", "10x")])


def test_an_audit_refuses_a_finding_under_another_key():
    with pytest.raises(TypeError, match="findings"):
        Audit({"chatty": finding("monolith")}, Plan.fast())


# -- bad input ------------------------------------------------------------------------------------
@pytest.mark.parametrize("kw, exc, name", [
    ({"fast": "yes"}, TypeError, "fast"), ({"fast": 1}, TypeError, "fast"),
    ({"only": ["monolith", "nope"]}, ValueError, "only"), ({"only": "chatty"}, ValueError, "only"),
    ({"only": []}, ValueError, "only"), ({"progress": "auto"}, TypeError, "progress")])
async def test_run_all_refuses_bad_input_naming_the_parameter(kw, exc, name):
    with pytest.raises(exc, match=name):
        await evolution.run_all(**kw)


@pytest.mark.parametrize("kw, name", [
    ({"orders": 0}, "orders"), ({"pages": 2.5}, "pages"), ({"zipf_seconds": 0}, "zipf_seconds"),
    ({"timeout_rate": 5000}, "timeout_rate"), ({"extras": "yes"}, "extras"),
    ({"outage": {"run_s": 2}}, "outage")])
def test_a_plan_refuses_bad_sizes_naming_them(kw, name):
    with pytest.raises((TypeError, ValueError), match=name):
        Plan(**kw)


def test_the_full_plan_is_larger_and_adds_the_extras():
    fast, full = Plan.fast(), Plan.full()
    assert not fast.extras and full.extras
    assert full.pages > fast.pages and full.outage.run_s > fast.outage.run_s


@pytest.mark.parametrize("bad", ["/abs/chapters", "C:\\book", 3])
def test_a_link_refuses_an_absolute_folder(bad):
    with pytest.raises(ValueError, match="from_dir"):
        evolution.CHAPTERS["chatty"].link(bad)


def test_graph_and_pages_refuse_what_is_not_an_audit():
    with pytest.raises(TypeError, match="audit"):
        evolution.graph({"chatty": finding("chatty")})
    with pytest.raises(ValueError, match="direction"):
        evolution.graph(direction="UP")
    with pytest.raises(TypeError, match="audit"):
        evolution.claims_markdown(None, "chatty")
    with pytest.raises(ValueError, match="chapter"):
        evolution.claims_markdown(fake_audit(), "chapter 2")
    with pytest.raises(ValueError, match="findings"):
        evolution.ratio_figure([])


def test_the_figure_draws_a_bar_and_a_claim_per_anti_pattern():
    a = fake_audit()
    a.findings["shared_db"] = finding("shared_db", claims.HOLDS_IF, before=3, after=0,
                                      claimed=math.inf)
    fig = a.figure()
    ax = fig.axes[0]
    assert len(ax.patches) == len(EVOLUTION)
    assert ax.get_yscale() == "log"
    assert [t.get_text() for t in ax.get_yticklabels()][-1] == "∞"
    assert sum(len(c.get_offsets()) for c in ax.collections) == len(EVOLUTION)
    plt.close(fig)


# -- the catalogue of every claim -----------------------------------------------------------------
def test_every_chapter_has_its_claims_in_the_catalogue_once():
    seen = [(c.chapter, c.aspect) for c in SEED_CLAIMS]
    assert len(seen) == len(set(seen))
    assert {c.chapter for c in SEED_CLAIMS} == set(KEYS)
    with pytest.raises(ValueError, match="run"):
        evolution.SeedClaim("chatty", "x", "y", "z", run="later")


def test_a_chapter_page_without_its_run_says_so_instead_of_inventing_a_verdict():
    a = fake_audit(("monolith",))
    md = evolution.claims_markdown(a, "chatty", from_dir="book").data
    assert "../chapters/ch02_chatty.ipynb" in md
    for verdict in VERDICTS:
        assert verdict not in md
    assert md.count("| — |") == sum(c.chapter == "chatty" for c in SEED_CLAIMS)


# -- the real runs --------------------------------------------------------------------------------
def test_the_fast_audit_has_a_finding_per_anti_pattern(audit):
    assert list(audit.findings) == list(KEYS)
    for f in audit:
        assert f.verdict in VERDICTS
        assert f.before >= 0 and f.after >= 0 and f.ratio > 0 and f.claimed > 0
        assert f.measured and f.assumptions and f.headline
        for row in f.rows:
            assert isinstance(row, claims.LegacyClaim)
            assert row.verdict in VERDICTS + NOT_JUDGED
    assert audit.plan == Plan.fast()
    assert set(audit.seconds) == set(KEYS)


def test_the_fast_audit_judges_exactly_the_fast_rows_of_the_catalogue(audit):
    for key in KEYS:
        judged = {r.aspect for r in audit[key].rows}
        listed = {c.aspect for c in SEED_CLAIMS if c.chapter == key and c.run in ("fast", "argued")}
        assert judged == listed, key


def test_the_fast_audit_counts_what_the_chapters_count(audit):
    chatty = audit["chatty"].counts
    assert (chatty["calls per page before"], chatty["calls per page after"]) == (21, 3)
    shared = audit["shared_db"].counts
    assert (shared["other teams broken, shared"], shared["other teams broken, per service"]) \
        == (3, 0)
    mono = audit["monolith"].counts
    assert mono["services broken by the rename, before"] == 3
    assert mono["services broken by the rename, after"] == 0
    assert mono["failed before"] > 2 * mono["failed after"] > 0
    assert (mono["payment down: orders taken before"],
            mono["payment down: orders taken after"]) == (0, mono["payment down: orders sent"])
    r = audit.plan.amp_requests
    amp = [audit["timeouts"].counts[f"database calls for {r} requests, k = {k}"]
           for k in range(1, 5)]
    assert amp == [3 ** k * r for k in range(1, 5)]
    sync = audit["sync"].counts
    assert sync["completed: before, 1 try"] < sync["completed: after, 3 tries"]


def test_the_deterministic_verdicts_are_the_chapters(audit):
    assert audit["monolith"].verdict == claims.FAILS        # 5x, not 10x: five services
    assert audit["shared_db"].verdict == claims.HOLDS_IF
    assert audit["sync"].verdict == claims.HOLDS_IF
    counts = audit.counts()
    assert {name for name, c in counts.items() if "verdict" in c} == {
        "Distributed Monolith", "Shared Database", "Sync Communication"}


def test_the_audit_pages_render_from_the_real_run(audit):
    md = audit.markdown("chapters").data
    for f in audit:
        assert f.transition.improvement in md and f.verdict in md
    for key in KEYS:
        page = evolution.claims_markdown(audit, key).data
        for c in (c for c in SEED_CLAIMS if c.chapter == key):
            assert c.aspect in page
    summary = evolution.claims_summary(audit)
    assert summary.to_numpy().sum() == len(SEED_CLAIMS) + len(EVOLUTION)
    src = evolution.graph(audit).source
    assert src.count("linkStyle") == len(EVOLUTION)


async def test_one_anti_pattern_alone_releases_everything(leakcheck):
    a = await evolution.run_all(only=["shared_db"], progress=False)
    assert list(a.findings) == ["shared_db"]
    assert a["shared_db"].counts["other teams broken, shared"] == 3
