"""The built site in a real browser, the way a reader sees it.

The session's book build (``built_site`` in tests/conftest.py) is served on 127.0.0.1 at an
ephemeral port and every page is opened once in the system's headless Chromium (Debian:
``apt-get install chromium``; never a downloaded browser) through Python playwright. The
per-page work is scripts/check_site.py's own (``check_page``: console errors, Mermaid, math,
widget views, local 404s, a full-page screenshot); before each page closes, this module also
opens every dropdown, lets the diagrams inside render, and reads the page's figures, widgets,
links and anchors. Every request for a host other than 127.0.0.1 is blocked and recorded.

The tests below then assert one property each over all pages:

* every page loads (no failed request, no navigation error, a title and an article);
* no console error other than the harmless ones documented in check_site.KNOWN_CONSOLE_ERRORS
  (none now), and no uncaught page error at all;
* readable everywhere: no table cell cut to "…", no test scaffolding (``NBVAL_CHECK_OUTPUT``,
  a bare ``assert``) in a shown cell, every line wider than the page in a box that scrolls and
  says so, Mermaid text at 12 px or more with no large empty box around a diagram, the four
  planes' colours the same in light and dark mode, a 390 px phone showing a chapter with
  nothing clipped;
* every launch and download link resolves or is absent, and the notebook download is the
  executed notebook;
* an explorer's control changes its figure, with no kernel;
* every Mermaid block becomes an SVG (dropdowns opened first, so none is left deferred);
* every figure (``<img>``) loads (``naturalWidth > 0``);
* every widget view is rendered and visible;
* no request leaves 127.0.0.1;
* every internal link resolves: the file exists, and so does the anchor when one is given;
* a screenshot of every page (each chapter and lab included) is kept in test-artifacts/site/.

Where no Chromium is installed, or playwright is missing, the tests skip and say why.
"""
from __future__ import annotations

import html
import importlib.util
import json
import os
import re
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest

pytestmark = [pytest.mark.book, pytest.mark.browser]

ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = ROOT / "test-artifacts" / "site"
DROPDOWN_WAIT_S = 15.0

# scripts/ is not a package: load check_site.py by path (registered, as dataclasses require).
_spec = importlib.util.spec_from_file_location("check_site", ROOT / "scripts" / "check_site.py")
check_site = sys.modules.setdefault("check_site", importlib.util.module_from_spec(_spec))
if not hasattr(check_site, "check_page"):
    _spec.loader.exec_module(check_site)

# Every dropdown open: <details> (sphinx-design dropdowns, hidden cell inputs and outputs) and
# sphinx-togglebutton's hidden blocks. Mermaid renders a diagram that was hidden at load time
# once it scrolls into view, so each one still without an SVG is scrolled to in turn.
OPEN_DROPDOWNS_JS = """() => {
  document.querySelectorAll('details').forEach(d => { d.open = true; });
  document.querySelectorAll('.toggle-hidden').forEach(e => e.classList.remove('toggle-hidden'));
  return document.querySelectorAll('details').length;
}"""
UNRENDERED_MERMAID_JS = """() => [...document.querySelectorAll('.mermaid')]
    .filter(el => !el.closest('.mermaid-fullscreen-modal') && !el.querySelector('svg')
                  && !el.hasAttribute('data-mermaid-render-failed')).length"""
