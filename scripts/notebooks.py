"""Keep the notebooks stored clean: only the outputs nbval compares, nothing volatile.

A stored notebook holds no execution timestamps, no execution counts and no outputs, except
the outputs of the cells nbval compares (marked ``# NBVAL_CHECK_OUTPUT``; with ``--nbval-lax``
every other cell must only run). nbval compares a cell only if its stored copy "was run", so a
checked cell keeps its outputs with the constant execution count 1 (never a volatile one), and
a checked cell stored without outputs is refused: it would compare nothing. Cell ids are kept
as they are, so a diff shows what a person changed. Three commands:

    python scripts/notebooks.py clean [paths...]   strip volatile metadata and unchecked outputs
    python scripts/notebooks.py store paths...     execute, keep the checked outputs, clean
    python scripts/notebooks.py check [paths...]   exit 1 (listing why) if any is stored dirty

With no paths, ``clean`` and ``check`` take every notebook in chapters/, labs/ and book/.
``make clean-notebooks`` runs ``clean``; tests/test_notebooks.py runs ``check``.
"""
from __future__ import annotations

import sys
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parent.parent
MARK = "# NBVAL_CHECK_OUTPUT"
RUN = 1     # the execution count a checked cell is stored with: constant, so diffs stay quiet
FOLDERS = ("chapters", "labs", "book")
# Notebook-level metadata that a run or an editor writes and a person never means to change.
VOLATILE_NB = ("widgets", "toc", "varInspector", "execution")
VOLATILE_CELL = ("execution", "collapsed", "scrolled", "ExecuteTime", "jupyter")


def all_notebooks() -> list[Path]:
    found = []
    for folder in FOLDERS:
        found += sorted(p for p in (ROOT / folder).glob("*.ipynb")
                        if ".ipynb_checkpoints" not in p.parts)
    return found


def rel(p: Path) -> str:
    p = p.resolve()
    return str(p.relative_to(ROOT)) if p.is_relative_to(ROOT) else str(p)


def checked(cell) -> bool:
    return cell.cell_type == "code" and MARK in cell.source


def problems(nb) -> list[str]:
    """Why a notebook is not stored clean (empty when it is)."""
    out = []
    for key in VOLATILE_NB:
        if key in nb.metadata:
            out.append(f"notebook metadata {key!r}")
    for i, cell in enumerate(nb.cells):
        where = f"cell {i} ({cell.get('id', '?')})"
        if "id" not in cell:
            out.append(f"{where}: no id")
        for key in VOLATILE_CELL:
            if key in cell.metadata:
                out.append(f"{where}: metadata {key!r}")
        if cell.cell_type != "code":
            continue
        if not checked(cell):
            if cell.outputs:
                out.append(f"{where}: stored outputs of a cell nbval does not compare")
            if cell.execution_count is not None:
                out.append(f"{where}: execution count")
        else:
            if not cell.outputs:
                out.append(f"{where}: a checked cell stored without outputs (nbval would "
                           f"compare nothing): run `scripts/notebooks.py store`")
            for o in cell.outputs:
                if o.get("output_type") == "display_data":
                    out.append(f"{where}: a display output in a checked cell")
                if "execution_count" in o and o["execution_count"] not in (None, RUN):
                    out.append(f"{where}: execution count in an output")
            if cell.outputs and cell.execution_count != RUN:
                out.append(f"{where}: a checked cell's execution count must be {RUN} (nbval "
                           f"only compares cells stored as run)")
    return out


def clean(nb):
    for key in VOLATILE_NB:
        nb.metadata.pop(key, None)
    for cell in nb.cells:
        for key in VOLATILE_CELL:
            cell.metadata.pop(key, None)
        if cell.cell_type != "code":
            continue
        cell.execution_count = None
        if checked(cell):
            kept = []
            for o in cell.outputs:
                if o.get("output_type") == "display_data":
                    continue
                if "execution_count" in o:
                    o["execution_count"] = RUN
                kept.append(o)
            cell.outputs = kept
            cell.execution_count = RUN if kept else None
        else:
            cell.outputs = []
    return nb


def store(path: Path) -> None:
    from nbclient import NotebookClient
    nb = nbformat.read(path, as_version=4)
    NotebookClient(nb, timeout=900, kernel_name="python3",
                   resources={"metadata": {"path": str(path.parent)}}).execute()
    nbformat.write(clean(nb), path)


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in ("clean", "store", "check"):
        print(__doc__)
        return 2
    cmd, args = argv[0], argv[1:]
    paths = [Path(a) for a in args] or (all_notebooks() if cmd != "store" else [])
    if not paths:
        print("store needs the notebooks to execute", file=sys.stderr)
        return 2
    for p in paths:
        if p.suffix != ".ipynb" or not p.is_file():
            print(f"not a notebook: {p}", file=sys.stderr)
            return 2
    dirty = 0
    for p in paths:
        if cmd == "store":
            store(p)
            print(f"{rel(p)}: executed; kept the outputs of the checked cells")
        elif cmd == "clean":
            nb = nbformat.read(p, as_version=4)
            before = nbformat.writes(nb)
            after = nbformat.writes(clean(nb))
            if after != before:
                p.write_text(after, encoding="utf-8")
                print(f"{rel(p)}: cleaned")
        else:
            found = problems(nbformat.read(p, as_version=4))
            if found:
                dirty += 1
                print(f"{rel(p)}: stored dirty: " + "; ".join(found[:8])
                      + (f" (and {len(found) - 8} more)" if len(found) > 8 else ""))
    if cmd == "check" and dirty:
        print(f"{dirty} notebook(s) stored dirty: run `make clean-notebooks`", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
