"""What a page shows besides plots: code from the package itself (so the page and the code
that runs never drift apart), and how busy the reader's machine is before it measures."""
from __future__ import annotations

import inspect
import json
import os
import textwrap
import time
from pathlib import Path

from IPython.display import Markdown

from toylib.core.calibrate import LoopLag, loop_lag, stalls_from_env
from toylib.present import display  # noqa: F401  (pandas shows tables in full on every page)

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


_STALLS = None


def record(lag: LoopLag) -> None:
    """Append the lag to ``$TOYLIB_STATUS_DIR/lag.jsonl`` when the book build asks for it
    (scripts/build_book.py puts the lags on the site's execution-status page)."""
    folder = os.environ.get("TOYLIB_STATUS_DIR", "").strip()
    if not folder:
        return
    os.makedirs(folder, exist_ok=True)
    row = {"time": time.time(), "n": lag.n, "p50_ms": lag.p50_ms, "p99_ms": lag.p99_ms,
           "max_ms": lag.max_ms, "busy": lag.busy, "pid": os.getpid()}
    with open(os.path.join(folder, "lag.jsonl"), "a", encoding="utf-8") as f:
        f.write(json.dumps(row) + "\n")


async def machine_check(seconds: float = 0.25) -> tuple[LoopLag, Markdown]:
    """Measure the event loop's lag now; return it and a note for the page.

    Every chapter runs this before it measures: a busy machine gets a clear warning in the
    page (and the chapter's verdicts widen their intervals) rather than a silently wrong result.
    """
    lag = await loop_lag(seconds)
    record(lag)
    global _STALLS
    if _STALLS is None:      # the stress check's injected event-loop stalls (make stress)
        _STALLS = stalls_from_env()
    warning = lag.warning()
    if warning:
        return lag, Markdown(f"```{{warning}}\n{warning}\n```\n")
    return lag, Markdown(f"*Machine check before measuring: {lag}; quiet enough to time "
                         f"the 20 ms hops this chapter uses.*")