SCROLL_TO_MERMAID_JS = """async () => {
  for (const el of document.querySelectorAll('.mermaid')) {
    if (el.querySelector('svg') || el.closest('.mermaid-fullscreen-modal')) continue;
    el.scrollIntoView();
    await new Promise(r => setTimeout(r, 100));
  }
}"""
MERMAID_JS = """() => {
  const blocks = [...document.querySelectorAll('.mermaid')]
      .filter(el => !el.closest('.mermaid-fullscreen-modal'));
  // A diagram Mermaid could not parse becomes an SVG too: its "Syntax error" picture.
  const isError = el => el.hasAttribute('data-mermaid-render-failed')
      || !!el.querySelector('svg[aria-roledescription="error"]');
  return {
    blocks: blocks.length,
    svgs: blocks.filter(el => el.querySelector('svg') && !isError(el)).length,
    failed: blocks.filter(isError).length,
  };
}"""
# Images: lazy ones are made eager, then every image has until its load or error event.
IMAGES_JS = """async () => {
  const imgs = [...document.images];
  imgs.forEach(i => { i.loading = 'eager'; });
  await Promise.all(imgs.map(i => i.complete ? null : new Promise(done => {
    i.addEventListener('load', done, {once: true});
    i.addEventListener('error', done, {once: true});
    setTimeout(done, 10000);
  })));
  return imgs.map(i => ({src: i.currentSrc || i.src || i.outerHTML.slice(0, 120),
                         width: i.naturalWidth, complete: i.complete}));
}"""
# A widget view counts as rendered when the manager put a .jupyter-widgets element beside its
# <script> and that element takes up space on the page.
WIDGETS_JS = """() => {
  const views = [...document.querySelectorAll(
      'script[type="application/vnd.jupyter.widget-view+json"]')];
  const shown = views.filter(s => {
    const w = s.parentElement && s.parentElement.querySelector('.jupyter-widgets');
    if (!w) return false;
    const r = w.getBoundingClientRect();
    return r.width > 0 && r.height > 0;
  });
  return {views: views.length, shown: shown.length};
}"""
PAGE_JS = """() => ({
  url: location.href,
  title: document.title,
  article: !!document.querySelector('article, main'),
  links: [...document.querySelectorAll('a[href]')].map(a => a.href),
  ids: [...document.querySelectorAll('[id]')].map(e => e.id)
       .concat([...document.querySelectorAll('a[name]')].map(a => a.name)),
})"""
STATIC_ID = re.compile(r"""\b(?:id|name)\s*=\s*["']([^"']+)["']""", re.I)
# Table cells whose text was cut: pandas' "…"/"..." or a CSS ellipsis on overflowing text.
TRUNCATED_JS = """() => [...document.querySelectorAll('.bd-article td, .bd-article th')]
  .filter(c => /(\u2026|\\.\\.\\.)\\s*$/.test(c.innerText)
               || (getComputedStyle(c).textOverflow === 'ellipsis' && c.scrollWidth > c.clientWidth))
  .map(c => c.innerText.trim().slice(-60))"""
# What a reader sees of the notebook's test scaffolding: shown code cells only.
SCAFFOLD_JS = """() => [...document.querySelectorAll('.bd-article .cell_input')]
  .map(c => c.innerText)
  .filter(t => /NBVAL_CHECK_OUTPUT/.test(t) || /^\\s*assert\\b/m.test(t))
  .map(t => t.trim().split('\\n').slice(0, 3).join(' | ').slice(0, 160))"""
# Rendered diagrams: the smallest text on screen (font size x the SVG's scale) and the empty
# space left in the diagram's box.
MERMAID_SIZE_JS = """() => [...document.querySelectorAll('.bd-article pre.mermaid')]
  .filter(p => !p.closest('.mermaid-fullscreen-modal'))
  .map(p => {
    const svg = p.querySelector('svg');
    if (!svg) return null;
    const r = svg.getBoundingClientRect();
    if (!r.width) return null;
    const vb = svg.viewBox && svg.viewBox.baseVal;
    const scale = vb && vb.width ? r.width / vb.width : 1;
    const sizes = [...svg.querySelectorAll('text, span, p')]
      .filter(t => t.textContent.trim())
      .map(t => parseFloat(getComputedStyle(t).fontSize) * scale);
    return {min_px: sizes.length ? Math.min(...sizes) : null,
            empty_px: p.getBoundingClientRect().height - r.height,
            filter: getComputedStyle(svg).filter, text: svg.textContent.trim().slice(0, 40)};
  }).filter(x => x)"""
