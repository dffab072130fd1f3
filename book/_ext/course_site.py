"""The course's own Sphinx extension: what the book site needs beyond Jupyter Book's settings.

Loaded from ``_config.yml`` (``sphinx.local_extensions``). It does five small things:

* **One repository URL, or none.** ``repository.url`` in ``_config.yml`` is the one setting. It
  is left empty in the repository; the deploy workflow fills it from the forge's own variables
  (``COURSE_REPOSITORY_URL``, and ``COURSE_REPOSITORY_BRANCH``), and a local build reads it from
  the git remote ``origin``. Credentials in a remote URL are dropped. With no URL, or one on a
  host the theme cannot build launch links for, the repository and launch buttons are not shown
  at all (a button whose target is unknown is a dead link). Binder is offered for GitHub and
  GitLab, Colab for GitHub, JupyterHub only when ``COURSE_JUPYTERHUB_URL`` (or
  ``launch_buttons.jupyterhub_url``) names a hub.
* **The download is the executed notebook.** The theme's ``.ipynb`` download serves the page's
  source, which is stored without outputs; after the build, each notebook page's download is
  replaced by the notebook as executed for that page, outputs included.
* **Numbered figures with captions and alt text.** ``toylib.present.plots`` writes a figure's
  caption and description into its PNG (the standard ``Title`` and ``Description`` text
  chunks). Here each notebook image that carries them becomes a numbered figure with that
  caption, and its alt text says what the figure shows, not the file's name.
* **No duplicate inline script.** Every page carried sphinx-thebe's configuration script
  (``const THEBE_JS_URL = ...``) twice and threw "Identifier 'THEBE_JS_URL' has already been
  declared" on load. Identical inline scripts are kept once.
* **The site's stylesheet and the explorer loader** (``book/_static``): full tables, visible
  scrolling, readable Mermaid diagrams in both colour modes; ``course.js`` marks boxes that
  scroll sideways and draws the
  kernel-free explorers of ``toylib.present.explorer`` with the site's own copy of Vega.
"""
from __future__ import annotations

import os
import re
import struct
import subprocess
import zlib
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from docutils import nodes
from sphinx.application import Sphinx
from sphinx.util import logging

LOG = logging.getLogger(__name__)
HERE = Path(__file__).resolve().parent
STATIC = HERE.parent / "_static"
# The hosts sphinx-book-theme can build launch and source links for.
HOSTS = {"github.com": "github", "gitlab.com": "gitlab", "bitbucket.org": "bitbucket"}
BINDER_HOSTS = {"github", "gitlab"}
COLAB_HOSTS = {"github"}
SCP_REMOTE = re.compile(r"^(?:[\w.-]+@)?([\w.-]+):(?!//)(.+)$")   # git@host:owner/repo.git


# -- the repository URL -----------------------------------------------------------------------
def normalise_url(url: str) -> str:
    """An https URL of the repository, without credentials or ``.git``; "" if not one."""
    url = (url or "").strip()
    if not url:
        return ""
    scp = SCP_REMOTE.match(url)
    if scp and "://" not in url:
        url = f"https://{scp.group(1)}/{scp.group(2)}"
    parts = urlsplit(url)
    if parts.scheme not in ("https", "http", "ssh", "git") or not parts.hostname:
        return ""
    path = re.sub(r"\.git$", "", parts.path.rstrip("/"))
    if path.count("/") < 2:                       # needs /owner/repo
        return ""
    host = parts.hostname + (f":{parts.port}" if parts.port and parts.scheme != "ssh" else "")
    return urlunsplit(("https", host, path, "", ""))


def _git(root: Path, *args: str) -> str:
    """A git command's output in ``root``; "" when git or the repository is not there."""
    try:
        out = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True,
                             timeout=10)
    except (OSError, subprocess.SubprocessError):
        return ""
    return out.stdout.strip() if out.returncode == 0 else ""


def git_remote_url(root: Path) -> str:
    return _git(root, "remote", "get-url", "origin")


