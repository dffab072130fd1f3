"""Every chapter module follows the one contract of toylib/chapters/design.py.

CHAPTER, a frozen and validated Knobs, DESIGNS with "before" and "after" (Design subclasses
that start and stop with ``async with`` and draw themselves), design() refusing unknown names,
CLAIMS declared once with ids under the chapter's name, findings(), AUDIT_KNOBS and audit(),
and sweep() for the static explorer.
"""
from __future__ import annotations

import dataclasses
import inspect

import pytest

from toylib.chapters import ch07_evolution
from toylib.chapters.design import Design
from toylib.claims import Claim
from toylib.present.diagrams import Mermaid
from toylib.testing import assert_no_tasks_left

MODULES = list(ch07_evolution.MODULES.values())
IDS = [m.CHAPTER for m in MODULES]


def test_six_chapters_in_order():
    assert IDS == ["ch01_monolith", "ch02_chatty", "ch03_shared_db", "ch04_sync",
                   "ch05_timeouts", "ch06_breakers"]


@pytest.mark.parametrize("m", MODULES, ids=IDS)
def test_module_has_the_contract_names(m):
    assert m.__name__.endswith(m.CHAPTER)
    for name in ("Knobs", "DESIGNS", "design", "CLAIMS", "findings", "AUDIT_KNOBS", "audit",
                 "sweep"):
        assert hasattr(m, name), f"{m.CHAPTER} has no {name}"
    assert dataclasses.is_dataclass(m.Knobs) and m.Knobs.__dataclass_params__.frozen
    assert isinstance(m.AUDIT_KNOBS, m.Knobs)
    assert {"before", "after"} <= set(m.DESIGNS)
    assert all(issubclass(d, Design) for d in m.DESIGNS.values())
    assert inspect.iscoroutinefunction(m.audit) and inspect.iscoroutinefunction(m.sweep)


@pytest.mark.parametrize("m", MODULES, ids=IDS)
def test_claims_are_declared_once_under_the_chapter_name(m):
    assert m.CLAIMS and all(isinstance(c, Claim) for c in m.CLAIMS)
    ids = [c.id for c in m.CLAIMS]
    assert len(ids) == len(set(ids))
    assert all(i.startswith(m.CHAPTER + ".") for i in ids)


@pytest.mark.parametrize("m", MODULES, ids=IDS)
def test_design_refuses_an_unknown_name(m):
    with pytest.raises(ValueError, match="name"):
        m.design("sideways")


@pytest.mark.parametrize("m", MODULES, ids=IDS)
async def test_each_design_starts_stops_and_draws_itself(m, leakcheck):
    for name in m.DESIGNS:
        d = m.design(name)
        assert d.chapter == m.CHAPTER and not d.running
        assert isinstance(d.diagram(), Mermaid)
        async with d:
            assert d.running
        assert not d.running
    await assert_no_tasks_left()
