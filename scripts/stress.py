"""The stress check (`make stress`): do verdicts and lab grades survive a busy machine?

It builds the book from scratch (every notebook executed, in a scratch copy of the repository)
once on a quiet machine, then ``--runs`` more times while a realistic, bursty load runs beside
it, and compares each run's verdicts (``audit.json``, written by chapter 7) with the quiet
build's. Under the same load it grades every lab's two correct solutions ``--lab-runs`` times.

The load is what failed builds before, each kind in bursts with pauses between (as a laptop
doing other things is; a pause lasts 4-14 s plus the burst's own length, so a slower machine
gets the same share of busy time rather than a saturating load): programs starting up, a
headless browser rendering pages, a second run of the course's own notebooks, a package
install; plus the event-loop stalls ``TOYLIB_STALLS`` injects into every kernel (see
toylib.core.calibrate). ``--saturate`` drops the pauses: every kind back to back, both cores
oversubscribed several times over for the whole build.

A verdict that differs from the quiet build's is counted in one of two ways: *flipped* (one
decided verdict became another: holds, holds under stated assumptions, does not hold here) is
a failure; *withheld* (a decided verdict became "not shown by this run", the chapter saying the
machine was too busy to time it) is what a too-busy machine should get, and is reported.

    python scripts/stress.py --runs 5 --lab-runs 10       # make stress
    python scripts/stress.py --runs 2 --lab-runs 0 --saturate
    python scripts/stress.py --runs 1 --lab-runs 2 --no-quiet   # a quick look

The summary (runs, failures, verdicts flipped and withheld, lab grades) is printed and written
to build/stress/report.json after every run. It is not part of `make test`: it takes an hour.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from toylib.claims import NOT_SHOWN

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable
BIN = Path(PY).parent
REPORT = ROOT / "build" / "stress" / "report.json"
QUIET_SITE = ROOT / "build" / "stress" / "quiet-site"
STALLS = "p=0.05,ms=40,seed=1"
COPY_IGNORE = shutil.ignore_patterns(".venv", "_build", ".git", "node_modules", "test-artifacts",
                                     ".hypothesis", "__pycache__", ".jupyter_cache")


def scratch_copy() -> Path:
    """A copy of the repository to build in, sharing build/vendor (the web assets)."""
    dst = Path(tempfile.mkdtemp(prefix="stress-book-"))
    shutil.copytree(ROOT, dst / "repo", ignore=COPY_IGNORE)
    return dst / "repo"


def build(where: Path, *, stalls: bool) -> tuple[bool, float, dict, str]:
    env = dict(os.environ)
    if stalls:
        env["TOYLIB_STALLS"] = STALLS
    t0 = time.monotonic()
    proc = subprocess.run([PY, str(where / "scripts" / "build_book.py")], cwd=where, env=env,
                          capture_output=True, text=True, stdin=subprocess.DEVNULL)
    took = time.monotonic() - t0
    audit = where / "_build" / "html" / "audit.json"
    verdicts = {r["id"]: r["verdict"] for r in json.loads(audit.read_text())} \
        if proc.returncode == 0 and audit.is_file() else {}
    return proc.returncode == 0, took, verdicts, (proc.stdout + proc.stderr)[-3000:]


# Each kind of load: one burst of it (a shell command). Between bursts a loop pauses PAUSE_S
# seconds (random, from $RANDOM) plus the burst's own length, unless --saturate.
PAUSE_S = (4, 14)


def load_kinds(site: Path | None) -> list[str]:
    kinds = [
        # programs starting up: interpreter + heavy imports, a few in a row
        f"for i in 1 2 3; do {PY} -c 'import pandas, matplotlib.pyplot, aiohttp'; done",
        # a package install (into a throwaway venv, from the local tree)
        f"d=$(mktemp -d); {PY} -m venv $d/v && $d/v/bin/pip install -q --no-deps "
        f"--no-build-isolation -e {ROOT} >/dev/null 2>&1; rm -rf $d",
        # a second run of one of the course's own notebooks
        f"{PY} -m pytest -q -p no:cacheprovider {ROOT}/chapters/ch02_chatty.ipynb >/dev/null 2>&1",
    ]
    chromium = shutil.which("chromium")
    if chromium and site is not None and (site / "index.html").is_file():
        pages = " ".join(str(p) for p in sorted(site.rglob("*.html"))[:10])
        kinds.append(f"for p in {pages}; do u=$(mktemp -d); timeout 20 {chromium} --headless "
                     f"--no-sandbox --disable-gpu --disable-background-networking "
                     f"--user-data-dir=$u --dump-dom file://$p >/dev/null 2>&1; rm -rf $u; "
                     f"done")
    return kinds


@contextlib.contextmanager
def bursty_load(site: Path | None, *, saturate: bool = False):
    """Start the load beside a build; stop all of it (every process group) when the block
    ends, however it ends."""
    low, high = PAUSE_S
    # the pause also lasts as long as the burst did, so a slower machine (where every burst
    # takes longer) gets the same share of busy time, not a saturating load
    pause = "" if saturate else \
        f"; sleep $(( RANDOM % {high - low + 1} + {low} + SECONDS - t0 ))"
    procs = [subprocess.Popen(["bash", "-c", f"while :; do t0=$SECONDS; {kind}{pause}; done"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              start_new_session=True)
             for kind in load_kinds(site)]
    try:
        yield len(procs)
    finally:
        for p in procs:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, 15)
        for p in procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.wait(timeout=10)


# Each lab's two correct solutions (the lab's reference and an independent one), graded the way
# a student's kernel grades them: `check(...)` in a fresh process.
LAB_SOLUTIONS = """
import asyncio, json
from toylib.labs import (ch01_monolith, ch02_chatty, ch03_shared_db, ch04_sync,
                         ch05_timeouts, ch06_breakers)
