"""The book builds with no warning, and the built site loads nothing from a third-party host.

The session fixture ``book_build`` (tests/conftest.py, shared with tests/test_site.py) runs
``jupyter-book build . -W -n --keep-going`` in place once (as ``make book`` does; notebooks
come from the jupyter-cache when their code has not changed); the tests here only read its
output and ``_build/html``. The vendored assets (``make vendor``) must exist.
"""
from __future__ import annotations

import re
import subprocess
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml

pytestmark = pytest.mark.book

ROOT = Path(__file__).resolve().parent.parent
HTML = ROOT / "_build" / "html"
LOCAL_HOSTS = {"127.0.0.1", "localhost"}

# Output lines that say WARNING but are not about the book: ipykernel 7 prints this on every
# kernel start, on the kernel's stderr, which the build inherits.
NOT_BOOK_WARNINGS = (re.compile(r"\[IPKernelApp\] WARNING \| Kernel is running over TCP"),)

# What a page or script loads: <script src>, <link href>, and ES module imports (static,
# side-effect and dynamic). Links a reader clicks (<a href>) are not loads and are not looked at.
LOADS = (
    re.compile(r"<script\b[^>]*?\bsrc\s*=\s*[\"']([^\"']+)[\"']", re.I),
    re.compile(r"<link\b[^>]*?\bhref\s*=\s*[\"']([^\"']+)[\"']", re.I),
    re.compile(r"\bimport\b[^;\"'()]{0,300}?\bfrom\s*[\"']([^\"']+)[\"']"),
    re.compile(r"\bimport\s*\(\s*[\"']([^\"']+)[\"']\s*\)"),
    re.compile(r"(?:^|[;\s])import\s*[\"']([^\"']+)[\"']", re.M),
)
MERMAID_IMPORT = re.compile(r"import\s+mermaid\s+from\s+[\"']([^\"']+)[\"']")
WIDGET_VIEW = 'type="application/vnd.jupyter.widget-view+json"'
SCRIPT_SRC = re.compile(r"<script\b[^>]*?\bsrc\s*=\s*[\"']([^\"'?]+)")


@pytest.fixture(scope="module")
def build(book_build) -> subprocess.CompletedProcess:
    # The one build of the session (tests/conftest.py), shared with tests/test_site.py.
    return book_build


@pytest.fixture(scope="module")
def site(build) -> Path:
    if build.returncode != 0:
        pytest.fail("the book did not build; see test_book_builds_without_warnings")
    return HTML


def _output(proc: subprocess.CompletedProcess) -> str:
    return proc.stdout + proc.stderr


def _toc_files() -> list[str]:
    """Every document named in _toc.yml: the root, and each file in parts, chapters, sections."""
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())
    files = [toc["root"]]

    def walk(entries):
        for entry in entries or []:
            if "file" in entry:
                files.append(entry["file"])
            walk(entry.get("sections"))
            walk(entry.get("chapters"))

    for part in toc.get("parts", []):
        walk(part.get("chapters"))
    walk(toc.get("chapters"))
    return files


def _built_text_files(site: Path):
    for path in sorted(site.rglob("*")):
        if path.suffix in {".html", ".js", ".mjs"} and path.is_file():
            yield path, path.read_text(encoding="utf-8", errors="replace")


def _pages(site: Path):
    for path, text in _built_text_files(site):
        if path.suffix == ".html" and "_static" not in path.relative_to(site).parts:
            yield path, text


def _is_third_party(url: str) -> bool:
    parts = urlsplit(url)
    if parts.scheme in ("http", "https") or url.startswith("//"):
        return parts.hostname not in LOCAL_HOSTS
    return False


def _resolve(page: Path, url: str) -> Path:
    return (page.parent / url.split("?")[0].split("#")[0]).resolve()


# -- the build --------------------------------------------------------------------------------
def test_book_builds_without_warnings(build):
    out = _output(build)
    warnings = [line for line in out.splitlines()
                if "WARNING" in line and not any(rx.search(line) for rx in NOT_BOOK_WARNINGS)]
    assert build.returncode == 0, f"jupyter-book exited {build.returncode}:\n{out[-6000:]}"
    assert not warnings, "warnings in the book build:\n" + "\n".join(warnings)


def test_every_page_of_the_toc_is_built(site):
    missing = [f for f in _toc_files() if not (site / f"{f}.html").is_file()]
    assert not missing, f"pages in _toc.yml with no HTML: {missing}"


# -- nothing from a third-party host ----------------------------------------------------------
def test_no_asset_is_loaded_from_a_third_party_host(site):
    offenders = []
    for path, text in _built_text_files(site):
        for rx in LOADS:
            for url in rx.findall(text):
                if _is_third_party(url):
                    offenders.append(f"{path.relative_to(site)}: {url}")
    assert not offenders, "loaded from outside the site:\n" + "\n".join(sorted(set(offenders)))


def test_mermaid_is_imported_from_the_site(site):
    pages = 0
    for page, text in _pages(site):
        if 'class="mermaid"' not in text:
            continue
        pages += 1
        urls = MERMAID_IMPORT.findall(text)
        assert urls, f"{page.relative_to(site)} has a diagram but never imports mermaid"
        for url in urls:
            assert not _is_third_party(url), f"{page.relative_to(site)} imports {url}"
            assert _resolve(page, url).is_file(), f"{page.relative_to(site)}: {url} not built"
    assert pages, "no page has a Mermaid diagram (book/planes.md has one)"


def test_widget_pages_load_the_local_widget_manager(site):
    widget_pages = 0
    for page, text in _pages(site):
        scripts = SCRIPT_SRC.findall(text)
        names = [s.rsplit("/", 1)[-1] for s in scripts]
        if WIDGET_VIEW not in text:
            # Loading 4 MB of widget manager on every page would mean the vendored assets
            # were put under a root _static/ folder, which Jupyter Book adds to every page.
            assert "embed-amd.js" not in names, f"{page.relative_to(site)} loads widgets needlessly"
            continue
        widget_pages += 1
        want = ["widget-setup.js", "require.js", "embed-amd.js"]
        assert [n for n in names if n in want] == want, (
            f"{page.relative_to(site)} must load {want} in that order; it loads {scripts}")
        for src in scripts:
            if src.rsplit("/", 1)[-1] in want:
                assert "_static/jupyter-widgets/" in src and not _is_third_party(src), src
                assert _resolve(page, src).is_file(), f"{page.relative_to(site)}: {src} not built"
    if not widget_pages:
        pytest.skip("no page of the book displays a widget yet")