# Boxes wider than the page: they must scroll (not clip) and show the scroll hint.
OVERFLOW_JS = """() => [...document.querySelectorAll(
    '.bd-article div.highlight > pre, .bd-article .cell_output .output.text_html, .bd-article pre.mermaid')]
  .filter(e => e.scrollWidth - e.clientWidth > 2)
  .map(e => ({what: e.className || e.tagName, overflow: getComputedStyle(e).overflowX,
              hint: e.parentElement.classList.contains('course-overflows'),
              text: e.innerText.trim().slice(0, 50)}))"""
# The page's header buttons: downloads and launch links.
BUTTONS_JS = """() => [...document.querySelectorAll('.bd-header-article a[href]')]
  .map(a => ({href: a.href, cls: a.className, title: a.title || a.innerText.trim()}))"""


@dataclass
class PageSeen:
    """What one page showed: check_site's report plus what was read before it closed."""
    path: str
    report: object = None                 # check_site.PageReport
    error: str = ""                       # the page could not be opened or checked
    info: dict = field(default_factory=dict)
    mermaid: dict = field(default_factory=dict)
    images: list = field(default_factory=list)
    widgets: dict = field(default_factory=dict)
    websockets: list = field(default_factory=list)
    truncated: list = field(default_factory=list)
    scaffolding: list = field(default_factory=list)
    diagrams: list = field(default_factory=list)
    overflow: list = field(default_factory=list)
    buttons: list = field(default_factory=list)


@dataclass
class SiteSeen:
    base: str                             # http://127.0.0.1:PORT/ the site was served at
    pages: list[PageSeen]

    def __repr__(self) -> str:  # what a failing test prints for its argument
        return f"<{len(self.pages)} pages seen at {self.base}>"


class _PageWithExtras:
    """A playwright page that runs ``extras(page)`` before it closes (check_page closes it)."""

    def __init__(self, page, extras):
        self._page, self._extras = page, extras

    def __getattr__(self, name):
        return getattr(self._page, name)

    def close(self, *args, **kwargs):
        try:
            self._extras(self._page)
        finally:
            self._page.close(*args, **kwargs)


class _ContextWithExtras:
    """What check_page needs of a browser context: ``new_page``, with the extras attached."""

    def __init__(self, context, extras):
        self._context, self._extras = context, extras

    def new_page(self):
        return _PageWithExtras(self._context.new_page(), self._extras)


def _look_closer(page, seen: PageSeen) -> None:
    """Open the dropdowns, wait for their diagrams, and read figures, widgets, links, ids."""
    page.evaluate(OPEN_DROPDOWNS_JS)
    deadline = time.monotonic() + DROPDOWN_WAIT_S
    while page.evaluate(UNRENDERED_MERMAID_JS) and time.monotonic() < deadline:
        page.evaluate(SCROLL_TO_MERMAID_JS)
        page.wait_for_timeout(250)
    seen.mermaid = page.evaluate(MERMAID_JS)
    seen.images = page.evaluate(IMAGES_JS)
    seen.widgets = page.evaluate(WIDGETS_JS)
    seen.info = page.evaluate(PAGE_JS)
    seen.truncated = page.evaluate(TRUNCATED_JS)
    seen.scaffolding = page.evaluate(SCAFFOLD_JS)
    seen.diagrams = page.evaluate(MERMAID_SIZE_JS)
    page.wait_for_timeout(400)      # course.js looks at boxes again 150 ms after a change
    seen.overflow = page.evaluate(OVERFLOW_JS)
    seen.buttons = page.evaluate(BUTTONS_JS)


def _pages(site: Path) -> list[str]:
    """check_site's pages, plus the index and search pages it leaves out of its report."""
    extra = [p for p in sorted(check_site.SKIP_PAGES) if (site / p).is_file()]
    return check_site.pages_of(site) + extra


