"""The CI workflow (.github/workflows/ci.yml) is valid YAML and runs the README's commands.

No network and no forge needed: the file is parsed with ``yaml.safe_load`` and its structure
checked against what GitHub Actions requires of a workflow (triggers, jobs with ``runs-on``
and ``steps``, each step either ``uses`` or ``run``), then against what this course needs of it:
``make test`` on every push and pull request, after Chromium is there for the browser tests,
with Python 3.11 and Node 20; ``make book`` on the main branch, with ``_build/html`` uploaded
and deployed to GitHub Pages. The make targets it names must exist in the Makefile.
"""
from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
WORKFLOW = ROOT / ".github" / "workflows" / "ci.yml"
README_COMMANDS = ("make test", "make book")


@pytest.fixture(scope="module")
def workflow() -> dict:
    assert WORKFLOW.is_file(), f"{WORKFLOW.relative_to(ROOT)} is missing"
    data = yaml.safe_load(WORKFLOW.read_text(encoding="utf-8"))
    assert isinstance(data, dict), "the workflow is not a YAML mapping"
    return data


def _triggers(wf: dict) -> dict:
    # YAML 1.1 (PyYAML) reads the bare key `on` as the boolean True.
    on = wf.get("on", wf.get(True))
    if isinstance(on, str):
        return {on: None}
    if isinstance(on, list):
        return {name: None for name in on}
    assert isinstance(on, dict), f"no usable `on:` triggers: {on!r}"
    return on


def _runs(job: dict) -> list[str]:
    return [step["run"] for step in job.get("steps", []) if "run" in step]


def _uses(job: dict) -> list[str]:
    return [step["uses"] for step in job.get("steps", []) if "uses" in step]


def _job_running(wf: dict, command: str) -> tuple[str, dict]:
    for name, job in wf["jobs"].items():
        if any(re.search(rf"(^|[;&|\s]){re.escape(command)}\b", run, re.M)
               for run in _runs(job)):
            return name, job
    pytest.fail(f"no job runs `{command}`")


def _with(job: dict, action: str) -> dict:
    for step in job.get("steps", []):
        if step.get("uses", "").split("@")[0] == action:
            return step.get("with") or {}
    pytest.fail(f"the job does not use {action}")


# -- a workflow GitHub Actions accepts -------------------------------------------------------
def test_the_workflow_is_well_formed(workflow):
    assert workflow.get("name"), "the workflow has no name"
    assert _triggers(workflow), "the workflow has no trigger"
    jobs = workflow.get("jobs")
    assert isinstance(jobs, dict) and jobs, "the workflow has no jobs"
    for name, job in jobs.items():
        assert re.fullmatch(r"[A-Za-z_][A-Za-z0-9_-]*", name), f"invalid job id {name!r}"
        assert job.get("runs-on"), f"job {name} has no runs-on"
        steps = job.get("steps")
        assert isinstance(steps, list) and steps, f"job {name} has no steps"
        for i, step in enumerate(steps):
            assert isinstance(step, dict), f"job {name}, step {i}: not a mapping"
            assert ("uses" in step) != ("run" in step), (
                f"job {name}, step {i}: needs exactly one of `uses` and `run`: {step}")
            if "uses" in step:
                assert re.fullmatch(r"[\w.-]+/[\w./-]+@[\w.-]+", step["uses"]), (
                    f"job {name}, step {i}: `uses` must name owner/repo@version: {step['uses']}")
        for need in [job["needs"]] if isinstance(job.get("needs"), str) else job.get("needs", []):
            assert need in jobs, f"job {name} needs an unknown job {need!r}"


def test_tests_run_on_every_push_and_pull_request(workflow):
    triggers = _triggers(workflow)
    assert "push" in triggers and "pull_request" in triggers, f"triggers: {list(triggers)}"
    for event in ("push", "pull_request"):   # no branch filter: every change is tested
        spec = triggers[event] or {}
        assert not spec.get("branches") and not spec.get("paths"), f"{event} is filtered: {spec}"
    name, job = _job_running(workflow, "make test")
    assert "if" not in job, f"job {name} (make test) is conditional: {job['if']}"
    assert "ubuntu" in str(job["runs-on"])


def test_the_test_job_sets_up_python_node_and_chromium_first(workflow):
    _, job = _job_running(workflow, "make test")
    python = str(_with(job, "actions/setup-python").get("python-version"))
    assert python == "3.11", f"python-version must be the string \"3.11\", not {python!r}"
    node = str(_with(job, "actions/setup-node").get("node-version"))
    assert node.split(".")[0] == "20", f"node-version {node!r}"
    runs = _runs(job)
    chromium = next((i for i, r in enumerate(runs) if "apt-get install" in r
                     and re.search(r"\bchromium(-browser)?\b", r)), None)
    make_test = next(i for i, r in enumerate(runs) if "make test" in r)
    assert chromium is not None, "the test job never installs chromium"
    assert chromium < make_test, "chromium must be installed before `make test`"


def test_the_book_is_built_and_published_from_main(workflow):
    name, job = _job_running(workflow, "make book")
    condition = str(job.get("if", ""))
    assert "refs/heads/main" in condition, f"job {name} must run on main only: {condition!r}"
    uses = [u.split("@")[0] for u in _uses(job)]
    assert "actions/upload-pages-artifact" in uses and "actions/deploy-pages" in uses, uses
    assert uses.index("actions/upload-pages-artifact") < uses.index("actions/deploy-pages")
    assert str(_with(job, "actions/upload-pages-artifact").get("path", "")).rstrip("/") \
        == "_build/html"
    perms = job.get("permissions") or workflow.get("permissions") or {}
    assert perms.get("pages") == "write" and perms.get("id-token") == "write", perms
    assert (job.get("environment") or {}).get("name") == "github-pages"


def test_the_workflow_uses_the_readme_make_targets(workflow):
    makefile = (ROOT / "Makefile").read_text(encoding="utf-8")
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    for command in README_COMMANDS:
        target = command.split()[1]
        assert re.search(rf"^{target}\s*:", makefile, re.M), f"Makefile has no `{target}` target"
        assert re.search(rf"^\.PHONY:.*\b{target}\b", makefile, re.M), (
            f"`{target}` is not .PHONY (book/ is a folder: make would call it up to date)")
        assert command in readme, f"the README does not give `{command}`"
    every_run = "\n".join(r for job in workflow["jobs"].values() for r in _runs(job))
    for target in re.findall(r"\bmake\s+([\w-]+)", every_run):
        assert re.search(rf"^{target}\s*:", makefile, re.M), f"`make {target}`: no such target"


def test_the_workflow_names_no_machine_path(workflow):
    text = WORKFLOW.read_text(encoding="utf-8")
    assert not re.search(r"(?<![\w.])/(home|root|work|tmp|Users)/", text), \
        "the workflow names a path of one machine"