from toylib.labs.solutions import (ch01_monolith as s1, ch02_chatty as s2, ch03_shared_db as s3,
                                   ch04_sync as s4, ch05_timeouts as s5, ch06_breakers as s6)
GRADES = [
    ("lab1 reference", lambda: ch01_monolith.check(**s1.REFERENCE)),
    ("lab1 alternative", lambda: ch01_monolith.check(**s1.ALTERNATIVE)),
    ("lab2 reference", lambda: ch02_chatty.check(**s2.REFERENCE)),
    ("lab2 alternative", lambda: ch02_chatty.check(**s2.ALTERNATIVE)),
    ("lab3 reference", lambda: ch03_shared_db.check(s3.REFERENCE)),
    ("lab3 alternative", lambda: ch03_shared_db.check(s3.ALTERNATIVE)),
    ("lab4 reference", lambda: ch04_sync.check(**s4.REFERENCE)),
    ("lab4 alternative", lambda: ch04_sync.check(**s4.ALTERNATIVE)),
    ("lab5 reference", lambda: ch05_timeouts.check(**s5.REFERENCE)),
    ("lab5 alternative", lambda: ch05_timeouts.check(**s5.ALTERNATIVE)),
    ("lab6 reference", lambda: ch06_breakers.check(s6.RefBreaker)),
    ("lab6 alternative", lambda: ch06_breakers.check(s6.AlternativeBreaker)),
]
async def main():
    out = {}
    for name, grade in GRADES:
        report = await grade()
        out[name] = ("done" if report.ok else
                     "not graded: " + ", ".join(o.case.name for o in report.busy)
                     if not report.failures
                     else "FAILED: " + report.summary())     # kept whole: the case to fix
    print(json.dumps(out))
asyncio.run(main())
"""


def lab_references(runs: int) -> dict:
    """Every lab's two correct solutions, graded ``runs`` times under load, a process each."""
    counts: dict[str, dict[str, int]] = {}
    failed_reports: list[dict] = []
    busy_cases: dict[str, list[str]] = {}
    for i in range(runs):
        proc = subprocess.run([PY, "-c", LAB_SOLUTIONS], cwd=ROOT, capture_output=True,
                              text=True, env=dict(os.environ, TOYLIB_STALLS=STALLS))
        try:
            grades = json.loads(proc.stdout.strip().splitlines()[-1])
        except (IndexError, ValueError):
            grades = {"grading process": f"FAILED: exit {proc.returncode} {proc.stderr[-500:]}"}
        for name, grade in grades.items():
            key = ("failed" if grade.startswith("FAILED") else
                   "not graded" if grade.startswith("not graded") else grade)
            counts.setdefault(name, {}).setdefault(key, 0)
            counts[name][key] += 1
            if key == "not graded":       # which cases the machine was too busy to time
                busy_cases.setdefault(name, []).append(grade.split(": ", 1)[1])
        odd = ", ".join(f"{k}: {v.splitlines()[0]}" for k, v in grades.items() if v != "done")
        failures = {k: v for k, v in grades.items() if v.startswith("FAILED")}
        if failures:
            failed_reports.append({"run": i + 1, **failures})
        print(f"lab run {i + 1}/{runs} under load: {odd or 'all done'}", flush=True)
    return {"runs": runs, "grades": counts, "failed_reports": failed_reports,
            "not_graded_cases": busy_cases,
            "failed": sum(c.get("failed", 0) for c in counts.values()),
            "not_graded": sum(c.get("not graded", 0) for c in counts.values())}


