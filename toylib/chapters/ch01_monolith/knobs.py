"""Chapter 1's knobs, its data and schema, and the customer team's migrations: what both
designs share before they differ."""
from __future__ import annotations

from dataclasses import dataclass

from toylib.core import validate as v

CHAPTER = "ch01_monolith"
DEPENDENCIES = ("customer", "pricing", "inventory", "payment")   # the order service's, in order
SERVICES = ("order",) + DEPENDENCIES
TIER_DISCOUNT = {"standard": 0.0, "silver": 0.05, "gold": 0.10}
CUSTOMER_COLUMNS = ("id", "name", "email", "tier")
STOCK = 1_000_000                                               # per sku: never the bottleneck

TABLES = {
    "customers": "CREATE TABLE customers (id INTEGER PRIMARY KEY, name TEXT NOT NULL, "
                 "email TEXT NOT NULL, tier TEXT NOT NULL, "
                 "orders_placed INTEGER NOT NULL DEFAULT 0);",
    "prices": "CREATE TABLE prices (sku TEXT PRIMARY KEY, price REAL NOT NULL, "
              "sold INTEGER NOT NULL DEFAULT 0);",
    "stock": "CREATE TABLE stock (sku TEXT PRIMARY KEY, available INTEGER NOT NULL);",
    "payments": "CREATE TABLE payments (id INTEGER PRIMARY KEY, order_ref TEXT NOT NULL, "
                "customer_id INTEGER NOT NULL, amount REAL NOT NULL, receipt_to TEXT);",
    "orders": "CREATE TABLE orders (id INTEGER PRIMARY KEY, customer_id INTEGER NOT NULL, "
              "sku TEXT NOT NULL, qty INTEGER NOT NULL, total REAL, status TEXT NOT NULL, "
              "event_id TEXT, created_at REAL NOT NULL);",
    "customer_view": "CREATE TABLE customer_view (id INTEGER PRIMARY KEY, name TEXT, "
                     "email TEXT, tier TEXT);",
    "price_view": "CREATE TABLE price_view (sku TEXT PRIMARY KEY, price REAL);",
}
# Before: one file holds every team's tables. After: each service's file holds its own.
SHARED_TABLES = ("customers", "prices", "stock", "payments", "orders")
OWNS = {"order": ("orders", "customer_view", "price_view"), "customer": ("customers",),
        "pricing": ("prices",), "inventory": ("stock",), "payment": ("payments",)}


MAX_P = 0.5                  # above it a consumer retries most events several times over
MAX_ORDERS = 5_000           # per run of an experiment: minutes at most, on a laptop


@dataclass(frozen=True)
class Knobs:
    """The chapter's knobs, validated once (a bad value raises, naming the field and range)."""
    latency_ms: float = 50.0     # each service's own work, per request or per event
    p: float = 0.0               # probability that one piece of a service's work fails
    customers: int = 20
    skus: int = 5
    partitions: int = 4          # of each topic (after)
    retry_delay_s: float = 0.02  # a consumer's pause before retrying an event that failed
    seed: int = 0

    def __post_init__(self):
        v.number("latency_ms", self.latency_ms, low=0, high=2000)
        v.number("p", self.p, low=0, high=MAX_P)
        v.number("customers", self.customers, low=1, high=10_000, integer=True)
        v.number("skus", self.skus, low=1, high=1000, integer=True)
        v.number("partitions", self.partitions, low=1, high=64, integer=True)
        v.number("retry_delay_s", self.retry_delay_s, low=0, high=5)
        v.number("seed", self.seed, low=0, high=2**32 - 1, integer=True)


def as_knobs(knobs, param: str = "knobs") -> Knobs:
    """``knobs`` itself, or the defaults for None; anything else is refused."""
    if knobs is None:
        return Knobs()
    if not isinstance(knobs, Knobs):
        raise TypeError(f"{param} must be a {CHAPTER}.Knobs (or None for the defaults); "
                        f"got {knobs!r}")
    return knobs


@dataclass(frozen=True)
class Migration:
    """One team renames a column of its table, and ships its own code with the change."""
    column: str
    new: str
    table: str = "customers"
    owner: str = "customer"

    def __post_init__(self):
        v.one_of("column", self.column, CUSTOMER_COLUMNS)
        v.name("new", self.new)
        if self.new in CUSTOMER_COLUMNS + ("orders_placed",):
            raise ValueError(f"new must be a column name not already in {self.table}; "
                             f"got {self.new!r}")
        v.one_of("table", self.table, ("customers",))
        v.one_of("owner", self.owner, ("customer",))

    @property
    def sql(self) -> str:
        return f"ALTER TABLE {self.table} RENAME COLUMN {self.column} TO {self.new}"

    def __str__(self) -> str:
        return f"{self.table}.{self.column} -> {self.new}"


MIGRATIONS = (Migration("email", "contact_email"), Migration("tier", "loyalty_tier"),
              Migration("id", "customer_id"), Migration("name", "full_name"))


# -- the data, identical in both designs ----------------------------------------------------------
def customer_rows(k: Knobs) -> list[tuple]:
    k = as_knobs(k, "k")
    tiers = list(TIER_DISCOUNT)
    return [(c, f"customer {c}", f"c{c}@example.com", tiers[c % len(tiers)])
            for c in range(1, k.customers + 1)]


def price_rows(k: Knobs) -> list[tuple]:
    k = as_knobs(k, "k")
    return [(f"sku-{j}", 10.0 + 5 * j) for j in range(k.skus)]


def order_for(i: int, k: Knobs) -> dict:
    """Request ``i``'s order: the same customer, sku and quantity in both designs."""
    v.number("i", i, low=0, high=10**9, integer=True)
    k = as_knobs(k, "k")
    return {"customer_id": 1 + (7 * i) % k.customers, "sku": f"sku-{i % k.skus}",
            "qty": 1 + i % 3}


def price_total(price: float, qty: int, tier: str) -> float:
    v.number("price", price, low=0, high=1e9)
    v.number("qty", qty, low=1, high=10**6, integer=True)
    v.one_of("tier", tier, TIER_DISCOUNT)
    return round(price * qty * (1 - TIER_DISCOUNT[tier]), 2)


def customer_sql(columns: dict) -> dict:
    """The customer team's statements, written against its *current* column names.

    The team that migrates its table ships new code with the migration: here, a new column
    map. Every other team's SQL is fixed text, written when that team last deployed. The
    aliases keep what the team publishes (its API answers and its events) unchanged.
    """
    if not isinstance(columns, dict) or set(columns) != set(CUSTOMER_COLUMNS):
        raise ValueError(f"columns must map each of {list(CUSTOMER_COLUMNS)} to its current "
                         f"name; got {columns!r}")
    for col, name in columns.items():
        v.name(f"columns[{col!r}]", name)
    c = columns
    return {
        "get": f"SELECT {c['id']} AS id, {c['name']} AS name, {c['email']} AS email, "
               f"{c['tier']} AS tier FROM customers WHERE {c['id']} = ?",
        "count_order": f"UPDATE customers SET orders_placed = orders_placed + 1 "
                       f"WHERE {c['id']} = ?",
        "set_tier": f"UPDATE customers SET {c['tier']} = ? WHERE {c['id']} = ?",
    }
