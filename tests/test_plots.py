"""Plot helpers: opaque white figures, the ideal drawn beside the measurement, bad input refused."""
from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
from matplotlib.colors import to_rgba  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from toylib.present import plots  # noqa: E402
from toylib.core.load import LoadResult  # noqa: E402

WHITE = (1.0, 1.0, 1.0, 1.0)


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


def result(lat, label="x") -> LoadResult:
    lat = np.asarray(lat, dtype=float)
    df = pd.DataFrame({"i": range(len(lat)), "due": 0.0, "start": 0.0, "end": lat,
                       "ok": True, "error": ""})
    df["latency_ms"] = df["end"] - df["due"]
    return LoadResult(df, "closed", 1.0, label)


BEFORE = np.linspace(400, 600, 50)
AFTER = np.linspace(40, 60, 50)


def assert_opaque_white(fig):
    assert isinstance(fig, Figure)
    assert to_rgba(fig.get_facecolor()) == WHITE
    for ax in fig.axes:
        assert to_rgba(ax.get_facecolor()) == WHITE
    assert matplotlib.rcParams["savefig.transparent"] is False
    assert to_rgba(matplotlib.rcParams["savefig.facecolor"]) == WHITE


# -- percentiles -----------------------------------------------------------------------------
def test_percentiles_bars_and_ideal():
    fig = plots.percentiles({"before": result(BEFORE), "after": AFTER},
                            ideal={"before": 500.0}, ps=(50, 99))
    assert_opaque_white(fig)
    ax = fig.axes[0]
    heights = [p.get_height() for p in ax.patches]
    assert len(heights) == 4     # 2 percentiles × 2 designs
    assert heights[:2] == pytest.approx([np.percentile(BEFORE, 50), np.percentile(BEFORE, 99)])
    assert heights[2:] == pytest.approx([np.percentile(AFTER, 50), np.percentile(AFTER, 99)])
    ideal = [c for c in ax.collections if "ideal" in str(c.get_label())]
    assert len(ideal) == 1
    segs = ideal[0].get_segments()
    assert all(s[0][1] == s[1][1] == 500.0 for s in segs)
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert any("ideal 500" in t for t in labels)
    assert [t.get_text() for t in ax.get_xticklabels()] == ["p50", "p99"]


def test_percentiles_without_ideal_draws_no_ideal():
    fig = plots.percentiles({"after": AFTER})
    assert not [c for c in fig.axes[0].collections if "ideal" in str(c.get_label())]


def test_percentiles_on_a_given_axis_and_log():
    fig, ax = plt.subplots()
    out = plots.percentiles({"a": AFTER}, ax=ax, log=True)
    assert out is fig and ax.get_yscale() == "log"


# -- distributions ---------------------------------------------------------------------------
def test_distributions_cdf_and_ideal():
    fig = plots.distributions({"before": BEFORE, "after": result(AFTER)},
                              ideal={"before": 500.0, "after": 50.0})
    assert_opaque_white(fig)
    ax = fig.axes[0]
    assert ax.get_xscale() == "log"
    steps = [l for l in ax.get_lines() if l.get_label() in ("before", "after")]
    assert len(steps) == 2
    for line in steps:
        y = line.get_ydata()
        assert y[-1] == pytest.approx(1.0) and np.all(np.diff(y) >= 0)
    ideals = [l for l in ax.get_lines() if "ideal" in l.get_label()]
    assert len(ideals) == 2 and all(l.get_linestyle() == "--" for l in ideals)
    assert sorted(l.get_xdata()[0] for l in ideals) == [50.0, 500.0]


# -- measured vs ideal -----------------------------------------------------------------------
def test_measured_vs_ideal_lines():
    x = [1, 2, 4, 8]
    fig = plots.measured_vs_ideal(x, {"before": [21, 42, 85, 170]},
                                  {"before": [20, 40, 80, 160]}, xlabel="N", ylabel="ms")
    assert_opaque_white(fig)
    ax = fig.axes[0]
    lines = {l.get_label(): l for l in ax.get_lines()}
    assert set(lines) == {"before (measured)", "before (ideal)"}
    assert lines["before (ideal)"].get_linestyle() == "--"
    assert list(lines["before (ideal)"].get_ydata()) == [20, 40, 80, 160]
    assert list(lines["before (measured)"].get_xdata()) == x
    assert ax.get_xlabel() == "N" and ax.get_ylabel() == "ms"


def test_measured_vs_ideal_without_ideal():
    fig = plots.measured_vs_ideal([1, 2], {"a": [1, 2]}, logy=True)
    assert [l.get_label() for l in fig.axes[0].get_lines()] == ["a (measured)"]
    assert fig.axes[0].get_yscale() == "log"


# -- bad input -------------------------------------------------------------------------------
@pytest.mark.parametrize("call, match", [
    (lambda: plots.percentiles({}), "results"),
    (lambda: plots.percentiles([1, 2, 3]), "results"),
    (lambda: plots.percentiles({"a": [1, 2]}, ps=(50, 120)), "ps"),
    (lambda: plots.percentiles({"a": [1, float("nan")]}), "NaN"),
    (lambda: plots.distributions({}), "results"),
    (lambda: plots.distributions({"a": [1, float("nan")]}), "NaN"),
    (lambda: plots.measured_vs_ideal([1, 2, 3], {"a": [1, 2]}), "measured"),
])
def test_bad_input_is_refused(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_figures_render_to_png():
    import io
    fig = plots.percentiles({"before": BEFORE, "after": AFTER}, ideal={"after": 50})
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    from PIL import Image
    buf.seek(0)
    img = Image.open(buf).convert("RGBA")
    assert img.getpixel((0, 0)) == (255, 255, 255, 255)    # opaque corner, not transparent


# -- captions and alt text --------------------------------------------------------------------
def test_a_figure_carries_its_caption_and_alt_text_in_the_png():
    import io

    from PIL import Image
    fig = plots.measured_vs_ideal([1, 2], {"before": [3, 4]}, {"before": [3, 3]},
                                  xlabel="clients", ylabel="latency (ms)", title="Grows",
                                  caption="Latency grows with clients.",
                                  alt="Two lines: measured latency rises from 3 to 4 ms.")
    info = Image.open(io.BytesIO(plots.png(fig))).text
    assert info["Title"] == "Latency grows with clients."
    assert info["Description"] == "Two lines: measured latency rises from 3 to 4 ms."


def test_a_figure_without_them_is_described_from_its_titles_labels_and_legend():
    fig, ax = plt.subplots()
    ax.plot([1, 2], [3, 4], label="before")
    ax.set(title="Order latency", xlabel="load", ylabel="p50 (ms)")
    ax.legend()
    caption, alt = plots.texts(fig)
    assert caption == "Order latency"
    assert alt == "Figure: chart 'Order latency' of p50 (ms) against load; series: before"


def test_describe_refuses_bad_values():
    fig, _ = plt.subplots()
    with pytest.raises(TypeError, match="caption must be a string"):
        plots.describe(fig, caption=3)
    with pytest.raises(ValueError, match="alt must be at most"):
        plots.describe(fig, alt="x" * 10_000)
    with pytest.raises(TypeError, match="fig must be a matplotlib Figure"):
        plots.describe("not a figure")


def test_tables_are_shown_in_full():
    assert pd.get_option("display.max_colwidth") is None
    assert pd.get_option("display.max_columns") is None
    html = pd.DataFrame({"assumptions": ["x" * 200]})._repr_html_()
    assert "x" * 200 in html and "…" not in html and "..." not in html
