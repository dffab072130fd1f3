"""Show code from the package itself, so the page and the code that runs never drift apart."""
from __future__ import annotations

import inspect
import textwrap
from pathlib import Path

from IPython.display import Markdown

ROOT = Path(__file__).resolve().parent.parent


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