@pytest.fixture(scope="module")
def site_dir(request) -> Path:
    """The site under test: the session's build, or $COURSE_SITE (a built _build/html) if set."""
    if not check_site.CHROMIUM:
        pytest.skip("no chromium: apt-get install chromium")
    pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
    given = os.environ.get("COURSE_SITE")
    if given:
        return Path(given)
    return request.getfixturevalue("built_site")


@pytest.fixture(scope="module")
def seen(site_dir) -> SiteSeen:
    """Open every page of the built site once; return what each page showed."""
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
    check_site.PlaywrightError = sync_api.Error
    site: Path = site_dir
    shutil.rmtree(ARTIFACTS, ignore_errors=True)    # no screenshot of a page that is gone
    ARTIFACTS.mkdir(parents=True)

    results: list[PageSeen] = []
    external: list[str] = []    # requests of the page being checked that left the site

    def route(r):
        url = r.request.url
        if urlsplit(url).scheme in ("http", "https", "ws", "wss") \
                and urlsplit(url).hostname not in check_site.LOCAL_HOSTS:
            external.append(url)
            r.abort()
        else:
            r.continue_()

    with check_site.serve(site) as base, sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=check_site.CHROMIUM,
                                     args=check_site.CHROMIUM_ARGS)
        try:
            context = browser.new_context(viewport={"width": 1280, "height": 900})
            context.route("**/*", route)
            for path in _pages(site):
                page_seen = PageSeen(path)
                results.append(page_seen)
                external.clear()

                def extras(page, page_seen=page_seen):
                    _look_closer(page, page_seen)

                def on_page(page, page_seen=page_seen):
                    page.on("websocket", lambda ws: page_seen.websockets.append(ws.url))

                context.on("page", on_page)
                try:
                    page_seen.report = check_site.check_page(
                        _ContextWithExtras(context, extras), base, site, path, ARTIFACTS)
                except sync_api.Error as exc:
                    page_seen.error = str(exc).splitlines()[0]
                finally:
                    context.remove_listener("page", on_page)
                if page_seen.report is not None:
                    page_seen.report.external_requests = sorted(set(external))
                else:
                    page_seen.report = check_site.PageReport(
                        path, external_requests=sorted(set(external)))
            context.close()
        finally:
            browser.close()
    return SiteSeen(base, results)


def _fail_if(problems: list[str], what: str) -> None:
    assert not problems, f"{what}:\n  " + "\n  ".join(problems)


# -- the tests --------------------------------------------------------------------------------
def test_every_page_loads(seen):
    problems = []
    for p in seen.pages:
        if p.error:
            problems.append(f"{p.path}: {p.error}")
            continue
        problems += [f"{p.path}: {f}" for f in p.report.failed_requests]
        if not p.info.get("title"):
            problems.append(f"{p.path}: no <title>")
        if not p.info.get("article"):
            problems.append(f"{p.path}: no article or main element")
    assert len(seen.pages) > 1, "the site has no pages"
    _fail_if(problems, "pages that did not load cleanly")


def test_no_console_errors_but_the_documented_harmless_ones(seen):
    problems = [f"{p.path}: {e}" for p in seen.pages for e in p.report.console_errors]
    _fail_if(problems, "console errors (harmless ones are listed in "
                       "scripts/check_site.py KNOWN_CONSOLE_ERRORS)")


def test_every_mermaid_block_becomes_an_svg(seen):
    problems, total = [], 0
    for p in seen.pages:
        m = p.mermaid
        total += m.get("blocks", 0)
        if m.get("svgs", 0) < m.get("blocks", 0):
            problems.append(f"{p.path}: {m['svgs']} of {m['blocks']} diagrams rendered"
                            + (f" ({m['failed']} failed)" if m.get("failed") else ""))
    _fail_if(problems, "Mermaid blocks that did not become an SVG")
    assert total, "no page has a Mermaid diagram (book/planes.md has one)"


