"""The seed's claims beside what this machine measured, with a verdict computed, not typed.

A claim of an improvement factor *holds* when the measured factor reaches ``tolerance`` of the
claimed one; it *holds under stated assumptions* when it reaches it only with the assumptions
the chapter names (the caller passes ``assumed`` to say so); otherwise it *does not hold here*.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import pandas as pd

from . import _validate as v

HOLDS, HOLDS_IF, FAILS = "holds", "holds under stated assumptions", "does not hold here"


@dataclass
class Claim:
    aspect: str
    seed_says: str
    measured: str
    verdict: str
    assumptions: str = ""


def verdict(measured: float, claimed: float, *, tolerance: float = 0.8,
            assumed: bool = False, higher_is_better: bool = True) -> str:
    """Compare a measured figure with the claimed one (both as 'bigger is better' factors)."""
    v.number("measured", measured)
    v.positive("claimed", claimed)
    v.number("tolerance", tolerance, low=0, high=1, low_open=True)
    ok = measured >= tolerance * claimed if higher_is_better else measured <= claimed / tolerance
    if ok:
        return HOLDS_IF if assumed else HOLDS
    return FAILS


def table(claims: list[Claim]) -> pd.DataFrame:
    if not claims:
        raise ValueError("claims must not be empty")
    df = pd.DataFrame([asdict(c) for c in claims])
    df.columns = ["aspect", "the seed says", "measured here", "verdict", "assumptions"]
    return df.set_index("aspect")
