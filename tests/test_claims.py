"""toylib.claims: an estimate from a run too busy to time decides nothing."""
from __future__ import annotations

import pytest

from toylib import claims

CLAIM = claims.Claim("chXX_test.share", "share", "All answered", "share answered", 1.0,
                     tolerance=0.99, unit="")


def test_an_estimate_too_busy_to_time_is_widened_and_decides_nothing():
    e = claims.Estimate.proportion(360, 400)            # 90 %: the claim does not hold
    assert CLAIM.decide(e) == claims.FAILS
    busy = e.too_busy(0.0, 1.0)
    assert (busy.value, busy.low, busy.high, busy.n) == (e.value, 0.0, 1.0, 400)
    assert busy.k is None and "too busy" in busy.how
    finding = CLAIM.judge(busy)
    assert finding.verdict == claims.NOT_SHOWN and finding.needed is None


@pytest.mark.parametrize("low, high, param", [(0.95, 1.0, "low"), (0.0, 0.5, "high")])
def test_the_widened_interval_must_hold_the_value(low, high, param):
    with pytest.raises(ValueError, match=param):
        claims.Estimate.proportion(360, 400).too_busy(low, high)