def test_every_figure_loads(seen):
    problems, total = [], 0
    for p in seen.pages:
        for img in p.images:
            total += 1
            if not img["width"]:
                problems.append(f"{p.path}: {img['src']}")
    _fail_if(problems, "images that did not load (naturalWidth 0)")
    chapters = [p for p in seen.pages if p.path.startswith("chapters/")]
    if chapters:
        assert any(p.images for p in chapters), "no chapter shows a figure"
    assert total or not chapters, "the site has no figure at all"


def test_the_widgets_render(seen):
    problems, pages_with_widgets = [], 0
    for p in seen.pages:
        c = p.report.counts
        views = c.get("widget_views", 0)
        if not views:
            continue
        pages_with_widgets += 1
        if c.get("widget_views_filled", 0) < views:
            problems.append(f"{p.path}: {c['widget_views_filled']} of {views} views rendered")
        elif p.widgets.get("shown", 0) < views:
            problems.append(f"{p.path}: {p.widgets.get('shown', 0)} of {views} views visible")
    _fail_if(problems, "widget views the widget manager did not render")
    if not pages_with_widgets:
        pytest.skip("no page of the book displays a widget yet")


def test_no_request_leaves_127_0_0_1(seen):
    problems = [f"{p.path}: {u}" for p in seen.pages for u in p.report.external_requests]
    problems += [f"{p.path}: websocket {u}" for p in seen.pages for u in p.websockets
                 if urlsplit(u).hostname not in check_site.LOCAL_HOSTS]
    _fail_if(problems, "requests to other hosts (blocked, not sent)")


def test_internal_links_resolve(seen, site_dir):
    built_site = site_dir
    base_parts = urlsplit(seen.base)
    rendered_ids = {p.path: set(p.info.get("ids", [])) for p in seen.pages}
    static_ids: dict[Path, set[str]] = {}

    def ids_of(target: Path, rel: str) -> set[str]:
        if target not in static_ids:
            text = target.read_text(encoding="utf-8", errors="replace")
            static_ids[target] = {html.unescape(i) for i in STATIC_ID.findall(text)}
        return static_ids[target] | rendered_ids.get(rel, set())

    problems, checked = set(), 0
    for p in seen.pages:
        for href in p.info.get("links", []):
            parts = urlsplit(href)
            if parts.scheme not in ("http", "https") or parts.netloc != base_parts.netloc:
                continue                    # a link out of the site, mailto:, javascript:
            checked += 1
            rel = unquote(parts.path)[len(base_parts.path):]
            if rel == "" or rel.endswith("/"):
                rel += "index.html"
            target = built_site / rel
            if not target.is_file():
                problems.add(f"{p.path}: {href} (no file {rel})")
            elif parts.fragment and target.suffix == ".html":
                anchor = unquote(parts.fragment)
                if anchor not in ids_of(target, rel):
                    problems.add(f"{p.path}: {href} (no anchor #{anchor} in {rel})")
    _fail_if(sorted(problems), "internal links that do not resolve")
    assert checked, "no internal link found on any page"


def test_a_screenshot_of_every_page_is_kept(seen):
    problems = []
    for p in seen.pages:
        shot = Path(p.report.screenshot) if p.report.screenshot else None
        if shot is None or not shot.is_file() or shot.stat().st_size == 0:
            problems.append(p.path)
    _fail_if(problems, f"pages with no screenshot in {ARTIFACTS.relative_to(ROOT)}")
    assert any(p.path.startswith("chapters/") for p in seen.pages), "no chapter page was seen"


# -- readable everywhere ---------------------------------------------------------------------
def test_no_uncaught_page_error(seen):
    problems = [f"{p.path}: {e}" for p in seen.pages for e in p.report.page_errors]
    _fail_if(problems, "uncaught errors in pages (playwright pageerror)")


