"""What a page shows besides plots: code from the package itself (so the page and the code
that runs never drift apart), and how busy the reader's machine is before it measures."""
from __future__ import annotations

import inspect
import textwrap
from pathlib import Path

from IPython.display import Markdown

from toylib.core.calibrate import LoopLag, loop_lag

ROOT = Path(__file__).resolve().parents[2]     # the repository (or site-packages) root


def source(*objs) -> Markdown:
    """The source of functions/classes from toylib, with the file each comes from."""
    if not objs:
        raise ValueError("source needs at least one function or class")
    parts = []
    for obj in objs:
        try:
            code = textwrap.dedent(inspect.getsource(obj))
            where = Path(inspect.getsourcefile(obj)).resolve().relative_to(ROOT)
        except (TypeError, OSError, ValueError) as e:
            raise TypeError(f"objs must be toylib functions or classes; {obj!r}: {e}") from None
        parts.append(f"`{where.as_posix()}`, `{obj.__qualname__}`:\n\n```python\n{code}```\n")
    return Markdown("\n".join(parts))


async def machine_check(seconds: float = 0.25) -> tuple[LoopLag, Markdown]:
    """Measure the event loop's lag now; return it and a note for the page.

    Every chapter runs this before it measures: a busy machine gets a clear warning in the
    page (and the chapter's verdicts widen their intervals) rather than a silently wrong result.
    """
    lag = await loop_lag(seconds)
    warning = lag.warning()
    if warning:
        return lag, Markdown(f"```{{warning}}\n{warning}\n```\n")
    return lag, Markdown(f"*Machine check before measuring: {lag}; quiet enough to time "
                         f"the 20 ms hops this chapter uses.*")
