"""scripts/build_book.py never publishes a failed run, and a published one has its status page.

The refusal is tested on a fake build folder (a page with a traceback, a failed-notebook
report, a non-zero exit); the status page and the verdict JSON on the session's real build.
"""
from __future__ import annotations

import importlib.util
import json
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
spec = importlib.util.spec_from_file_location("build_book", ROOT / "scripts" / "build_book.py")
build_book = importlib.util.module_from_spec(spec)
spec.loader.exec_module(build_book)


@pytest.fixture
def fake_html(tmp_path, monkeypatch):
    html = tmp_path / "html"
    html.mkdir()
    (html / "index.html").write_text("<p>fine</p>")
    monkeypatch.setattr(build_book, "HTML", html)
    return html


def ok(rc=0):
    return subprocess.CompletedProcess([], rc, "", "")


def test_a_clean_build_may_be_published(fake_html):
    assert build_book.failures(ok()) == []


def test_a_traceback_on_a_page_refuses_the_build(fake_html):
    (fake_html / "ch.html").write_text(
        '<div class="cell_output"><pre>Traceback (most recent call last):\n  File "x"</pre>')
    assert any("traceback is shown in ch.html" in f for f in build_book.failures(ok()))


def test_an_ipython_error_output_refuses_the_build(fake_html):
    (fake_html / "ch.html").write_text('<span class="ansi-red-fg">AssertionError</span>')
    assert build_book.failures(ok())


def test_a_failed_notebook_report_or_exit_code_refuses_the_build(fake_html):
    (fake_html / "reports").mkdir()
    (fake_html / "reports" / "ch07_evolution.err.log").write_text("AssertionError")
    found = build_book.failures(ok(1))
    assert any("exited with 1" in f for f in found)
    assert any("ch07_evolution" in f for f in found)


def test_prose_about_tracebacks_is_not_a_traceback(fake_html):
    (fake_html / "x.html").write_text("<p>A TimeoutError is raised when the deadline passes.</p>")
    assert build_book.failures(ok()) == []


def test_the_status_page_names_the_machine_and_packages(tmp_path, monkeypatch):
    monkeypatch.setattr(build_book, "STATUS_DIR", tmp_path)
    (tmp_path / "lag.jsonl").write_text(json.dumps(
        {"time": 0, "n": 50, "p50_ms": 0.2, "p99_ms": 1.5, "max_ms": 2.0, "busy": False}) + "\n")
    page = build_book.status_page(12.0)
    assert "Python" in page and "aiohttp" in page and "1.50" in page


@pytest.mark.book
def test_the_published_site_has_its_status_page_and_audit(built_site):
    page = (built_site / "status.html").read_text()
    assert "Execution status" in page and "ch02_chatty" in page
    audit = json.loads((built_site / "audit.json").read_text())
    assert {r["chapter"] for r in audit} >= {"ch01_monolith", "ch02_chatty", "ch03_shared_db",
                                            "ch04_sync", "ch05_timeouts", "ch06_breakers"}
    assert all(r["verdict"] in ("holds", "holds under stated assumptions", "does not hold here",
                                "not shown by this run") for r in audit)
    assert all(r["n"] >= 1 and r["low"] <= r["measured"] <= r["high"] for r in audit)
    assert not (built_site.parent / "html.failed").exists()