def test_no_table_cell_is_cut_off(seen):
    problems = [f"{p.path}: …{t!r}" for p in seen.pages for t in p.truncated]
    _fail_if(problems, "table cells cut off (\"…\" or an ellipsis)")


def test_no_test_scaffolding_is_shown(seen):
    problems = [f"{p.path}: {t}" for p in seen.pages for t in p.scaffolding]
    _fail_if(problems, "shown code cells with NBVAL_CHECK_OUTPUT or a bare assert "
                       "(tag them remove-cell)")


MIN_DIAGRAM_TEXT_PX = 12.0
MAX_EMPTY_PX = 80.0


def test_diagram_text_is_readable_and_no_box_is_mostly_empty(seen):
    problems, measured = [], 0
    for p in seen.pages:
        for d in p.diagrams:
            if d["min_px"] is None:
                continue
            measured += 1
            if d["min_px"] < MIN_DIAGRAM_TEXT_PX - 0.5:
                problems.append(f"{p.path}: text at {d['min_px']:.1f} px in {d['text']!r}")
            if d["empty_px"] > MAX_EMPTY_PX:
                problems.append(f"{p.path}: {d['empty_px']:.0f} px of empty box around "
                                f"{d['text']!r}")
            if d["filter"] not in ("none", ""):
                problems.append(f"{p.path}: filter {d['filter']} on {d['text']!r}")
    _fail_if(problems, f"diagrams (text at least {MIN_DIAGRAM_TEXT_PX} px on a 1280 px page)")
    assert measured, "no rendered diagram was measured"


def test_long_lines_scroll_visibly(seen):
    problems = []
    for p in seen.pages:
        for o in p.overflow:
            if o["overflow"] not in ("auto", "scroll"):
                problems.append(f"{p.path}: {o['what']} clips ({o['overflow']}): {o['text']!r}")
            elif not o["hint"]:
                problems.append(f"{p.path}: {o['what']} scrolls with no hint: {o['text']!r}")
    _fail_if(problems, "boxes wider than the page that clip or scroll without a hint")


# -- launch and download links ---------------------------------------------------------------
LAUNCH_HOSTS = {"mybinder.org": "binder", "colab.research.google.com": "colab"}


def _repository_path(url: str) -> str | None:
    """The file a launch link opens, relative to the repository root."""
    parts = urlsplit(url)
    if parts.hostname == "colab.research.google.com":
        m = re.search(r"/blob/[^/]+/(.+)$", parts.path)
        return m.group(1) if m else None
    m = re.search(r"urlpath=(?:lab/tree|tree)/([^&]+)", parts.query)
    return unquote(m.group(1)) if m else None


def test_launch_and_download_links_resolve_or_are_absent(seen, site_dir):
    problems, downloads = [], 0
    for p in seen.pages:
        for b in p.buttons:
            href, parts = b["href"], urlsplit(b["href"])
            if parts.netloc == urlsplit(seen.base).netloc:
                rel = unquote(parts.path)[len(urlsplit(seen.base).path):]
                if "download" in b["cls"]:
                    downloads += 1
                    if not (site_dir / rel).is_file():
                        problems.append(f"{p.path}: download {rel} is not on the site")
                continue
            if parts.scheme not in ("http", "https"):
                continue
            if parts.hostname in LAUNCH_HOSTS or "launch" in b["cls"]:
                path = _repository_path(href)
                if not path or not (ROOT / path).is_file():
                    problems.append(f"{p.path}: launch link {href} opens {path!r}, "
                                    "not a file of this repository")
            elif "repository" in b["cls"] and "example" in (parts.hostname or ""):
                problems.append(f"{p.path}: repository button points at a placeholder {href}")
    _fail_if(problems, "launch or download links that lead nowhere")
    assert downloads, "no page offers a download"