def git_branch(root: Path) -> str:
    branch = _git(root, "rev-parse", "--abbrev-ref", "HEAD")
    return "" if branch == "HEAD" else branch


def resolve_repository(configured: str, root: Path, environ=os.environ) -> str:
    """The repository URL: the environment's, else the configured one, else git's origin."""
    for candidate in (environ.get("COURSE_REPOSITORY_URL", ""), configured, git_remote_url(root)):
        url = normalise_url(candidate)
        if url:
            return url
    return ""


def provider_of(url: str) -> str:
    return HOSTS.get(urlsplit(url).hostname or "", "") if url else ""


def launch_settings(theme_options: dict, url: str, branch: str, environ=os.environ) -> dict:
    """``html_theme_options`` with only the buttons whose targets are known."""
    opts = dict(theme_options)
    provider = provider_of(url)
    launch = dict(opts.get("launch_buttons") or {})
    hub = (environ.get("COURSE_JUPYTERHUB_URL") or launch.get("jupyterhub_url") or "").strip()
    if not provider:
        url = ""
    launch["binderhub_url"] = launch.get("binderhub_url", "") if provider in BINDER_HOSTS else ""
    launch["colab_url"] = launch.get("colab_url", "") if provider in COLAB_HOSTS else ""
    launch["jupyterhub_url"] = hub if provider and hub else ""
    launch["thebe"] = False
    opts["launch_buttons"] = launch
    opts["repository_url"] = url
    opts["repository_branch"] = branch or "main"
    opts["use_repository_button"] = bool(url)
    opts["use_issues_button"] = bool(url) and bool(opts.get("use_issues_button"))
    opts["use_edit_page_button"] = bool(url) and bool(opts.get("use_edit_page_button"))
    if not url:
        opts.pop("repository_url", None)
    return opts


def configure(app: Sphinx, config) -> None:
    root = Path(app.confdir)
    theme = dict(config.html_theme_options or {})
    url = resolve_repository(theme.get("repository_url", ""), root)
    branch = (os.environ.get("COURSE_REPOSITORY_BRANCH") or theme.get("repository_branch")
              or git_branch(root) or "main")
    config.html_theme_options = launch_settings(theme, url, branch)
    shown = [k.removesuffix("_url") for k in ("binderhub_url", "colab_url", "jupyterhub_url")
             if config.html_theme_options["launch_buttons"].get(k)]
    LOG.info(f"course_site: repository {url or '(none: no repository or launch buttons)'}; "
             f"launch buttons: {', '.join(shown) or 'none'}")
    config.html_static_path = list(config.html_static_path or []) + [str(STATIC)]


# -- one copy of each inline script -----------------------------------------------------------
def dedupe_scripts(app: Sphinx, pagename, templatename, context, doctree) -> None:
    scripts = context.get("script_files")
    if not scripts:
        return
    seen, kept = set(), []
    for js in scripts:
        body = getattr(js, "attributes", {}).get("body") if not isinstance(js, str) else None
        key = ("body", body) if body else ("src", str(js))
        if body and key in seen:
            continue
        seen.add(key)
        kept.append(js)
    context["script_files"] = kept


# -- the executed notebook as the download ----------------------------------------------------
def _outputs(nb) -> int:
    return sum(len(c.get("outputs", [])) for c in nb.cells if c.cell_type == "code")


def executed_notebook(app: Sphinx, docname: str) -> str | None:
    """The notebook as executed for ``docname``, as JSON text (None if there is none).

    myst-nb writes the page's notebook to its output folder; when the outputs came from the
    execution cache, that copy lacks them, so they are merged in from the cache here.
    """
    import nbformat
    config = getattr(app.env, "mystnb_config", None)
    folder = Path(config.output_folder) if config and config.output_folder \
        else Path(app.outdir).parent / "jupyter_execute"
    path = folder / f"{docname}.ipynb"
    if not path.is_file():
        return None
    nb = nbformat.read(path, as_version=4)
    if not _outputs(nb) and config is not None and config.execution_cache_path:
        try:
            from jupyter_cache import get_cache
            _, nb = get_cache(config.execution_cache_path).merge_match_into_notebook(nb)
        except Exception as exc:  # no cache record: leave the download as the source
            LOG.info(f"course_site: no executed copy of {docname} in the cache ({exc})")
            return None
    return nbformat.writes(nb) if _outputs(nb) else None