def compare(quiet: dict, verdicts: dict) -> tuple[list[str], list[str]]:
    """(flipped, withheld): claim ids whose verdict differs from the quiet build's."""
    flipped, withheld = [], []
    for k in sorted(quiet):
        if k not in verdicts or verdicts[k] == quiet[k]:
            continue
        (withheld if verdicts[k] == NOT_SHOWN else flipped).append(k)
    return flipped, withheld


def _stop(signum, frame):
    raise SystemExit(f"stopped by signal {signum}")     # so every `finally` stops its load


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=5, help="builds under load (default 5)")
    ap.add_argument("--lab-runs", type=int, default=10, help="lab reference runs under load")
    ap.add_argument("--no-quiet", action="store_true",
                    help="skip the quiet build; compare with the main tree's _build/html/audit.json")
    ap.add_argument("--saturate", action="store_true",
                    help="the load without pauses: every kind back to back")
    args = ap.parse_args(argv)
    if not 0 <= args.runs <= 50 or not 0 <= args.lab_runs <= 100:
        ap.error("--runs must be 0..50 and --lab-runs 0..100")
    signal.signal(signal.SIGTERM, _stop)
    report: dict = {"runs": [], "stalls": STALLS,
                    "load": "saturating" if args.saturate else
                    f"bursty, pauses {PAUSE_S} s + the burst's length"}
    if args.no_quiet:
        base_file = ROOT / "_build" / "html" / "audit.json"
        quiet = {r["id"]: r["verdict"] for r in json.loads(base_file.read_text())} \
            if base_file.is_file() else {}
    else:
        where = scratch_copy()
        try:
            ok, took, quiet, tail = build(where, stalls=False)
            # the quiet build's pages are what the headless browser renders beside later builds
            if (where / "_build" / "html").is_dir():
                shutil.rmtree(QUIET_SITE, ignore_errors=True)
                shutil.copytree(where / "_build" / "html", QUIET_SITE)
        finally:
            shutil.rmtree(where.parent, ignore_errors=True)
        report["quiet"] = {"ok": ok, "seconds": round(took), "verdicts": quiet}
        print(f"quiet build: {'ok' if ok else 'FAILED'} in {took:.0f} s, {len(quiet)} verdicts",
              flush=True)
        if not ok:
            print(tail)
        write(report)
    site = QUIET_SITE if QUIET_SITE.is_dir() else ROOT / "_build" / "html"
    for i in range(args.runs):
        where = scratch_copy()
        try:
            with bursty_load(site, saturate=args.saturate) as n:
                ok, took, verdicts, tail = build(where, stalls=True)
            if not ok:      # the failed notebooks' tracebacks: the case to fix
                keep_reports(where, REPORT.parent / f"run-{i + 1}-reports")
        finally:
            shutil.rmtree(where.parent, ignore_errors=True)
        flipped, withheld = compare(quiet, verdicts)
        report["runs"].append({"ok": ok, "seconds": round(took), "flipped": flipped,
                               "withheld": withheld, "verdicts": verdicts,
                               "load_processes": n})
        print(f"run {i + 1}/{args.runs} under load: {'ok' if ok else 'FAILED'} in {took:.0f} s; "
              f"{len(flipped)} verdicts flipped {flipped}, {len(withheld)} withheld (not "
              f"shown by this run) {withheld}", flush=True)
        if not ok:
            print(tail)
        write(report)
    if args.lab_runs:
        with bursty_load(site, saturate=args.saturate):
            report["labs"] = lab_references(args.lab_runs)
        print(f"lab references under load: {report['labs']}")
    write(report)
    failures = sum(not r["ok"] for r in report["runs"])
    flips = sum(len(r["flipped"]) for r in report["runs"])
    held = sum(len(r["withheld"]) for r in report["runs"])
    print(f"\nstress: {args.runs} builds under load, {failures} failed, {flips} verdicts "
          f"flipped, {held} withheld; report in build/stress/report.json")
    return 1 if failures or flips or report.get("labs", {}).get("failed") else 0


def keep_reports(where: Path, dst: Path) -> None:
    """Copy a failed build's notebook tracebacks (``*.err.log``) out of its scratch copy."""
    shutil.rmtree(dst, ignore_errors=True)
    for log in sorted((where / "_build").rglob("*.err.log")):
        dst.mkdir(parents=True, exist_ok=True)
        shutil.copy2(log, dst / log.name)


def write(report: dict) -> None:
    REPORT.parent.mkdir(parents=True, exist_ok=True)
    REPORT.write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    sys.exit(main())