def test_the_notebook_download_is_the_executed_notebook(site_dir):
    chapters = sorted((site_dir / "_sources" / "chapters").glob("*.ipynb"))
    if not chapters:
        pytest.skip("no chapter notebook on the site")
    empty = []
    for nb in chapters:
        cells = json.loads(nb.read_text())["cells"]
        outputs = sum(len(c.get("outputs", [])) for c in cells if c["cell_type"] == "code")
        if not outputs:
            empty.append(nb.name)
    assert not empty, f"downloads without outputs (the stored source, not the executed one): {empty}"


# -- dark mode, a phone, the explorers: a few pages opened once more --------------------------
def _open(context, base: str, path: str):
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(base + path, wait_until="load", timeout=30_000)
    check_site._wait_for_rendering(page)
    page.evaluate(OPEN_DROPDOWNS_JS)
    deadline = time.monotonic() + DROPDOWN_WAIT_S
    while page.evaluate(UNRENDERED_MERMAID_JS) and time.monotonic() < deadline:
        page.evaluate(SCROLL_TO_MERMAID_JS)
        page.wait_for_timeout(250)
    page.wait_for_timeout(500)
    return page, errors


@pytest.fixture(scope="module")
def browser_at(site_dir):
    """``open(path, **context options) -> (page, errors)`` on the served site, closed after."""
    sync_api = pytest.importorskip("playwright.sync_api")
    check_site.PlaywrightError = sync_api.Error
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with check_site.serve(site_dir) as base, sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=check_site.CHROMIUM,
                                     args=check_site.CHROMIUM_ARGS)
        contexts = []

        def open_page(path: str, **options):
            context = browser.new_context(**options)
            context.route("**/*", lambda r: r.abort() if urlsplit(r.request.url).hostname
                          not in check_site.LOCAL_HOSTS and urlsplit(r.request.url).scheme
                          in ("http", "https") else r.continue_())
            contexts.append(context)
            return _open(context, base, path)

        try:
            yield open_page
        finally:
            for c in contexts:
                c.close()
            browser.close()


# Each plane's fill, read from the rendered SVG: a node's class names its plane.
PLANE_FILLS_JS = """() => {
  const out = {};
  for (const node of document.querySelectorAll('.bd-article pre.mermaid svg .node')) {
    const cls = [...node.classList].find(c => /^(edge|service|state|control|problem)(Style)?$/.test(c));
    if (!cls) continue;
    const shape = node.querySelector('rect, polygon, path, circle');
    if (!shape) continue;
    const plane = cls.replace('Style', '');
    (out[plane] = out[plane] || new Set()).add(getComputedStyle(shape).fill);
  }
  const svgs = [...document.querySelectorAll('.bd-article pre.mermaid svg')];
  return {fills: Object.fromEntries(Object.entries(out).map(([k, v]) => [k, [...v].sort()])),
          filters: [...new Set(svgs.map(s => getComputedStyle(s).filter))],
          theme: document.documentElement.dataset.theme};
}"""
PLANE_RGB = {"edge": "rgb(59, 130, 246)", "service": "rgb(16, 185, 129)",
             "state": "rgb(245, 158, 11)", "control": "rgb(139, 92, 246)",
             "problem": "rgb(255, 102, 102)"}


def test_the_planes_keep_their_colours_in_dark_mode(browser_at):
    seen_modes = {}
    for mode in ("light", "dark"):
        page, errors = browser_at("book/planes.html", color_scheme=mode,
                                  viewport={"width": 1280, "height": 900})
        seen_modes[mode] = page.evaluate(PLANE_FILLS_JS)
        page.screenshot(path=str(ARTIFACTS / f"planes-{mode}.png"), full_page=True)
        page.close()
        assert not errors, f"{mode}: {errors}"
    light, dark = seen_modes["light"], seen_modes["dark"]
    assert dark["theme"] == "dark" and light["theme"] == "light", (light["theme"], dark["theme"])
    assert dark["filters"] == ["none"], f"diagrams are filtered in dark mode: {dark['filters']}"
    assert light["fills"] == dark["fills"], f"light {light['fills']} vs dark {dark['fills']}"
    for plane, rgb in PLANE_RGB.items():
        assert light["fills"].get(plane) == [rgb], f"{plane}: {light['fills'].get(plane)}"


