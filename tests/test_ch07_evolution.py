"""Chapter 7 gathers the chapters' own findings; it never judges a claim a second time.

The closing table, the graph, the per-chapter tables and the JSON are all renderings of the
same Finding objects, so the same run cannot show two verdicts for one claim (checked on a real
small audit of one chapter, and on synthetic findings covering every verdict).
"""
from __future__ import annotations

import json

import pytest

from toylib import claims
from toylib.chapters import ch07_evolution as evolution
from toylib.claims import Claim, Estimate


def test_every_transition_names_a_declared_claim_of_its_chapter():
    for t in evolution.EVOLUTION:
        ids = [c.id for c in evolution.MODULES[t.chapter].CLAIMS]
        assert t.claim in ids, f"{t.chapter} declares no claim {t.claim}: {ids}"
    assert set(evolution.BY_CHAPTER) == set(evolution.CHAPTERS) == set(evolution.MODULES)


def test_claim_ids_are_unique_across_the_course():
    ids = [c.id for m in evolution.MODULES.values() for c in m.CLAIMS]
    assert claims.claim_ids([c for m in evolution.MODULES.values() for c in m.CLAIMS]) == ids
    for name, m in evolution.MODULES.items():
        assert all(c.chapter == name for c in m.CLAIMS)


def test_source_table_and_graph_come_from_one_structure():
    table = evolution.source_table()
    graph = str(evolution.graph())
    for t in evolution.EVOLUTION:
        assert table.loc[t.anti[1], "improvement"] == t.improvement
        assert t.anti[0] in graph and t.practice[0] in graph and t.improvement in graph


def test_declared_lists_every_claim_with_its_rule():
    df = evolution.declared()
    assert len(df) == sum(len(m.CLAIMS) for m in evolution.MODULES.values())
    assert df["holds when"].str.startswith("interval").all()


def synthetic_audit() -> evolution.Audit:
    """One finding per claim, covering every verdict, without running anything."""
    findings = {}
    kinds = [Estimate.exact(100.0), Estimate.exact(0.0), Estimate.trials([0.5, 1.5, 40.0])]
    for name, m in evolution.MODULES.items():
        findings[name] = [c.judge(kinds[i % 3]) for i, c in enumerate(m.CLAIMS)]
    return evolution.Audit(findings, {name: 1.0 for name in findings})


def renderings_agree(audit: evolution.Audit, tmp_path) -> None:
    verdicts = audit.verdicts()
    # the chapters' own rendering (claims.table), chapter 7's tables, the JSON, the closing table
    for name in audit.findings:
        assert claims.table(audit.findings[name]).verdicts() == audit.table(name).verdicts()
        for claim_id, verdict in audit.table(name).verdicts().items():
            assert verdicts[claim_id] == verdict
            assert verdict in audit.table(name).markdown()
    records = json.loads(audit.write(tmp_path / "audit.json").read_text())
    assert {r["id"]: r["verdict"] for r in records} == verdicts
    impact = audit.impact().data
    for t in evolution.EVOLUTION:
        if t.chapter in audit.findings:
            assert f"| {t.improvement} |" in impact
            assert audit.headline(t.chapter).verdict in impact.split(t.improvement, 1)[1].split("\n")[0]
    graph = str(evolution.graph(audit))
    for t in evolution.EVOLUTION:
        if t.chapter in audit.findings:
            assert audit.headline(t.chapter).verdict in graph


def test_renderings_agree_on_synthetic_findings(tmp_path):
    audit = synthetic_audit()
    assert {f.verdict for f in audit.all()} >= {claims.HOLDS, claims.FAILS}
    renderings_agree(audit, tmp_path)
    summary = audit.summary()
    assert summary.loc["all chapters"].sum() == len(audit.all())
    assert "Holds" in audit.grouped().data or "Does not hold" in audit.grouped().data


def test_the_audit_goes_where_the_build_asks_or_beside_the_chapters(tmp_path, monkeypatch):
    # The book build names a folder of its own, so a test run of chapter 7 at the same time
    # never writes the file the build publishes.
    audit = synthetic_audit()
    monkeypatch.setenv("TOYLIB_STATUS_DIR", str(tmp_path / "status"))
    assert audit.write() == tmp_path / "status" / "verdicts.json"
    monkeypatch.delenv("TOYLIB_STATUS_DIR")
    monkeypatch.chdir(tmp_path / "status")
    written = audit.write()
    assert written.resolve() == (tmp_path / "build" / "audit" / "verdicts.json").resolve()
    assert json.loads(written.read_text()) == audit.records()


async def test_one_small_real_audit_renders_the_same_verdict_everywhere(tmp_path):
    audit = await evolution.run_all(only=["ch06_breakers"], progress=False)
    assert [f.claim.id for f in audit.findings["ch06_breakers"]] == \
        [c.id for c in evolution.MODULES["ch06_breakers"].CLAIMS]
    renderings_agree(audit, tmp_path)
    assert audit.lag is not None and audit.seconds["ch06_breakers"] > 0


def test_bad_arguments_are_refused():
    audit = synthetic_audit()
    with pytest.raises(ValueError, match="chapter"):
        audit.headline("ch09_nothing")
    with pytest.raises(KeyError, match="claim_id"):
        audit["nope.nope"]
    with pytest.raises(ValueError, match="direction"):
        evolution.graph(direction="XX")
    with pytest.raises(TypeError, match="audit"):
        evolution.graph("not an audit")
    with pytest.raises(ValueError, match="from_dir"):
        evolution.CHAPTERS["ch02_chatty"].link("/abs")
    with pytest.raises(TypeError, match="Finding"):
        evolution.Audit({"ch02_chatty": ["not a finding"]})


async def test_run_all_refuses_an_unknown_chapter():
    with pytest.raises(ValueError, match="only"):
        await evolution.run_all(only=["ch99"])


def test_figure_has_a_caption_and_alt_text():
    import matplotlib.pyplot as plt

    from toylib.present import plots
    fig = synthetic_audit().figure()
    caption, alt = plots.texts(fig)
    assert "threshold" in caption and "verdict" in caption.lower() or caption
    assert alt
    plt.close(fig)
