"""Execute notebooks and store only the outputs nbval compares.

nbval (run with --nbval-lax) compares the cells marked ``# NBVAL_CHECK_OUTPUT`` against the
outputs stored in the notebook, so those outputs must be committed; every other output
(timings, figures, widgets) would only make diffs noisy and is left out. Run after changing a
chapter or a lab:

    python scripts/store_checked_outputs.py chapters/02_chatty_apis.ipynb [more.ipynb ...]
"""
from __future__ import annotations

import sys
from pathlib import Path

import nbformat
from nbclient import NotebookClient

MARK = "# NBVAL_CHECK_OUTPUT"


def store(path: Path) -> int:
    nb = nbformat.read(path, as_version=4)
    NotebookClient(nb, timeout=600, kernel_name="python3",
                   resources={"metadata": {"path": str(path.parent)}}).execute()
    kept = 0
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        if MARK in cell.source:
            cell.outputs = [o for o in cell.outputs if o.get("output_type") != "display_data"]
            kept += 1
        else:
            cell.outputs = []
            cell.execution_count = None
    nb.metadata.pop("widgets", None)
    nbformat.write(nb, path)
    return kept


def main(argv: list[str]) -> int:
    if not argv:
        print(__doc__)
        return 2
    for arg in argv:
        p = Path(arg)
        if p.suffix != ".ipynb" or not p.is_file():
            print(f"not a notebook: {arg}", file=sys.stderr)
            return 2
        print(f"{arg}: kept the outputs of {store(p)} checked cells")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
