"""Chapter 3, Shared Database: five services on one SQLite file (before), and one file each
(after), measured side by side.

The package follows :mod:`toylib.chapters.design`'s contract; its modules are named after
their idea:

* :mod:`.knobs`: ``CHAPTER``, :class:`Knobs`, the seeded orders and payment draws;
* :mod:`.schema`: each team's tables, the consumers' copies, the migration, the heavy report;
* :mod:`.services`: the five services, written once, run by both designs;
* :mod:`.designs`: :class:`SharedDatabase` ("before"), :class:`DatabasePerService` ("after"),
  the consumers of order events, ``DESIGNS`` and :func:`design`;
* experiments, each ``async def name(knobs, *, ...) -> Result`` with a probe that takes a
  running design first: :mod:`.migration`, :mod:`.contention`, :mod:`.neighbour`,
  :mod:`.scaling`, :mod:`.order_saga`, :mod:`.staleness`;
* :mod:`.models`: the analytic ideals; :mod:`.verdicts`: ``CLAIMS``, :func:`findings`,
  ``AUDIT_KNOBS``, :func:`audit`; :mod:`.panel`: the widget's function;
  :mod:`.explorer`: :func:`sweep`, the measured grid for the static site.
"""
from toylib.chapters.ch03_shared_db.contention import (ContentionResult, contention,
                                                       write_burst, write_summary)
from toylib.chapters.ch03_shared_db.designs import (DESIGNS, DatabasePerService,
                                                    SharedDatabase, ShopDesign, design)
from toylib.chapters.ch03_shared_db.explorer import sweep
from toylib.chapters.ch03_shared_db.knobs import (CHAPTER, PRICES, SERVICES, TOPIC, Knobs,
                                                  order_for, payment_outcome)
from toylib.chapters.ch03_shared_db.migration import (OTHERS, MigrationResult, broken, migration,
                                                      migration_rounds)
from toylib.chapters.ch03_shared_db.models import (ideal_contention, ideal_scaling,
                                                   ideal_staleness)
from toylib.chapters.ch03_shared_db.neighbour import (NeighbourResult, noisy_neighbour,
                                                      orders_beside_reports)
from toylib.chapters.ch03_shared_db.order_saga import (SagaResult, expected_outcomes,
                                                       invariants, run_sagas, saga_diagram,
                                                       sagas)
from toylib.chapters.ch03_shared_db.panel import try_it
from toylib.chapters.ch03_shared_db.scaling import ScalingResult, scaling, scaling_run
from toylib.chapters.ch03_shared_db.staleness import (StalenessResult, read_model_staleness,
                                                      staleness)
from toylib.chapters.ch03_shared_db.verdicts import (AUDIT_KNOBS, BUSY_P99_MS, CLAIMS, audit,
                                                     findings, timed)

__all__ = [
    "CHAPTER", "Knobs", "DESIGNS", "BUSY_P99_MS", "timed", "design", "SharedDatabase", "DatabasePerService",
    "ShopDesign", "CLAIMS", "findings", "AUDIT_KNOBS", "audit", "sweep", "try_it",
    "migration", "migration_rounds", "OTHERS", "broken", "MigrationResult",
    "contention", "write_burst", "write_summary", "ContentionResult",
    "noisy_neighbour", "orders_beside_reports", "NeighbourResult",
    "scaling", "scaling_run", "ScalingResult",
    "sagas", "run_sagas", "invariants", "expected_outcomes", "saga_diagram", "SagaResult",
    "staleness", "read_model_staleness", "StalenessResult",
    "ideal_contention", "ideal_scaling", "ideal_staleness",
    "SERVICES", "PRICES", "TOPIC", "order_for", "payment_outcome",
]
