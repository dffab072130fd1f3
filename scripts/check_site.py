"""Open every page of the built book in headless Chromium and report what a reader would see.

    python scripts/check_site.py [SITE_DIR] [--artifacts DIR] [--page PATH ...]

Serves SITE_DIR (default _build/html) on 127.0.0.1 at an ephemeral port, from a thread of this
process, and for each page reports:

* console errors and uncaught page errors (``KNOWN_CONSOLE_ERRORS`` lists console noise that is
  known to be harmless; it is empty now that the book's extension keeps sphinx-thebe's inline
  script once, which ended "THEBE_JS_URL has already been declared"); uncaught page errors are
  also kept apart in ``page_errors`` and are never excused;
* Mermaid diagrams: how many ``.mermaid`` blocks the page has and how many became an SVG
  (diagrams inside a closed dropdown render only when opened, so they are counted apart);
* math: how many formulas the page has and how many MathJax typeset;
* ipywidgets: how many widget views the page embeds and how many the widget manager rendered;
* explorers (toylib.present.explorer): how many the page has and how many were drawn;
* every request that would leave 127.0.0.1 (it is blocked, not sent) and every local 404;

and saves a full-page screenshot per page into the artifacts folder (default test-artifacts/).
Exit status 0 when no page has a problem, 1 otherwise. Uses the system Chromium
(``apt-get install chromium``); it never downloads a browser.
"""
from __future__ import annotations

import argparse
import functools
import http.server
import os
import re
import shutil
import sys
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