def offer_executed_notebooks(app: Sphinx, exception) -> None:
    if exception is not None or app.builder.format != "html":
        return
    replaced = 0
    for docname in sorted(app.env.found_docs):
        # a notebook page's source, or the .ipynb the theme offers for a MyST-text notebook
        source = Path(app.outdir) / "_sources" / f"{docname}.ipynb"
        if not source.is_file():
            continue
        executed = executed_notebook(app, docname)
        if executed is not None:
            source.write_text(executed, encoding="utf-8")
            replaced += 1
    LOG.info(f"course_site: {replaced} notebook downloads are the executed notebooks")


# -- figures: caption and alt text from the PNG -----------------------------------------------
def png_text(path: Path) -> dict[str, str]:
    """The text chunks (tEXt, iTXt, zTXt) of a PNG file."""
    out: dict[str, str] = {}
    try:
        data = path.read_bytes()
    except OSError:
        return out
    if not data.startswith(b"\x89PNG\r\n\x1a\n"):
        return out
    pos = 8
    while pos + 8 <= len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        body = data[pos + 8:pos + 8 + length]
        pos += 12 + length
        try:
            if kind == b"tEXt":
                key, _, value = body.partition(b"\0")
                out[key.decode("latin-1")] = value.decode("latin-1")
            elif kind == b"zTXt":
                key, _, rest = body.partition(b"\0")
                out[key.decode("latin-1")] = zlib.decompress(rest[1:]).decode("latin-1")
            elif kind == b"iTXt":
                key, _, rest = body.partition(b"\0")
                compressed, rest = rest[0], rest[2:]
                _lang, _, rest = rest.partition(b"\0")
                _translated, _, text = rest.partition(b"\0")
                text = zlib.decompress(text) if compressed else text
                out[key.decode("latin-1")] = text.decode("utf-8")
            elif kind == b"IEND":
                break
        except (ValueError, zlib.error, IndexError, UnicodeDecodeError):
            continue
    return out


def _image_file(app: Sphinx, image, docname: str) -> Path:
    """The file of an image node, before or after Sphinx resolved its path to the source dir."""
    uri = image.get("candidates", {}).get("*") or image.get("uri", "")
    srcdir = Path(app.srcdir)
    tries = [srcdir / uri.lstrip("/")] if uri.startswith("/") else \
        [srcdir / uri, Path(app.env.relfn2path(uri, docname)[1])]
    return next((p for p in tries if p.is_file()), tries[0])


def caption_figures(app: Sphinx, doctree) -> None:
    docname = app.env.docname
    count = 0
    for image in list(doctree.findall(nodes.image)):
        uri = image.get("uri", "")
        if not uri.lower().endswith(".png") or isinstance(image.parent, nodes.figure):
            continue
        text = png_text(_image_file(app, image, docname))
        caption, alt = text.get("Title", "").strip(), text.get("Description", "").strip()
        if alt:
            image["alt"] = alt
        if not caption:
            continue
        count += 1
        figure = nodes.figure(classes=["course-figure"])
        figure["ids"] = [f"course-figure-{count}"]
        image.replace_self(figure)
        figure += image
        figure += nodes.caption(caption, caption)


def setup(app: Sphinx) -> dict:
    app.connect("config-inited", configure, priority=100)
    app.connect("doctree-read", caption_figures)
    app.connect("html-page-context", dedupe_scripts, priority=900)
    app.connect("build-finished", offer_executed_notebooks)
    app.add_css_file("course.css")
    app.add_js_file("course.js", defer="defer")
    # env_version: bump it when what the extension does to doctrees changes, so that a
    # rebuild re-reads every page instead of keeping doctrees made by the old code.
    return {"version": "2", "env_version": 2, "parallel_read_safe": True,
            "parallel_write_safe": True}
