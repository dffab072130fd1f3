"""Chapter 1, Distributed monolith: five services that cannot live apart, and their separation.

* **Before** (:class:`DistributedMonolith`): the order service calls customer, pricing,
  inventory and payment one after another, and all five read and write **one** SQLite file,
  each through its own connection, as five processes would. Pricing and payment also read the
  customer team's table directly, because it is right there.
* **After** (:class:`OwnedData`): each service owns its own SQLite file. The order service
  decides with local copies of the customer and price data (fed by the ``customers`` and
  ``prices`` topics), writes the order and an ``OrderPlaced`` event in one local transaction
  (the transactional outbox) and answers at once. Inventory, payment, customer and pricing
  each read the ``orders`` topic in their own consumer group, through an idempotent consumer.

Every service's own work costs ``latency_ms`` in both designs (per request before; per request
for the order service and per event for the others after) and fails with probability ``p``.
The package follows the chapter contract of :mod:`toylib.chapters.design`: :class:`Knobs`, the
designs in ``DESIGNS`` (built with :func:`design`, run with ``async with``), probes that take a
running design first (:func:`order_latencies`, :func:`take_orders`, :func:`migration_probe`,
:func:`outage_probe`), the chapter's experiments, which take knobs and build and release both
designs themselves (:func:`latency`, :func:`availability`, :func:`degradation`,
:func:`blast_radius`, :func:`outage`), the source article's claims declared once
(:data:`CLAIMS`), judged by :func:`findings`, and :func:`audit`, a small run of everything
behind them. :func:`sweep` runs the outage over a small grid of knobs for the static site.

Its modules: :mod:`.knobs` (knobs, data, schema, migrations), :mod:`.designs` (the services, the
consumers and the two designs), :mod:`.experiments` (probes, experiments, the figure, the
sweep) and :mod:`.verdicts` (the claims, the findings and the audit). Import the chapter as one
module: ``from toylib.chapters import ch01_monolith as monolith``.
"""
from toylib.chapters.ch01_monolith.knobs import (  # noqa: F401
    CHAPTER, CUSTOMER_COLUMNS, DEPENDENCIES, MAX_ORDERS, MAX_P, MIGRATIONS, OWNS, SERVICES,
    SHARED_TABLES, STOCK, TABLES, TIER_DISCOUNT, Knobs, Migration, as_knobs, customer_rows,
    customer_sql, order_for, price_rows, price_total)
from toylib.chapters.ch01_monolith.designs import (  # noqa: F401
    DESIGNS, DistributedMonolith, OutOfStock, OwnedData, ShopDesign, TransientFailure, design,
    ideal, order_consumers, owned_data_services, replica_consumers, shared_db_services,
    sync_order_service)
from toylib.chapters.ch01_monolith.experiments import (  # noqa: F401
    SWEEP_GRID, SWEEP_RUN, Availability, BlastRadius, Latency, Outage, OutageRun, availability,
    blast_radius, degradation, latency, migration_probe, order_latencies, outage,
    outage_figure, outage_probe, sweep, take_orders)
from toylib.chapters.ch01_monolith.verdicts import (  # noqa: F401
    AUDIT_KNOBS, AUDIT_SIZES, CLAIM, CLAIMS, audit, findings)