# The system browser (Debian: apt-get install chromium); $CHROMIUM overrides the search.
CHROMIUM = os.environ.get("CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
CHROMIUM_ARGS = ["--no-sandbox", "--headless", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
LOCAL_HOSTS = {"127.0.0.1", "localhost"}
KNOWN_CONSOLE_ERRORS: tuple[re.Pattern, ...] = ()
SKIP_PAGES = {"genindex.html", "search.html"}
META_REFRESH = re.compile(r"<meta[^>]+http-equiv=[\"']refresh[\"'][^>]*url=([^\"'>\s]+)", re.I)
PlaywrightError = Exception  # replaced by playwright's Error class in main()
RENDER_WAIT_S = 20.0

# Counted in the page once scripts had their chance. Mermaid leaves an <svg> inside each
# .mermaid block it rendered; the widget manager replaces each view <script> with a
# .jupyter-widgets element beside it.
PROBE_JS = """() => {
  const blocks = [...document.querySelectorAll('.mermaid')]
      .filter(el => !el.closest('.mermaid-fullscreen-modal'));
  const deferred = blocks.filter(el => el.hasAttribute('data-mermaid-deferred'));
  return {
    mermaid_blocks: blocks.length,
    mermaid_svgs: blocks.filter(el => el.querySelector('svg')).length,
    mermaid_deferred: deferred.filter(el => !el.querySelector('svg')).length,
    math: document.querySelectorAll('.math').length,
    math_rendered: document.querySelectorAll('.math mjx-container').length,
    widget_views: document.querySelectorAll(
        'script[type="application/vnd.jupyter.widget-view+json"]').length,
    widget_views_filled: [...document.querySelectorAll(
        'script[type="application/vnd.jupyter.widget-view+json"]')]
        .filter(s => s.parentElement && s.parentElement.querySelector('.jupyter-widgets'))
        .length,
    explorers: document.querySelectorAll('.course-explorer').length,
    explorers_done: document.querySelectorAll(
        '.course-explorer[data-explorer-state="ready"], .course-explorer[data-explorer-state="failed"]')
        .length,
    explorers_failed: document.querySelectorAll('.course-explorer[data-explorer-state="failed"]')
        .length,
  };
}"""


@dataclass
class PageReport:
    path: str
    console_errors: list[str] = field(default_factory=list)
    known_errors: list[str] = field(default_factory=list)
    page_errors: list[str] = field(default_factory=list)   # uncaught exceptions in the page
    external_requests: list[str] = field(default_factory=list)
    failed_requests: list[str] = field(default_factory=list)
    counts: dict = field(default_factory=dict)
    screenshot: str = ""

    def problems(self) -> list[str]:
        c = self.counts
        out = [f"console: {e}" for e in self.console_errors]
        out += [f"uncaught page error: {e}" for e in self.page_errors
                if f"uncaught: {e}" not in self.console_errors]
        out += [f"left 127.0.0.1 (blocked): {u}" for u in self.external_requests]
        out += [f"failed: {u}" for u in self.failed_requests]
        if c.get("mermaid_svgs", 0) + c.get("mermaid_deferred", 0) < c.get("mermaid_blocks", 0):
            out.append(f"mermaid: {c['mermaid_svgs']} of {c['mermaid_blocks']} blocks rendered")
        if c.get("math_rendered", 0) < c.get("math", 0):
            out.append(f"math: {c['math_rendered']} of {c['math']} formulas typeset")
        if c.get("widget_views_filled", 0) < c.get("widget_views", 0):
            out.append(f"widgets: {c['widget_views_filled']} of {c['widget_views']} views rendered")
        if c.get("explorers_done", 0) < c.get("explorers", 0) or c.get("explorers_failed", 0):
            out.append(f"explorers: {c.get('explorers_done', 0) - c.get('explorers_failed', 0)} "
                       f"of {c['explorers']} drawn")
        return out


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    extensions_map = {**http.server.SimpleHTTPRequestHandler.extensions_map,
                      ".mjs": "text/javascript", ".js": "text/javascript"}

    def log_message(self, *args):  # the report says what matters
        pass


@contextmanager
def serve(site: Path):
    """Serve ``site`` on 127.0.0.1 at a free port for the duration of the block."""
    handler = functools.partial(_QuietHandler, directory=str(site))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, name="site-server", daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def pages_of(site: Path) -> list[str]:
    skip_dirs = {"_static", "_sources", "_images", "jupyter_execute"}
    return sorted(p.relative_to(site).as_posix() for p in site.rglob("*.html")
                  if not (set(p.relative_to(site).parts[:-1]) & skip_dirs)
                  and p.name not in SKIP_PAGES)


def check_page(context, base: str, site: Path, path: str, artifacts: Path) -> PageReport:
    report = PageReport(path)
    page = context.new_page()

    def error(text):
        known = any(rx.search(text) for rx in KNOWN_CONSOLE_ERRORS)
        (report.known_errors if known else report.console_errors).append(text)

    def on_console(msg):
        if msg.type == "error":
            error(msg.text)

    def on_response(resp):
        if resp.status >= 400:
            report.failed_requests.append(f"{resp.status} {resp.url}")

    page.on("console", on_console)
    def on_pageerror(exc):
        report.page_errors.append(str(exc))
        error(f"uncaught: {exc}")

    page.on("pageerror", on_pageerror)
    page.on("response", on_response)
    try:
        page.goto(base + path, wait_until="load", timeout=30_000)
        target = _redirect_target(site / path)
        if target:  # index.html: check the page it forwards to, once that has loaded
            page.wait_for_url(re.compile(re.escape(target) + r"(\?.*)?$"), wait_until="load")
        counts = _wait_for_rendering(page)
        report.counts = counts
        shot = artifacts / (path.replace("/", "__").removesuffix(".html") + ".png")
        page.screenshot(path=str(shot), full_page=True)
        report.screenshot = str(shot)
    finally:
        page.close()
    return report


def _redirect_target(html_file: Path) -> str | None:
    """Where a page's <meta http-equiv="refresh"> forwards to, if it has one."""
    match = META_REFRESH.search(html_file.read_text(encoding="utf-8", errors="replace"))
    return match.group(1) if match else None


def _wait_for_rendering(page) -> dict:
    """Poll until every Mermaid block and widget view has rendered, or RENDER_WAIT_S passes."""
    deadline = time.monotonic() + RENDER_WAIT_S
    while True:
        try:
            c = page.evaluate(PROBE_JS)
        except PlaywrightError as exc:  # a redirect page (index.html) navigated away
            if "context was destroyed" not in str(exc) or time.monotonic() > deadline:
                raise
            page.wait_for_load_state("load")
            continue
        done = (c["mermaid_svgs"] + c["mermaid_deferred"] >= c["mermaid_blocks"]
                and c["widget_views_filled"] >= c["widget_views"]
                and c["math_rendered"] >= c["math"]
                and c["explorers_done"] >= c["explorers"])
        if done or time.monotonic() > deadline:
            page.wait_for_timeout(300)  # let the last layout settle before the screenshot
            return page.evaluate(PROBE_JS)
        page.wait_for_timeout(200)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("site", nargs="?", default="_build/html", type=Path)
    ap.add_argument("--artifacts", default="test-artifacts", type=Path)
    ap.add_argument("--page", action="append", help="check only these pages (path in the site)")
    args = ap.parse_args(argv)

    global PlaywrightError
    # Imported late, so that --help works where playwright is not installed.
    from playwright.sync_api import Error as PlaywrightError, sync_playwright

    if not CHROMIUM:
        print("no chromium found: apt-get install chromium (or set $CHROMIUM)", file=sys.stderr)
        return 2
    site = args.site.resolve()
    if not (site / "index.html").exists():
        print(f"no built site in {args.site}: run `make book` first", file=sys.stderr)
        return 2
    args.artifacts.mkdir(parents=True, exist_ok=True)
    pages = args.page or pages_of(site)

    reports: list[PageReport] = []
    with serve(site) as base, sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            context = browser.new_context(viewport={"width": 1280, "height": 900})
            external: list[str] = []  # requests of the page being checked that left the site

            def route(r):
                url = r.request.url
                if url.startswith(("http://", "https://")) \
                        and urlsplit(url).hostname not in LOCAL_HOSTS:
                    external.append(url)
                    r.abort()
                else:
                    r.continue_()

            context.route("**/*", route)
            for path in pages:
                external.clear()
                rep = check_page(context, base, site, path, args.artifacts)
                rep.external_requests = sorted(set(external))
                reports.append(rep)
                print(f"checked {path}", file=sys.stderr, flush=True)
            context.close()
        finally:
            browser.close()

    bad = 0
    for rep in reports:
        c = rep.counts
        problems = rep.problems()
        bad += bool(problems)
        print(f"{'FAIL' if problems else 'ok  '} {rep.path}: mermaid {c.get('mermaid_svgs', 0)}"
              f"/{c.get('mermaid_blocks', 0)} svg"
              + (f" ({c['mermaid_deferred']} in closed blocks)" if c.get("mermaid_deferred") else "")
              + f", math {c.get('math_rendered', 0)}/{c.get('math', 0)}"
              + f", widgets {c.get('widget_views_filled', 0)}/{c.get('widget_views', 0)} views"
              + (f", known console noise: {len(rep.known_errors)}" if rep.known_errors else ""))
        for p in problems:
            print(f"       {p}")
    print(f"{len(reports) - bad} pages ok, {bad} with problems; screenshots in {args.artifacts}/")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
