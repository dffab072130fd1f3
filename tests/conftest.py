"""Shared fixtures and helpers for the toylib tests.

Resource checks read the kernel's own view of this process: ``/proc/self/fd`` for open file
descriptors, ``/proc/net/tcp`` and ``/proc/net/tcp6`` (matched to this process's socket inodes)
for listening sockets. Timing assertions elsewhere compare ratios with margins, never absolute
times, and keep injected delays at 20 ms or more.
"""
from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

import nbformat

import pytest

from toylib.core.clock import FakeClock
from toylib.testing import assert_no_tasks_left, fd_count, settle


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(1000.0)


@pytest.fixture
async def leakcheck():
    """Assert, after the test, that no task is left and the fd count is back where it was.

    The event loop's own descriptors exist before and after, so they cancel out.
    """
    await settle(collect=False)
    before = fd_count()
    yield
    await assert_no_tasks_left()
    await settle(collect=False)
    after = fd_count()
    if after > before:      # only pay for a full collection when something looks open
        await settle()
        after = fd_count()
    assert after <= before, f"file descriptors leaked: {before} before, {after} after"


# -- the built book ---------------------------------------------------------------------------
# One `scripts/build_book.py` per test session (as `make book` runs it), shared
# by tests/test_book.py (which reads its output for warnings) and tests/test_site.py (which
# opens the pages in a browser). Notebooks come from the jupyter-cache when their code has not
# changed, so on a warm cache the build takes seconds.
BOOK_ROOT = Path(__file__).resolve().parent.parent
BOOK_HTML = BOOK_ROOT / "_build" / "html"
BOOK_VENDOR = BOOK_ROOT / "build" / "vendor"
BOOK_BUILD_TIMEOUT_S = 1800


@pytest.fixture(scope="session")
def book_build() -> subprocess.CompletedProcess:
    """The finished build process (its return code and output), run once per session."""
    if not (BOOK_VENDOR / "mermaid" / "mermaid.esm.min.mjs").exists():
        pytest.fail("build/vendor is missing: run `make vendor` (or `make test`) first")
    return subprocess.run(
        [sys.executable, str(BOOK_ROOT / "scripts" / "build_book.py")],
        cwd=BOOK_ROOT, capture_output=True, text=True, timeout=BOOK_BUILD_TIMEOUT_S,
        stdin=subprocess.DEVNULL,
    )


@pytest.fixture(scope="session")
def built_site(book_build) -> Path:
    """``_build/html`` of a build that succeeded (fails the test if the build did not)."""
    out = book_build.stdout + book_build.stderr
    assert book_build.returncode == 0, (
        f"the book did not build (jupyter-book exited {book_build.returncode}):\n{out[-6000:]}")
    assert (BOOK_HTML / "index.html").is_file(), "the build made no _build/html/index.html"
    return BOOK_HTML


# -- lab reference solutions --------------------------------------------------------------------
LABS = Path(__file__).resolve().parent.parent / "labs"


def reference(notebook: str, marker: str) -> dict:
    """Execute the code cells between the solution markers of a lab notebook; return names."""
    nb = nbformat.read(LABS / notebook, as_version=4)
    from toylib.chapters import ch02_chatty as chatty
    namespace: dict = {"asyncio": asyncio, "chatty": chatty}
    inside = False
    for cell in nb.cells:
        if cell.cell_type == "markdown" and "{solution-start}" in cell.source:
            inside = True
        elif cell.cell_type == "markdown" and "{solution-end}" in cell.source:
            inside = False
        elif inside and cell.cell_type == "code":
            exec(compile(cell.source, f"{notebook}:solution", "exec"), namespace)
    assert marker in namespace, f"{notebook} has no reference {marker} in its solution block"
    return namespace


@pytest.fixture(scope="session")
def lab_reference():
    """``reference(notebook, marker)``: the names a lab notebook's solution block defines."""
    return reference
