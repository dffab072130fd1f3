"""The control panel: validated construction, rerun with knob values, errors shown, one run."""
from __future__ import annotations

import asyncio

import ipywidgets as W
import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402

from toylib.chapters import ch02_chatty as chatty
from toylib.present import widgets  # noqa: E402
from toylib.present.widgets import Panel, panel  # noqa: E402


class RecordingOutput:
    """Stands in for ``W.Output`` (which needs a kernel): records what the panel puts in it,
    through ``outputs = ()`` (clearing) and ``append_display_data`` (adding), the way the
    panel writes to it so that JupyterLab shows results displayed after an await."""

    def __init__(self):
        self._items: list = []
        self.cleared = 0
        self.inside = False

    @property
    def outputs(self):
        return self._items

    @outputs.setter
    def outputs(self, value):
        self.cleared += 1
        self._items = list(value)

    def append_display_data(self, obj):
        self._items.append(obj)

    def clear_output(self, wait=False):
        self.outputs = ()

    def __enter__(self):
        self.inside = True
        return self

    def __exit__(self, *exc):
        self.inside = False
        return False


@pytest.fixture
def shown(monkeypatch):
    """Route the panel's ``display`` calls to the RecordingOutput that is entered, if any."""
    outputs: list[RecordingOutput] = []
    stray: list = []

    def fake_display(obj):
        for o in outputs:
            if o.inside:
                o.outputs.append(obj)
                return
        stray.append(obj)

    monkeypatch.setattr(widgets, "display", fake_display)

    def attach(p: Panel) -> RecordingOutput:
        rec = RecordingOutput()
        outputs.append(rec)
        p.out = rec
        return rec

    attach.stray = stray
    return attach


# -- construction ----------------------------------------------------------------------------
async def run_ok(n, p):
    return None


@pytest.mark.parametrize("make, exc, match", [
    (lambda: panel(lambda n: None, n=W.IntSlider()), TypeError, "run"),
    (lambda: panel(run_ok), ValueError, "controls"),
    (lambda: panel(run_ok, n=5), TypeError, "'n'"),
    (lambda: panel(run_ok, n=W.IntSlider(), q=W.FloatSlider()), ValueError, "q"),
    (lambda: panel(run_ok, n=W.Button()), TypeError, "'n'"),
])
def test_panel_validates_its_arguments(make, exc, match):
    with pytest.raises(exc, match=match):
        make()


def test_panel_accepts_var_keyword_runs_and_builds_its_widget():
    async def run(**knobs):
        return None

    p = panel(run, title="Chatty", button="Go", n=W.IntSlider(value=3), p=W.FloatSlider())
    assert p.values() == {"n": 3, "p": 0.0}
    assert p.button.description == "Go"
    assert isinstance(p.widget, W.VBox)
    assert "Chatty" in p.widget.children[0].value


# -- rerun -----------------------------------------------------------------------------------
async def test_rerun_calls_run_with_the_knob_values_and_shows_its_figure(shown):
    calls = []

    async def run(n, p):
        calls.append({"n": n, "p": p})
        await asyncio.sleep(0.01)
        fig, ax = plt.subplots()
        ax.plot([0, n], [0, p])
        return fig, "a table"

    pn = panel(run, n=W.IntSlider(value=4, min=0, max=10), p=W.FloatSlider(value=0.25))
    out = shown(pn)
    await pn.rerun()
    assert calls == [{"n": 4, "p": 0.25}]
    assert len(out.outputs) == 2
    fig = out.outputs[0]
    assert isinstance(fig, plt.Figure) and out.outputs[1] == "a table"
    assert not plt.fignum_exists(fig.number), "the figure should be closed once displayed"
    assert pn.status.value == "" and not pn.button.disabled

    pn.controls["n"].value = 7
    await pn.rerun()
    assert calls[-1] == {"n": 7, "p": 0.25}
    assert len(out.outputs) == 2, "the output area is redrawn, not appended to"
    assert out.cleared == 2
    assert not shown.stray, "something was displayed outside the output area"


async def test_a_bad_knob_value_is_reported_in_the_status_not_raised(shown):
    async def run(n_posts, p):
        chatty.Knobs(n_posts=n_posts, p=p)   # validates and names the bad parameter
        return None

    pn = panel(run, n_posts=W.IntText(value=5), p=W.FloatText(value=1.5))
    out = shown(pn)
    await pn.rerun()                      # must not raise
    assert "p must be" in pn.status.value and "1.5" in pn.status.value
    assert out.outputs == []
    assert not pn.button.disabled

    pn.controls["p"].value = 0.1
    pn.controls["n_posts"].value = -2
    await pn.rerun()
    assert "n_posts" in pn.status.value

    pn.controls["n_posts"].value = 3
    await pn.rerun()
    assert pn.status.value == ""


async def test_error_text_is_escaped_not_taken_for_html(shown):
    from toylib import Latency

    async def run(jitter_ms):
        Latency(10, jitter_ms)           # "jitter_ms must be <= ms (10) ..."
        return None

    pn = panel(run, jitter_ms=W.FloatText(value=20.0))
    shown(pn)
    await pn.rerun()
    assert "jitter_ms must be &lt;= ms" in pn.status.value

    async def run2(n):
        raise LookupError(f"no handler for {run2}")   # "<function ...>" would vanish as a tag

    pn = panel(run2, n=W.IntSlider())
    shown(pn)
    await pn.rerun()
    assert "&lt;function" in pn.status.value and "<function" not in pn.status.value


async def test_other_errors_are_reported_with_their_type(shown):
    async def run(n):
        raise RuntimeError("the topology would not start")

    pn = panel(run, n=W.IntSlider())
    shown(pn)
    await pn.rerun()
    assert "RuntimeError" in pn.status.value and "would not start" in pn.status.value
    assert not pn.button.disabled


async def test_a_second_click_while_running_is_ignored(shown):
    started, release = asyncio.Event(), asyncio.Event()
    calls = 0

    async def run(n):
        nonlocal calls
        calls += 1
        started.set()
        await release.wait()
        return None

    pn = panel(run, n=W.IntSlider())
    shown(pn)
    pn.button.click()                    # the real button path: on_click -> _clicked
    first = pn.task
    await started.wait()
    assert pn.button.disabled and "running" in pn.status.value
    pn.button.click()
    pn._clicked()
    assert pn.task is first
    release.set()
    await first
    assert calls == 1 and not pn.button.disabled
    pn.button.click()                    # once finished, a click runs again
    await pn.task
    assert calls == 2


def test_the_panel_says_run_needs_a_live_kernel_until_it_has_run():
    import asyncio as _asyncio

    async def run(n):
        return None

    pn = panel(run, n=W.IntSlider(value=1))
    assert "live kernel" in pn.note.value and pn.note.layout.display != "none"
    assert pn.note in pn.widget.children
    _asyncio.run(pn.rerun())
    assert pn.note.layout.display == "none"
