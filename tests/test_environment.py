"""The pip path and the conda/Binder path install the same pinned packages."""
import re
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent


def pins(lines):
    out = {}
    for line in lines:
        line = line.split("#")[0].strip()
        if not line or line.startswith("-"):
            continue
        m = re.fullmatch(r"([A-Za-z0-9_.\-\[\]]+)==([^\s;]+)", line)
        assert m, f"not an exact pin: {line!r}"
        out[m.group(1).lower().replace("_", "-")] = m.group(2)
    return out


def test_environment_yml_lists_exactly_the_requirements():
    req = pins((ROOT / "requirements.txt").read_text().splitlines())
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip_section = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    assert pins(pip_section) == req


def test_constraints_agree_with_requirements():
    req = pins((ROOT / "requirements.txt").read_text().splitlines())
    con = pins(l for l in (ROOT / "constraints.txt").read_text().splitlines()
               if not l.startswith("#"))
    for name, version in req.items():
        assert con.get(name) == version, f"{name}: requirements {version}, constraints {con.get(name)}"


def test_binder_installs_toylib():
    post = (ROOT / "postBuild").read_text()
    assert "pip install" in post and "-e ." in post
    assert (ROOT / "postBuild").stat().st_mode & 0o111, "postBuild must be executable"


# -- the reader's environment (binder/): lean, complete, in step ------------------------------
READER = ROOT / "binder" / "environment.yml"
# The build, test and browser toolchain: never in the reader's environment.
DEVELOPER_ONLY = {"jupyter-book", "pytest", "pytest-timeout", "pytest-asyncio", "nbval",
                  "playwright", "sphinx", "sphinxcontrib-mermaid", "sphinx-exercise",
                  "myst-nb", "pybreaker", "sphinx-book-theme", "pytest-xdist", "execnet"}


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def reader_pins() -> dict:
    env = yaml.safe_load(READER.read_text())
    pip_section = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    assert "python=3.11" in env["dependencies"], "the reader's Python is pinned too"
    return {_norm(k): v for k, v in pins(pip_section).items()}


def runtime_requirements() -> set[str]:
    """What the course needs at run time: pyproject's dependencies and JupyterLab."""
    import tomllib
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    names = {_norm(re.split(r"[<>=!~;\[ ]", d, maxsplit=1)[0]) for d in project["dependencies"]}
    return names | {"jupyterlab"}


def test_the_reader_environment_has_the_runtime_and_nothing_of_the_toolchain():
    reader = reader_pins()
    missing = runtime_requirements() - set(reader)
    assert not missing, f"runtime packages missing from binder/environment.yml: {missing}"
    extra = DEVELOPER_ONLY & set(reader)
    assert not extra, f"developer-only packages in the reader's environment: {extra}"


def test_the_reader_environment_pins_what_the_developers_pin():
    con = {_norm(k): v for k, v in pins(l for l in (ROOT / "constraints.txt").read_text()
                                          .splitlines() if not l.startswith("#")).items()}
    differ = {n: (v, con.get(n)) for n, v in reader_pins().items() if con.get(n) != v}
    assert not differ, f"binder/environment.yml vs constraints.txt (reader, developer): {differ}"


def test_every_indirect_dependency_of_the_reader_environment_is_pinned():
    """Each pinned package's own requirements (for Linux, Python 3.11) are pinned as well."""
    from importlib import metadata

    from packaging.markers import default_environment
    from packaging.requirements import Requirement

    reader = reader_pins()
    env = dict(default_environment(), sys_platform="linux", platform_system="Linux",
               python_version="3.11", extra="")
    unpinned = set()
    for name in reader:
        try:
            requires = metadata.distribution(name).requires or []
        except metadata.PackageNotFoundError:
            continue        # checked by the version test against constraints.txt
        for req in map(Requirement, requires):
            if req.marker is not None and not req.marker.evaluate(env):
                continue
            if _norm(req.name) not in reader:
                unpinned.add(f"{req.name} (needed by {name})")
    assert not unpinned, f"indirect dependencies not pinned in binder/: {sorted(unpinned)}"


def test_binder_installs_toylib_from_the_reader_folder():
    post = ROOT / "binder" / "postBuild"
    assert "pip install" in post.read_text() and "--no-deps -e ." in post.read_text()
    assert post.stat().st_mode & 0o111, "binder/postBuild must be executable"
