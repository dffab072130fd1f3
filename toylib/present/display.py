"""Tables in full: no cell cut to "…", no column hidden.

pandas shortens every cell to 50 characters and hides middle columns by default, and the
columns it cut on the course's pages were the ones a reader needs most: the measured value,
the assumptions, what a grader's case did. Importing this module (``toylib.present.plots`` and
``toylib.present.show`` do) shows tables in full; a frame longer than ``MAX_ROWS`` rows still
shows its head and tail. On the book site, wide tables scroll sideways with a visible hint.
"""
from __future__ import annotations

import pandas as pd

MAX_ROWS = 500


def full_tables() -> None:
    """Set pandas to show every column and every cell in full (up to MAX_ROWS rows)."""
    pd.set_option("display.max_colwidth", None)
    pd.set_option("display.max_columns", None)
    pd.set_option("display.width", 250)
    pd.set_option("display.max_rows", MAX_ROWS)


full_tables()
