"""Notebooks are stored clean: no execution metadata, no outputs but the ones nbval compares.

``python scripts/notebooks.py clean`` (``make clean-notebooks``) fixes what this finds.
"""
from __future__ import annotations

import importlib.util
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parent.parent
spec = importlib.util.spec_from_file_location("notebooks_script", ROOT / "scripts" / "notebooks.py")
notebooks = importlib.util.module_from_spec(spec)
spec.loader.exec_module(notebooks)

ALL = notebooks.all_notebooks()


def test_there_are_notebooks():
    names = {p.name for p in ALL}
    assert {"ch01_monolith.ipynb", "ch07_evolution.ipynb", "ch06_breakers_lab.ipynb"} <= names


@pytest.mark.parametrize("path", ALL, ids=[p.name for p in ALL])
def test_stored_clean(path):
    found = notebooks.problems(nbformat.read(path, as_version=4))
    assert not found, f"{path.name} is stored dirty (run `make clean-notebooks`): {found[:5]}"


def test_the_check_bites():
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell("1 + 1"), nbformat.v4.new_code_cell(
        "# NBVAL_CHECK_OUTPUT\nprint(2)")]
    nb.cells[0].outputs = [nbformat.v4.new_output("execute_result", {"text/plain": "2"},
                                                  execution_count=1)]
    nb.cells[0].execution_count = 1
    nb.cells[0].metadata["execution"] = {"iopub.execute_input": "2026-01-01T00:00:00Z"}
    nb.cells[1].outputs = [nbformat.v4.new_output("stream", name="stdout", text="2\n")]
    found = notebooks.problems(nb)
    assert any("execution" in f for f in found) and any("outputs" in f for f in found)
    cleaned = notebooks.clean(nb)
    assert notebooks.problems(cleaned) == []
    assert cleaned.cells[1].outputs and not cleaned.cells[0].outputs   # checked output kept
    assert cleaned.cells[1].execution_count == notebooks.RUN          # so nbval compares it
    assert cleaned.cells[0].execution_count is None


def test_a_checked_cell_without_outputs_is_refused():
    """nbval compares nothing for a checked cell stored without outputs: that check cannot fail."""
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell("# NBVAL_CHECK_OUTPUT\nprint(2)")]
    assert any("without outputs" in f for f in notebooks.problems(nb))
