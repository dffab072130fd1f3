"""toylib: tiny in-process services to build, break and measure distributed-systems designs.

The core: :mod:`services` (Service, Topology), :mod:`faults` (Toxiproxy-style toxics),
:mod:`trace` (spans), :mod:`load` (bounded load generators), :mod:`diagrams` (Mermaid in the
four planes), :mod:`plots` and :mod:`widgets`. Each chapter's designs live in a module named
after the chapter's idea (e.g. :mod:`chatty`).
"""
from toylib.core.faults import Error, Hang, Latency, Reset, SlowDown
from toylib.core.services import CallError, Node, Service, Store, Topology

__all__ = ["Service", "Store", "Node", "Topology", "CallError",
           "Latency", "Error", "Hang", "Reset", "SlowDown"]
