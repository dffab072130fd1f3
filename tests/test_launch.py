"""The book's repository URL and launch buttons (book/_ext/course_site.py): known, or absent."""
from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
_spec = importlib.util.spec_from_file_location("course_site", ROOT / "book" / "_ext" /
                                               "course_site.py")
course_site = sys.modules.setdefault("course_site", importlib.util.module_from_spec(_spec))
if not hasattr(course_site, "setup"):
    _spec.loader.exec_module(course_site)

LAUNCH = {"binderhub_url": "https://mybinder.org", "colab_url": "https://colab.research.google.com",
          "jupyterhub_url": "", "notebook_interface": "jupyterlab"}


@pytest.mark.parametrize("remote, url", [
    ("git@github.com:someone/course.git", "https://github.com/someone/course"),
    ("https://github.com/someone/course.git", "https://github.com/someone/course"),
    ("https://user:secret@gitlab.com/group/course/", "https://gitlab.com/group/course"),
    ("ssh://git@github.com/someone/course.git", "https://github.com/someone/course"),
    ("", ""), ("not a url", ""), ("https://github.com/only-owner", ""),
    ("file:///srv/git/course", ""),
])
def test_remote_urls_are_normalised_and_credentials_dropped(remote, url):
    assert course_site.normalise_url(remote) == url


def test_no_repository_means_no_repository_or_launch_buttons():
    opts = course_site.launch_settings({"launch_buttons": LAUNCH, "use_issues_button": True},
                                       "", "main", environ={})
    assert "repository_url" not in opts
    assert not opts["use_repository_button"] and not opts["use_issues_button"]
    assert not any(opts["launch_buttons"][k] for k in ("binderhub_url", "colab_url",
                                                       "jupyterhub_url", "thebe"))


def test_github_gets_binder_and_colab_and_a_hub_only_when_named():
    opts = course_site.launch_settings({"launch_buttons": LAUNCH},
                                       "https://github.com/someone/course", "main", environ={})
    lb = opts["launch_buttons"]
    assert opts["repository_url"] == "https://github.com/someone/course"
    assert opts["use_repository_button"] and opts["repository_branch"] == "main"
    assert lb["binderhub_url"] and lb["colab_url"] and not lb["jupyterhub_url"]
    hub = course_site.launch_settings({"launch_buttons": LAUNCH},
                                      "https://github.com/someone/course", "main",
                                      environ={"COURSE_JUPYTERHUB_URL": "https://hub.example"})
    assert hub["launch_buttons"]["jupyterhub_url"] == "https://hub.example"


def test_gitlab_gets_binder_but_not_colab_and_other_hosts_get_nothing():
    lab = course_site.launch_settings({"launch_buttons": LAUNCH},
                                      "https://gitlab.com/group/course", "main", environ={})
    assert lab["launch_buttons"]["binderhub_url"] and not lab["launch_buttons"]["colab_url"]
    other = course_site.launch_settings({"launch_buttons": LAUNCH},
                                        "https://git.example.org/group/course", "main",
                                        environ={})
    assert not other["use_repository_button"] and "repository_url" not in other
    assert not other["launch_buttons"]["binderhub_url"]


def test_the_environment_wins_over_the_setting_and_the_remote(tmp_path):
    env = {"COURSE_REPOSITORY_URL": "https://github.com/from/workflow"}
    assert course_site.resolve_repository("https://github.com/from/config", tmp_path,
                                          environ=env) == "https://github.com/from/workflow"
    assert course_site.resolve_repository("https://github.com/from/config", tmp_path,
                                          environ={}) == "https://github.com/from/config"
    # tmp_path is no git repository: no remote, so no URL
    assert course_site.resolve_repository("", tmp_path, environ={}) == ""


def test_png_text_reads_the_figure_caption(tmp_path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from toylib.present import plots
    fig, ax = plt.subplots()
    ax.plot([1, 2])
    plots.describe(fig, caption="A caption — with a dash", alt="A line rising from 1 to 2.")
    path = tmp_path / "f.png"
    path.write_bytes(plots.png(fig))
    plt.close(fig)
    assert course_site.png_text(path) == {"Title": "A caption — with a dash",
                                          "Description": "A line rising from 1 to 2."}


# -- the notebooks' first cell: toylib where it is not installed --------------------------------
FIRST_CELL = (ROOT / "scripts" / "first_cell.py").read_text()


def _run_first_cell(cwd, installed: bool):
    """Run the first cell's code with find_spec and subprocess.run replaced; return pip's args."""
    import importlib.util
    import os
    import subprocess
    calls = []
    real_find, real_run, real_cwd = importlib.util.find_spec, subprocess.run, os.getcwd()
    importlib.util.find_spec = lambda name, *a: (real_find(name, *a) if installed or
                                                 name != "toylib" else None)
    subprocess.run = lambda args, **kw: calls.append(args)
    try:
        os.chdir(cwd)
        exec(compile(FIRST_CELL, "first_cell", "exec"), {})
    finally:
        importlib.util.find_spec, subprocess.run = real_find, real_run
        os.chdir(real_cwd)
    return calls


def test_the_first_cell_does_nothing_where_toylib_is_installed():
    assert _run_first_cell(ROOT, installed=True) == []


def test_the_first_cell_installs_the_clone_it_runs_in():
    calls = _run_first_cell(ROOT / "chapters", installed=False)
    assert len(calls) == 1 and calls[0][-1] == str(ROOT)
    assert calls[0][1:4] == ["-m", "pip", "install"]


def test_the_first_cell_says_what_to_do_with_no_clone_and_no_url(tmp_path):
    with pytest.raises(RuntimeError, match="toylib is not installed"):
        _run_first_cell(tmp_path, installed=False)


def test_the_first_cell_needs_nothing_but_the_standard_library():
    import ast
    imported = {a.name.split(".")[0] for node in ast.walk(ast.parse(FIRST_CELL))
                if isinstance(node, (ast.Import, ast.ImportFrom))
                for a in getattr(node, "names", [])}
    assert imported <= {"importlib", "pathlib", "subprocess", "sys"}, imported


def test_notebooks_that_carry_the_first_cell_carry_it_exactly():
    """Only the repository URL may differ (it is filled in once the course has a home)."""
    import nbformat
    url = re.compile(r'COURSE_REPOSITORY = "[^"]*"')

    def norm(text: str) -> str:
        return url.sub('COURSE_REPOSITORY = ""', text.strip())

    differ = []
    for nb_path in sorted([*ROOT.glob("chapters/*.ipynb"), *ROOT.glob("labs/*.ipynb")]):
        cells = [c for c in nbformat.read(nb_path, as_version=4).cells if c.cell_type == "code"]
        if cells and 'find_spec("toylib")' in cells[0].source \
                and norm(cells[0].source) != norm(FIRST_CELL):
            differ.append(nb_path.name)
    assert not differ, f"first cells that differ from scripts/first_cell.py: {differ}"
