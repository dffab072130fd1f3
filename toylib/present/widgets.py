"""A control panel: knobs, a Run button, and an output area that the experiment redraws.

``panel(run, n=IntSlider(...), p=FloatSlider(...))`` calls ``await run(n=..., p=...)`` on the
kernel's own event loop when the button is pressed, and shows what it returns (a figure, a
DataFrame, a Mermaid diagram, several of them in a tuple). A bad value is reported in the output
area with the parameter's name and range, not as a crash. Pressing Run while a run is going is
ignored (the button is disabled), so one experiment never competes with another for the CPU.

A panel runs on a live kernel only. The published site draws it from its saved state, where
Run cannot do anything, so the panel says so until its first run: Run needs JupyterLab or
Binder, and on the site the chapter's explorer (:mod:`toylib.present.explorer`) shows results
measured when the site was built.
"""
from __future__ import annotations

import asyncio
import html
import inspect

import ipywidgets as W
import matplotlib.pyplot as plt
from IPython.display import display


LIVE_ONLY = ("<span style='font-size:0.85em;color:#4b5563'>Run measures again on the "
             "machine running this notebook, so it needs a live kernel (JupyterLab, Binder). "
             "On the published site, the explorer shows results measured when the site was "
             "built.</span>")


class Panel:
    def __init__(self, run, controls: dict, title: str = "", button: str = "Run"):
        if not inspect.iscoroutinefunction(run):
            raise TypeError(f"run must be an async function; got {run!r}")
        if not controls:
            raise ValueError("controls must name at least one widget")
        for name, w in controls.items():
            if not isinstance(w, W.ValueWidget):
                raise TypeError(f"control {name!r} must be an ipywidgets value widget; got {w!r}")
        params = inspect.signature(run).parameters
        missing = [n for n in controls if n not in params and not any(
            p.kind == p.VAR_KEYWORD for p in params.values())]
        if missing:
            raise ValueError(f"run does not take parameter(s) {', '.join(missing)}")
        self.run, self.controls = run, controls
        self.button = W.Button(description=button, button_style="primary", icon="play")
        self.status = W.HTML("")
        self.note = W.HTML(LIVE_ONLY)
        self.out = W.Output()
        self.task: asyncio.Task | None = None
        self.button.on_click(self._clicked)
        header = [W.HTML(f"<b>{title}</b>")] if title else []
        self.widget = W.VBox(header + [W.HBox(list(controls.values()),
                                              layout=W.Layout(flex_flow="row wrap")),
                                       W.HBox([self.button, self.status]), self.note,
                                       self.out])

    def values(self) -> dict:
        return {k: w.value for k, w in self.controls.items()}

    def _clicked(self, _=None):
        if self.task is not None and not self.task.done():
            return
        self.task = asyncio.ensure_future(self.rerun())

    async def rerun(self):
        """Run the experiment with the current knob values and redraw the output area."""
        self.button.disabled = True
        self.note.layout.display = "none"     # a live kernel: the note has done its job
        self.status.value = "<i>running…</i>"
        try:
            result = await self.run(**self.values())
            # Written into the Output widget directly: `with self.out: display(...)` after an
            # await is dropped by JupyterLab (ipywidgets issues 2567, 3993), because the
            # output is routed by the message that started the cell, long finished by now.
            self.out.outputs = ()
            for item in result if isinstance(result, tuple) else (result,):
                if item is not None:
                    self.out.append_display_data(item)
                if isinstance(item, plt.Figure):
                    plt.close(item)
            self.status.value = ""
        except (ValueError, TypeError) as e:   # bad knob values: say which and why
            self.status.value = f"<span style='color:#b91c1c'>⚠ {html.escape(str(e))}</span>"
        except Exception as e:
            self.status.value = (f"<span style='color:#b91c1c'>⚠ {type(e).__name__}: "
                                 f"{html.escape(str(e))}</span>")
        finally:
            self.button.disabled = False

    def _ipython_display_(self):
        display(self.widget)


def panel(run, *, title: str = "", button: str = "Run", **controls) -> Panel:
    """Build a :class:`Panel`; display it as the last expression of a cell."""
    return Panel(run, controls, title, button)
