"""Each team's tables, the copies the consumers keep, the order team's migration, the report.

In the shared design all the teams' tables sit side by side in one file; per service each
team's tables are in its own file, plus (for billing, notification and analytics) a copy of
the few order fields it needs, filled from the order service's events.
"""
from __future__ import annotations

import random

from toylib.chapters.ch03_shared_db.knobs import PRICES

SCHEMA = {
    "orders": """
        CREATE TABLE orders (order_id TEXT PRIMARY KEY, customer_id INTEGER NOT NULL,
            customer_email TEXT NOT NULL, sku TEXT NOT NULL, qty INTEGER NOT NULL,
            total REAL NOT NULL, status TEXT NOT NULL, created_at REAL NOT NULL);""",
    "inventory": """
        CREATE TABLE stock (sku TEXT PRIMARY KEY, available INTEGER NOT NULL,
            reserved INTEGER NOT NULL);
        CREATE TABLE reservations (order_id TEXT PRIMARY KEY, sku TEXT NOT NULL,
            qty INTEGER NOT NULL, state TEXT NOT NULL);""",
    "notification": """
        CREATE TABLE notifications (key TEXT PRIMARY KEY, order_id TEXT NOT NULL,
            kind TEXT NOT NULL, recipient TEXT NOT NULL, body TEXT NOT NULL,
            sent_at REAL NOT NULL);
        CREATE TABLE preferences (customer_id INTEGER PRIMARY KEY, channel TEXT NOT NULL,
            updated_at REAL NOT NULL);""",
    "billing": """
        CREATE TABLE charges (charge_id INTEGER PRIMARY KEY, order_id TEXT NOT NULL,
            idempotency_key TEXT NOT NULL UNIQUE, amount REAL NOT NULL, state TEXT NOT NULL);
        CREATE TABLE invoices (order_id TEXT PRIMARY KEY, customer_id INTEGER NOT NULL,
            amount REAL NOT NULL);""",
    "analytics": """
        CREATE TABLE rollups (day INTEGER PRIMARY KEY, orders INTEGER NOT NULL,
            revenue REAL NOT NULL);""",
}

# Per service: the copy of the order data each consumer keeps, in its own file. Named
# ``orders`` on purpose: the services' queries are the same text in both designs.
COPIES = {
    "billing": "CREATE TABLE orders (order_id TEXT PRIMARY KEY, customer_id INTEGER NOT NULL, "
               "total REAL NOT NULL);",
    "notification": "CREATE TABLE orders (order_id TEXT PRIMARY KEY, customer_email TEXT NOT "
                    "NULL, total REAL NOT NULL);",
    "analytics": "CREATE TABLE orders (order_id TEXT PRIMARY KEY, customer_id INTEGER NOT NULL, "
                 "total REAL NOT NULL, status TEXT NOT NULL, committed_at REAL, "
                 "visible_at REAL);",
}

# The order team's migration: money as integer cents, in a column whose name says so.
MIGRATION = (
    "ALTER TABLE orders RENAME COLUMN total TO total_cents",
    "UPDATE orders SET total_cents = CAST(ROUND(total_cents * 100) AS INTEGER)",
)

# Analytics' heavy query: revenue of every pair of orders by the same customer (basket
# affinity). A self-join: its cost grows with the square of the orders per customer.
REPORT = ("SELECT a.customer_id, COUNT(*), SUM(a.total * b.total) FROM orders a "
          "JOIN orders b ON a.customer_id = b.customer_id "
          "GROUP BY a.customer_id ORDER BY 3 DESC LIMIT 10")


def history(knobs):
    """``knobs.history`` past orders, all confirmed: what the analytics report scans."""
    rng = random.Random(f"{knobs.seed}:history")
    for i in range(knobs.history):
        customer, sku = rng.randrange(knobs.customers), rng.choice(knobs.sku_names)
        yield (f"past-{i}", customer, f"customer{customer}@example.com", sku, 1,
               PRICES[sku], "confirmed", 0.0)
