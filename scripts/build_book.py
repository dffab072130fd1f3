"""Build the book, and publish it only if every notebook ran: `make book` runs this.

1. ``jupyter-book build . -W -n --keep-going`` (every warning is an error; notebooks run through
   the execution cache, so only changed ones re-run). ``TOYLIB_STATUS_DIR`` is set so that each
   chapter's machine check records the event-loop lag it measured during the run.
2. The build is refused (``_build/html`` is moved to ``_build/html.failed`` and the command
   exits 1, naming the notebooks) when jupyter-book failed, when any notebook's execution left
   a report in ``_build/html/reports/``, or when any page shows a Python traceback.
3. A build that passes gets ``status.html`` (each notebook's run time, the machine, Python and
   the key packages' versions, the event-loop lag measured during the run) and ``audit.json``
   (every claim's verdict from chapter 7's audit, written by the chapter when it runs).

    python scripts/build_book.py            # what `make book` does
"""
from __future__ import annotations

import html
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BUILD = ROOT / "_build"
HTML = BUILD / "html"
FAILED = BUILD / "html.failed"
CACHE = BUILD / ".jupyter_cache"
STATUS_DIR = ROOT / "build" / "status"          # lags recorded by toylib.present.show
AUDIT = STATUS_DIR / "verdicts.json"           # written by chapter 7 (Audit.write)
PACKAGES = ("jupyter-book", "myst-nb", "sphinx", "aiohttp", "pandas", "numpy", "matplotlib",
            "ipywidgets", "nbval", "toylib")
# A traceback that reached a page: the text Python prints, or IPython's rendered exception.
TRACEBACK = re.compile(r"Traceback \(most recent call last\)|<div class=\"[^\"]*\boutput "
                       r"traceback\b|ansi-red-fg\">[A-Za-z]*Error\b")


def build() -> subprocess.CompletedProcess:
    env = dict(os.environ, TOYLIB_STATUS_DIR=str(STATUS_DIR))
    exe = Path(sys.executable).parent / "jupyter-book"
    return subprocess.run([str(exe), "build", str(ROOT), "-W", "-n", "--keep-going"],
                          cwd=ROOT, env=env, stdin=subprocess.DEVNULL, text=True,
                          capture_output=True)


def failures(proc: subprocess.CompletedProcess) -> list[str]:
    """Why this build must not be published (empty when it may)."""
    out = []
    if proc.returncode != 0:
        out.append(f"jupyter-book exited with {proc.returncode}")
    reports = HTML / "reports"
    if reports.is_dir():
        out += [f"notebook failed to execute: {p.stem} (see _build/html.failed/reports/{p.name})"
                for p in sorted(reports.glob("*.log"))]
    if HTML.is_dir():
        for page in sorted(HTML.rglob("*.html")):
            if "reports" in page.relative_to(HTML).parts:
                continue
            if TRACEBACK.search(page.read_text(encoding="utf-8", errors="replace")):
                out.append(f"a traceback is shown in {page.relative_to(HTML)}")
    else:
        out.append("no _build/html was written")
    return out


def executions() -> list[dict]:
    try:
        from jupyter_cache import get_cache
    except ImportError:
        return []
    if not CACHE.is_dir():
        return []
    rows = []
    for r in get_cache(str(CACHE)).list_cache_records():
        uri = Path(r.uri)
        try:
            uri = uri.resolve().relative_to(ROOT)
        except ValueError:
            pass
        rows.append({"notebook": uri.as_posix(),
                     "seconds": r.data.get("execution_seconds"),
                     "executed": r.created.strftime("%Y-%m-%d %H:%M:%S UTC") if r.created else ""})
    return sorted(rows, key=lambda x: x["notebook"])


def lags() -> list[dict]:
    out = []
    for p in sorted(STATUS_DIR.glob("*.jsonl")) if STATUS_DIR.is_dir() else []:
        for line in p.read_text().splitlines():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return sorted(out, key=lambda x: x.get("time", 0))


