"""The kernel-free explorer: measured rows in, a Vega-Lite chart with bound controls out."""
from __future__ import annotations

import json
import math

import pandas as pd
import pytest

from toylib.present.explorer import SPEC_TYPE, VEGALITE_MIME, Explorer, explorer


def grid() -> pd.DataFrame:
    rows = []
    for n in (1, 2, 4, 8):
        for d in (20, 40):
            for design, k in (("serial", n), ("parallel", 1)):
                rows.append({"design": design, "calls": n, "delay (ms)": d,
                             "p50 (ms)": k * d + 1.5, "p99 (ms)": k * d + 4.0, "ideal": k * d})
    return pd.DataFrame(rows)


def test_every_knob_but_x_gets_a_control_and_a_filter():
    spec = explorer(grid(), knobs=["calls", "delay (ms)"], x="calls",
                    results=["p50 (ms)"]).spec
    names = [p["name"] for p in spec["params"]]
    assert names == ["knob_1"]                       # calls is the x axis
    assert spec["params"][0]["bind"]["input"] == "select"
    assert spec["params"][0]["bind"]["options"] == [20, 40]
    assert spec["transform"] == [{"filter": 'datum["delay (ms)"] == knob_1'}]
    assert spec["layer"][0]["encoding"]["x"]["axis"]["values"] == [1, 2, 4, 8]


def test_several_results_get_a_chooser_and_the_ideal_is_drawn_dashed():
    spec = explorer(grid(), knobs=["calls", "delay (ms)"], results=["p50 (ms)", "p99 (ms)"],
                    ideal={"p50 (ms)": "ideal"}).spec
    result = next(p for p in spec["params"] if p["name"] == "result")
    assert result["bind"]["options"] == ["p50 (ms)", "p99 (ms)"]
    assert {"fold": ["p50 (ms)", "p99 (ms)"], "as": ["result", "value"]} in spec["transform"]
    assert len(spec["layer"]) == 2 and spec["layer"][1]["mark"]["strokeDash"]
    # no x knob: a bar per design, every knob has a control
    assert spec["layer"][0]["mark"]["type"] == "bar"
    assert [p["name"] for p in spec["params"]] == ["knob_0", "knob_1", "result"]


def test_an_evenly_spaced_integer_knob_is_a_slider():
    df = pd.DataFrame({"design": ["a"] * 6, "n": range(1, 7), "t": range(6)})
    spec = explorer(df, knobs=["n"], results=["t"]).spec
    bind = spec["params"][0]["bind"]
    assert bind["input"] == "range" and (bind["min"], bind["max"], bind["step"]) == (1, 6, 1)


def test_the_page_carries_the_data_the_label_and_a_table_without_javascript():
    e = explorer(grid(), knobs=["calls", "delay (ms)"], results=["p50 (ms)"],
                 measured_on="test machine", measured_at="2026-01-01 00:00 UTC")
    page = e._repr_html_()
    assert "measured at build time on the build machine".lower() in page.lower()
    assert "test machine" in page
    spec = json.loads(page.split(f'<script type="{SPEC_TYPE}">')[1].split("</script>")[0])
    assert len(spec["data"]["values"]) == len(grid())
    assert "<table" in page and "The measured values (16 rows)" in page
    bundle = e._repr_mimebundle_()
    assert set(bundle) == {"text/html", VEGALITE_MIME, "text/plain"}


def test_values_are_json_safe():
    df = grid().astype({"p50 (ms)": "float64"})
    df.loc[0, "p50 (ms)"] = math.nan
    values = explorer(df, knobs=["calls"], results=["p50 (ms)"]).spec["data"]["values"]
    assert values[0]["p50 (ms)"] is None
    json.dumps(values, allow_nan=False)


@pytest.mark.parametrize("kwargs, match", [
    (dict(knobs=["nope"], results=["p50 (ms)"]), "knobs must name a column"),
    (dict(knobs=["calls"], results=["design"]), "must name different columns"),
    (dict(knobs=["calls"], results=["p50 (ms)"], x="delay (ms)"), "x must be one of the knobs"),
    (dict(knobs="calls", results=["p50 (ms)"]), "knobs must be a non-empty list"),
    (dict(knobs=["calls"], results=[]), "results must be a non-empty list"),
    (dict(knobs=["calls"], results=["p50 (ms)"], ideal={"p99 (ms)": "ideal"}),
     "ideal keys must be result columns"),
    (dict(knobs=["calls"], results=["p50 (ms)"], width=10), "width"),
    (dict(knobs=["calls"], results=["p50 (ms)"], design="nope"), "design must name a column"),
])
def test_bad_arguments_are_refused_by_name(kwargs, match):
    with pytest.raises(ValueError, match=match):
        explorer(grid(), **kwargs)


def test_non_numeric_results_and_bad_frames_are_refused():
    df = grid().assign(label="x")
    with pytest.raises(ValueError, match="results column 'label' must be numeric"):
        explorer(df, knobs=["calls"], results=["label"])
    with pytest.raises(TypeError, match="df must be a pandas DataFrame"):
        Explorer([1, 2], knobs=["calls"], results=["p50 (ms)"])
    with pytest.raises(ValueError, match="at least one measured row"):
        explorer(grid().iloc[:0], knobs=["calls"], results=["p50 (ms)"])
    big = pd.DataFrame({"design": "a", "k": range(100), "t": 1.0})
    with pytest.raises(ValueError, match="knob 'k' has 100 values"):
        explorer(big, knobs=["k"], results=["t"])
