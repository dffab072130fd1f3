"""The chapter's knobs, and the seeded draws every run and replay shares (orders, payments).

One :class:`Knobs` drives both designs. Every field is validated when the knobs are built: a
bad value raises at once, naming the field and its allowed range (for a pair of fields, the
field that is wrong).
"""
from __future__ import annotations

import random
from dataclasses import dataclass, fields, replace

from toylib.core import validate as v
from toylib.core.clock import now

CHAPTER = "ch03_shared_db"
SERVICES = ("orders", "inventory", "notification", "billing", "analytics")
LABELS = {"orders": "Order Service", "inventory": "Inventory Service",
          "notification": "Notification Service", "billing": "Billing Service",
          "analytics": "Analytics Service"}
TOPIC = "orders"
PRICES = {"sku-0": 12.5, "sku-1": 30.0, "sku-2": 7.25, "sku-3": 99.0, "sku-4": 4.0}


@dataclass(frozen=True)
class Knobs:
    """The knobs of both designs, validated once; every error names the field.

    ``hold_ms``: how long a write transaction stays open. A local SQLite write takes
    microseconds, a production one milliseconds (several statements, round trips, the commit's
    fsync), and the time a transaction holds the lock is what contention is made of.
    """
    hold_ms: float = 0.0            # a write transaction stays open this long
    order_workers: int = 1          # requests the order service works on at once
    analysts: int = 1               # the analytics service's workers (report queries at once)
    history: int = 0                # past orders in the order table (what reports scan)
    customers: int = 2000
    skus: int = 3
    stock: int = 10_000             # initial units of every sku
    p_decline: float = 0.0          # payment declined (decided per order, seeded)
    p_lost_reply: float = 0.0       # charged, but the reply is lost (504)
    analytics_delay_ms: float = 0.0  # analytics consumer's work per event (its speed)
    relay_interval_ms: float = 5.0
    wal: bool = False
    busy_timeout: float = 5.0       # seconds a writer waits for SQLite's write lock
    seed: int = 0

    def __post_init__(self):
        v.number("hold_ms", self.hold_ms, low=0, high=1000)
        v.number("order_workers", self.order_workers, low=1, high=64, integer=True)
        v.number("analysts", self.analysts, low=1, high=16, integer=True)
        v.number("history", self.history, low=0, high=200_000, integer=True)
        v.number("customers", self.customers, low=1, high=1_000_000, integer=True)
        v.number("skus", self.skus, low=1, high=len(PRICES), integer=True)
        v.number("stock", self.stock, low=0, high=10**9, integer=True)
        v.probability("p_decline", self.p_decline)
        v.probability("p_lost_reply", self.p_lost_reply)
        if self.p_decline + self.p_lost_reply > 1:
            raise ValueError(f"p_lost_reply must be at most 1 - p_decline = "
                             f"{1 - self.p_decline:g} (p_decline + p_lost_reply <= 1); got "
                             f"p_decline={self.p_decline}, p_lost_reply={self.p_lost_reply}")
        v.number("analytics_delay_ms", self.analytics_delay_ms, low=0, high=1000)
        v.number("relay_interval_ms", self.relay_interval_ms, low=0.5, high=1000)
        if not isinstance(self.wal, bool):
            raise TypeError(f"wal must be True or False; got {self.wal!r}")
        v.number("busy_timeout", self.busy_timeout, low=0, high=60)
        v.number("seed", self.seed, low=-2**63, high=2**63 - 1, integer=True)

    @property
    def sku_names(self) -> list[str]:
        return list(PRICES)[:self.skus]

    def but(self, **changes) -> "Knobs":
        """These knobs with some fields changed (validated again; unknown names refused)."""
        known = {f.name for f in fields(self)}
        unknown = sorted(set(changes) - known)
        if unknown:
            raise TypeError(f"unknown knob(s) {', '.join(unknown)}; the knobs are "
                            f"{', '.join(sorted(known))}")
        return replace(self, **changes)


def knobs_or_default(knobs) -> Knobs:
    """``knobs`` itself, or the default knobs for None; anything else is refused."""
    if knobs is None:
        return Knobs()
    if not isinstance(knobs, Knobs):
        raise TypeError(f"knobs must be a {CHAPTER}.Knobs or None; got {knobs!r}")
    return knobs


def order_for(i: int, knobs: Knobs) -> dict:
    """The i-th order of an experiment: the same in both designs and in every replay."""
    v.number("i", i, low=0, high=10**9, integer=True)
    knobs = knobs_or_default(knobs)
    rng = random.Random(f"{knobs.seed}:order:{i}")
    customer = rng.randrange(knobs.customers)
    sku, qty = rng.choice(knobs.sku_names), rng.randint(1, 3)
    return {"order_id": f"order-{i}", "customer_id": customer,
            "email": f"customer{customer}@example.com", "sku": sku, "qty": qty,
            "total": round(qty * PRICES[sku], 2)}


def payment_outcome(order_id: str, knobs: Knobs) -> str:
    """"declined", "lost_reply" or "ok": one seeded draw per order, whatever the timing."""
    if not isinstance(order_id, str):
        raise TypeError(f"order_id must be a string; got {order_id!r}")
    knobs = knobs_or_default(knobs)
    u = random.Random(f"{knobs.seed}:{order_id}:payment").random()
    if u < knobs.p_decline:
        return "declined"
    return "lost_reply" if u < knobs.p_decline + knobs.p_lost_reply else "ok"


def order_event(kind: str, order: dict, status: str) -> dict:
    """The order service's public contract. Built from the order, not from its table's columns,
    so the team can change its schema freely as long as this stays the same."""
    return {"type": kind, "order_id": order["order_id"], "status": status,
            "customer_id": order.get("customer_id"), "email": order.get("email"),
            "total": order.get("total"), "committed_at": now()}


MAX_RUN_S = 600     # an experiment's planned measuring time, at most (a laptop, not a cluster)


def within_budget(runs: int, seconds: float, what: str) -> None:
    """Refuse a grid of runs whose planned measuring time exceeds :data:`MAX_RUN_S`."""
    if runs * seconds > MAX_RUN_S:
        raise ValueError(f"trials x runs x seconds must be at most {MAX_RUN_S} s for {what}; "
                         f"got {runs} runs x {seconds} s = {runs * seconds:g} s: lower trials "
                         f"or seconds")