def versions() -> dict[str, str]:
    out = {}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def status_page(build_s: float) -> str:
    machine = {"Python": platform.python_version(), "implementation": platform.python_implementation(),
               "system": f"{platform.system()} {platform.release()} ({platform.machine()})",
               "CPUs": str(os.cpu_count()),
               "load average (1, 5, 15 min) at the end": " ".join(f"{x:.2f}" for x in os.getloadavg()),
               "build time (s)": f"{build_s:.0f}"}
    ex = executions()
    lg = lags()

    def table(headers, rows):
        head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
        body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in r) + "</tr>"
                       for r in rows)
        return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"

    parts = [
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
        "<meta name='viewport' content='width=device-width, initial-scale=1'>",
        "<title>Execution status</title><style>body{font-family:system-ui,sans-serif;"
        "max-width:60rem;margin:2rem auto;padding:0 1rem;line-height:1.5}"
        "table{border-collapse:collapse;margin:1rem 0;display:block;overflow-x:auto}"
        "td,th{border:1px solid #999;padding:.25rem .5rem;text-align:left}"
        "@media (prefers-color-scheme: dark){body{background:#111;color:#eee}}</style></head><body>",
        "<main><article>",
        "<h1>Execution status of this build</h1>",
        "<p>Every figure in this book was computed when the page was executed, on the machine "
        "below. Notebooks whose code did not change come from the execution cache: their date "
        "says when they last ran. <a href='index.html'>Back to the book</a>; the verdicts as "
        "data: <a href='audit.json'>audit.json</a>.</p>",
        "<h2>Machine</h2>", table(["", ""], machine.items()),
        "<h2>Notebooks</h2>",
        table(["notebook", "run time (s)", "executed"],
              [(e["notebook"], "" if e["seconds"] is None else f"{e['seconds']:.1f}",
                e["executed"]) for e in ex]) if ex else "<p>No execution records.</p>",
        "<h2>Event-loop lag measured before each chapter's measurements</h2>",
        table(["when (UTC)", "p50 (ms)", "p99 (ms)", "max (ms)", "sleeps", "busy?"],
              [(time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(x.get("time", 0))),
                f"{x.get('p50_ms', float('nan')):.2f}", f"{x.get('p99_ms', float('nan')):.2f}",
                f"{x.get('max_ms', float('nan')):.2f}", x.get("n", ""),
                "yes" if x.get("busy") else "no") for x in lg[-50:]])
        if lg else "<p>No lag was recorded (the notebooks came from the cache).</p>",
        "<h2>Packages</h2>", table(["package", "version"], versions().items()),
        "</article></main></body></html>",
    ]
    return "\n".join(parts)


def main() -> int:
    STATUS_DIR.mkdir(parents=True, exist_ok=True)
    for old in STATUS_DIR.glob("*.jsonl"):
        old.unlink()
    if FAILED.exists():
        shutil.rmtree(FAILED)
    t0 = time.monotonic()
    proc = build()
    took = time.monotonic() - t0
    sys.stdout.write(proc.stdout)
    sys.stderr.write(proc.stderr)
    bad = failures(proc)
    if bad:
        if HTML.exists():
            HTML.rename(FAILED)
        print("\nThe book was NOT published: a failed run is never published.", file=sys.stderr)
        for b in bad:
            print(f"  - {b}", file=sys.stderr)
        print("The pages of the failed build are in _build/html.failed for inspection.",
              file=sys.stderr)
        return 1
    (HTML / "status.html").write_text(status_page(took), encoding="utf-8")
    if AUDIT.is_file():
        shutil.copyfile(AUDIT, HTML / "audit.json")
    print(f"\nBuilt in {took:.0f} s. Execution status: _build/html/status.html")
    return 0


if __name__ == "__main__":
    sys.exit(main())
