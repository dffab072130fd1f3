"""Shared fixtures and helpers for the toylib tests.

Resource checks read the kernel's own view of this process: ``/proc/self/fd`` for open file
descriptors, ``/proc/net/tcp`` and ``/proc/net/tcp6`` (matched to this process's socket inodes)
for listening sockets. Timing assertions elsewhere compare ratios with margins, never absolute
times, and keep injected delays at 20 ms or more.
"""
from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import re
import shutil
import signal
import subprocess
import sys
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
# The session's main process starts the build in the background before collection, and the
# tests that read it run last: its notebooks mostly wait on injected delays, so the rest of the
# suite (nbval over the same notebooks included) runs beside it instead of after it. `make test`
# also runs the suite on two pytest-xdist workers (`--dist loadfile`: each notebook's cells
# together on one), which wait for the same background build through its files.
# Its verdicts are built to survive such neighbours (`make stress` runs far more beside every
# build). The build writes only its own folders (_build/, build/status/), never a file that a
# notebook under test writes.
BOOK_ROOT = Path(__file__).resolve().parent.parent
BOOK_HTML = BOOK_ROOT / "_build" / "html"
BOOK_VENDOR = BOOK_ROOT / "build" / "vendor"
BOOK_RUN = BOOK_ROOT / "_build" / "test-session"      # the background build: out, err, rc
BOOK_ENV = "TOYLIB_TEST_BOOK_BUILD"                   # set (to BOOK_RUN) once it is started
BOOK_TESTS = ("test_book.py", "test_build_book.py", "test_site.py")
BOOK_BUILD_TIMEOUT_S = 1800
BOOK_FIXTURES = {"book_build", "built_site"}
_book: dict = {}        # in the main process: the background build's process


def _needs_book(item) -> bool:
    """Marked `book` (the site tests ask for the build at run time) or asking for it."""
    return (item.get_closest_marker("book") is not None
            or bool(BOOK_FIXTURES & set(getattr(item, "fixturenames", ()))))


def _book_in_scope(config) -> bool:
    """Will the session run a test that reads the build? Decided before collection (a parallel
    run's main process collects nothing), from the marker expression and the paths given."""
    if re.search(r"\bnot\s+book\b", config.getoption("markexpr") or "") \
            or config.getoption("keyword") or config.getoption("collectonly"):
        return False
    args = [a.split("::")[0] for a in config.args] or ["."]
    for a in args:
        path = (Path(config.invocation_params.dir) / a).resolve()
        if path.is_dir() and any((path / "tests" / t).exists() or (path / t).exists()
                                 for t in BOOK_TESTS):
            return True
        if path.name in BOOK_TESTS:
            return True
    return False


def pytest_sessionstart(session):
    config = session.config
    if hasattr(config, "workerinput") or not _book_in_scope(config):
        return                                  # a worker, or no book test in this session
    if not (BOOK_VENDOR / "mermaid" / "mermaid.esm.min.mjs").exists():
        return                                  # the fixture fails with the reason
    shutil.rmtree(BOOK_RUN, ignore_errors=True)
    BOOK_RUN.mkdir(parents=True)
    script = BOOK_ROOT / "scripts" / "build_book.py"
    # rc is written last (renamed into place), so a reader never sees half of it
    cmd = (f'"{sys.executable}" "{script}" > "{BOOK_RUN}/out" 2> "{BOOK_RUN}/err"; '
           f'echo $? > "{BOOK_RUN}/rc.part" && mv "{BOOK_RUN}/rc.part" "{BOOK_RUN}/rc"')
    _book["proc"] = subprocess.Popen(["bash", "-c", cmd], cwd=BOOK_ROOT,
                                     stdin=subprocess.DEVNULL, start_new_session=True)
    os.environ[BOOK_ENV] = str(BOOK_RUN)        # the workers, started after this, inherit it


def pytest_collection_modifyitems(session, config, items):
    """Tests that read the built book run last (stable order otherwise). With workers
    (`--dist loadfile`), a file's tests share one: a notebook's cells share its kernel."""
    items.sort(key=_needs_book)


def pytest_sessionfinish(session, exitstatus):
    """An interrupted or failed session leaves no build running."""
    proc = _book.pop("proc", None)
    if proc is not None and proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


@pytest.fixture(scope="session")
def book_build() -> subprocess.CompletedProcess:
    """The finished build process (its return code and output), run once per session."""
    if not (BOOK_VENDOR / "mermaid" / "mermaid.esm.min.mjs").exists():
        pytest.fail("build/vendor is missing: run `make vendor` (or `make test`) first")
    args = [sys.executable, str(BOOK_ROOT / "scripts" / "build_book.py")]
    run = os.environ.get(BOOK_ENV)
    if not run:         # not started in the background: build it now, one worker at a time
        BOOK_RUN.parent.mkdir(parents=True, exist_ok=True)
        with open(BOOK_RUN.parent / "test-session.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)        # a second worker's build is then cached
            return subprocess.run(args, cwd=BOOK_ROOT, capture_output=True, text=True,
                                  timeout=BOOK_BUILD_TIMEOUT_S, stdin=subprocess.DEVNULL)
    rc, started = Path(run) / "rc", time.monotonic()
    while not rc.exists():
        if time.monotonic() - started > BOOK_BUILD_TIMEOUT_S:
            pytest.fail(f"the book build ran past {BOOK_BUILD_TIMEOUT_S} s")
        time.sleep(1)
    return subprocess.CompletedProcess(
        args, int(rc.read_text()), *((Path(run) / f).read_text(errors="replace")
                                     for f in ("out", "err")))


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
