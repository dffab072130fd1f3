"""Shared fixtures and helpers for the toylib tests.

Resource checks read the kernel's own view of this process: ``/proc/self/fd`` for open file
descriptors, ``/proc/net/tcp`` and ``/proc/net/tcp6`` (matched to this process's socket inodes)
for listening sockets. Timing assertions elsewhere compare ratios with margins, never absolute
times, and keep injected delays at 20 ms or more.
"""
from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import time
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
# One `scripts/build_book.py` per test session (as `make book` runs it), shared by
# tests/test_book.py (which reads its output for warnings), tests/test_build_book.py and
# tests/test_site.py (which opens the pages in a browser). Notebooks come from the jupyter-cache
# when their code has not changed, so on a warm cache the build takes seconds.
#
# The build starts in the background as soon as the session knows it needs one, and the tests
# that read it run last: its notebooks mostly wait on injected delays, so the rest of the suite
# (nbval over the same notebooks included) runs beside it instead of after it. Its verdicts are
# built to survive such a neighbour (`make stress` runs a second copy of the notebooks beside
# every build). The build writes only its own folders (_build/, build/status/), never a file a
# notebook under test writes.
BOOK_ROOT = Path(__file__).resolve().parent.parent
BOOK_HTML = BOOK_ROOT / "_build" / "html"
BOOK_VENDOR = BOOK_ROOT / "build" / "vendor"
BOOK_BUILD_TIMEOUT_S = 1800
BOOK_FIXTURES = {"book_build", "built_site"}
_book: dict = {}        # the background build: process, output files, start time


def _needs_book(item) -> bool:
    """Marked `book` (the site tests ask for the build at run time) or asking for it."""
    return (item.get_closest_marker("book") is not None
            or bool(BOOK_FIXTURES & set(getattr(item, "fixturenames", ()))))


def pytest_collection_modifyitems(session, config, items):
    """Tests that read the built book run last (stable order otherwise)."""
    items.sort(key=_needs_book)


def pytest_collection_finish(session):
    if session.config.option.collectonly or not any(_needs_book(i) for i in session.items):
        return
    if not (BOOK_VENDOR / "mermaid" / "mermaid.esm.min.mjs").exists():
        return                              # the fixture fails with the reason
    out = tempfile.TemporaryFile(mode="w+")
    err = tempfile.TemporaryFile(mode="w+")
    proc = subprocess.Popen([sys.executable, str(BOOK_ROOT / "scripts" / "build_book.py")],
                            cwd=BOOK_ROOT, stdout=out, stderr=err, text=True,
                            stdin=subprocess.DEVNULL, start_new_session=True)
    _book.update(proc=proc, out=out, err=err, started=time.monotonic())


def pytest_sessionfinish(session, exitstatus):
    """An interrupted or failed session leaves no build running."""
    proc = _book.get("proc")
    if proc is not None and proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    for f in ("out", "err"):
        if f in _book:
            _book.pop(f).close()


@pytest.fixture(scope="session")
def book_build() -> subprocess.CompletedProcess:
    """The finished build process (its return code and output), run once per session."""
    if not (BOOK_VENDOR / "mermaid" / "mermaid.esm.min.mjs").exists():
        pytest.fail("build/vendor is missing: run `make vendor` (or `make test`) first")
    args = [sys.executable, str(BOOK_ROOT / "scripts" / "build_book.py")]
    if "proc" not in _book:                 # not started at collection (e.g. a lone fixture)
        return subprocess.run(args, cwd=BOOK_ROOT, capture_output=True, text=True,
                              timeout=BOOK_BUILD_TIMEOUT_S, stdin=subprocess.DEVNULL)
    proc = _book["proc"]
    left = BOOK_BUILD_TIMEOUT_S - (time.monotonic() - _book["started"])
    try:
        code = proc.wait(timeout=max(left, 1))
    except subprocess.TimeoutExpired:
        pytest.fail(f"the book build ran past {BOOK_BUILD_TIMEOUT_S} s")
    texts = []
    for f in (_book["out"], _book["err"]):
        f.seek(0)
        texts.append(f.read())
    return subprocess.CompletedProcess(args, code, *texts)


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