PHONE = {"width": 390, "height": 844}
# Anything whose right edge passes the viewport and that no scrolling box contains.
CLIPPED_JS = """() => {
  const W = window.innerWidth;
  const scrolls = e => { for (let a = e.parentElement; a && a !== document.body; a = a.parentElement) {
      const o = getComputedStyle(a).overflowX; if (o === 'auto' || o === 'scroll') return true; }
    return false; };
  const bad = [...document.querySelectorAll('.bd-article *')].filter(e => {
    const r = e.getBoundingClientRect();
    return r.width > 0 && r.right > W + 1 && !scrolls(e);
  }).filter(e => !e.closest('.mermaid-fullscreen-modal'));
  return {page_width: document.documentElement.scrollWidth, viewport: W,
          clipped: bad.slice(0, 10).map(e => e.tagName + '.' + e.className + ': '
                                              + (e.innerText || '').trim().slice(0, 40))};
}"""
PHONE_CHAPTER = "chapters/ch02_chatty.html"


def test_a_phone_shows_a_chapter_with_nothing_clipped(browser_at, site_dir):
    path = PHONE_CHAPTER if (site_dir / PHONE_CHAPTER).is_file() else "book/planes.html"
    page, errors = browser_at(path, viewport=PHONE, is_mobile=True, has_touch=True)
    found = page.evaluate(CLIPPED_JS)
    page.screenshot(path=str(ARTIFACTS / f"phone-{path.replace('/', '__')}.png"), full_page=True)
    page.close()
    assert not errors, errors
    assert found["page_width"] <= found["viewport"] + 1, (
        f"the page is {found['page_width']} px wide on a {found['viewport']} px phone")
    assert not found["clipped"], "clipped on a phone:\n  " + "\n  ".join(found["clipped"])


EXPLORER_JS = """async () => {
  const boxes = [...document.querySelectorAll('.course-explorer')];
  const out = [];
  for (const box of boxes) {
    const svg = () => box.querySelector('.course-explorer-chart svg');
    const before = svg() ? svg().innerHTML : '';
    const control = box.querySelector('.vega-bindings select, .vega-bindings input[type=range]');
    if (!control) { out.push({state: box.getAttribute('data-explorer-state'), control: false}); continue; }
    if (control.tagName === 'SELECT') control.selectedIndex = (control.selectedIndex + 1) % control.options.length;
    else control.value = control.max;
    control.dispatchEvent(new Event('input', {bubbles: true}));
    control.dispatchEvent(new Event('change', {bubbles: true}));
    await new Promise(r => setTimeout(r, 600));
    out.push({state: box.getAttribute('data-explorer-state'), control: true,
              changed: !!svg() && svg().innerHTML !== before,
              label: /measured at build time on the build machine/i.test(box.innerText)});
  }
  return out;
}"""


def test_an_explorer_control_changes_the_figure_without_a_kernel(browser_at, site_dir):
    pages = [p.relative_to(site_dir).as_posix() for p in sorted(site_dir.rglob("*.html"))
             if "_static" not in p.parts and "course-explorer" in p.read_text(errors="replace")]
    assert pages, "no page shows an explorer (book/knobs.md has one)"
    for path in pages:
        page, errors = browser_at(path, viewport={"width": 1280, "height": 900})
        results = page.evaluate(EXPLORER_JS)
        page.close()
        assert not errors, f"{path}: {errors}"
        for i, r in enumerate(results):
            assert r["state"] == "ready", f"{path}: explorer {i} is {r['state']}"
            assert r["control"], f"{path}: explorer {i} has no control"
            assert r["changed"], f"{path}: moving explorer {i}'s control left the figure as it was"
            assert r["label"], f"{path}: explorer {i} does not say it was measured at build time"
