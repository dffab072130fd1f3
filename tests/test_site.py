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
  (the theme declares ``THEBE_JS_URL`` twice on every page; nothing breaks);
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


def _pages(site: Path) -> list[str]:
    """check_site's pages, plus the index and search pages it leaves out of its report."""
    extra = [p for p in sorted(check_site.SKIP_PAGES) if (site / p).is_file()]
    return check_site.pages_of(site) + extra


@pytest.fixture(scope="module")
def seen(request) -> SiteSeen:
    """Open every page of the built site once; return what each page showed."""
    if not check_site.CHROMIUM:
        pytest.skip("no chromium: apt-get install chromium")
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
    check_site.PlaywrightError = sync_api.Error
    site: Path = request.getfixturevalue("built_site")
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


def test_internal_links_resolve(seen, built_site):
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
