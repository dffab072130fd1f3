"""toylib: tiny in-process services to build, break and measure distributed-systems designs.

The package is layered (see ARCHITECTURE.md): :mod:`toylib.core` (services and topology on
127.0.0.1, faults, traces, deadlines, bounded load generators, validation), the peers
:mod:`toylib.data` (SQLite, bus, outbox, saga, status) and :mod:`toylib.resilience`
(breaker, retry, bulkhead, rate limiting, caches), then present, claims, chapters and labs.
The names below are the ones a notebook needs most; import everything else from its module.
Every public function checks its arguments and names the parameter and the allowed range.
"""
from toylib.core.faults import Error, Hang, Latency, Reset, SlowDown
from toylib.core.services import CallError, Node, Service, Store, Topology

__all__ = ["Service", "Store", "Node", "Topology", "CallError",
           "Latency", "Error", "Hang", "Reset", "SlowDown"]
