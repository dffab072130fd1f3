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
