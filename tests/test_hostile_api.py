"""Property: every public entry point of core, data and resilience answers a wrong argument with
a clear error (a ValueError or TypeError naming the parameter), never a deep exception, a silent
result or a hang.

The cases and the classification live in ``tests/hostile_api.py`` (run it on its own for the
counts). Two tests here: the fixed matrix of wrong values (wrong types, NaN, infinities,
negatives, zero, huge values, unknown names) over every parameter, and hypothesis drawing
further wrong values per entry point. The claims and present layers are covered by the census
too; their outcomes are reported (and must never hang) but fixed by their owners.
"""
from __future__ import annotations

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from hostile_api import BAD, Opaque, counts, census, load_entries, run_case

ENTRIES = load_entries()
OWNED = [e for e in ENTRIES if e.owned]
OTHERS = [e for e in ENTRIES if not e.owned]


def test_the_census_covers_every_layer_it_promises():
    layers = {e.layer for e in ENTRIES}
    assert {"core", "data", "resilience", "claims", "present"} <= layers
    assert len(OWNED) >= 70, len(OWNED)


def _report(outcomes) -> str:
    return "\n".join(f"{o.outcome}: {o.entry}({o.param}={o.value}) {o.detail}"
                     for o in outcomes if o.outcome != "clear")


@pytest.mark.parametrize("layer", ["core", "data", "resilience"])
def test_every_wrong_value_gets_a_clear_error(layer):
    outcomes = census([e for e in OWNED if e.layer == layer])
    assert outcomes, layer
    bad = [o for o in outcomes if o.outcome != "clear"]
    assert not bad, f"{len(bad)} of {len(outcomes)} cases not clear:\n{_report(bad)}"


def test_claims_and_present_entry_points_never_hang():
    outcomes = census(OTHERS)
    assert not [o for o in outcomes if o.outcome == "hang"], _report(outcomes)


def test_claims_and_present_entry_points_give_clear_errors():
    outcomes = census(OTHERS)
    c = counts(outcomes)["total"]
    assert c["unclear"] == c["silent"] == 0, _report(outcomes)


WRONG = st.one_of(
    st.sampled_from(BAD),
    st.none(), st.booleans(), st.builds(Opaque),
    st.floats(allow_nan=True, allow_infinity=True),
    st.integers(min_value=-(10 ** 20), max_value=10 ** 20),
    st.integers(min_value=10 ** 6, max_value=10 ** 30),
    st.text(max_size=12), st.binary(max_size=4),
    st.lists(st.integers(min_value=-5, max_value=5), max_size=3),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
)


@pytest.mark.parametrize("entry", OWNED, ids=[e.label for e in OWNED])
@settings(max_examples=12, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.filter_too_much, HealthCheck.too_slow])
@given(data=st.data())
def test_drawn_wrong_values_get_a_clear_error(entry, data):
    param = data.draw(st.sampled_from(sorted(entry.params)), label="param")
    value = data.draw(WRONG, label="value")
    assume(not entry.params[param](value))
    outcome = run_case(entry, param, value)
    assert outcome.outcome == "clear", f"{outcome.outcome}: {entry.label}({param}={value!r}) " \
                                       f"{outcome.detail}"
