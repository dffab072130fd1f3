"""One backend's (workspace, bus) pair, chosen by name: the design code never changes.

``"toy"``: SQLite files and the in-process :class:`~toylib.data.bus.EventBus` (the course's
default everywhere). ``"prod"``: PostgreSQL schemas and a NATS JetStream bus. Both are closed
and removed when the block ends.
"""
from __future__ import annotations

from contextlib import asynccontextmanager

from toylib.core import validate as v
from toylib.data.bus import EventBus
from toylib.data.db import Workspace

BACKENDS = ("toy", "prod")


@asynccontextmanager
async def stack(backend: str, *, ack_wait: float = 0.5):
    v.one_of("backend", backend, BACKENDS)
    if backend == "toy":
        async with Workspace() as ws:
            yield ws, EventBus()
    else:
        from toylib.prod.jetstream import JetStreamBus
        from toylib.prod.postgres import PgWorkspace
        async with PgWorkspace() as ws, JetStreamBus(ack_wait=ack_wait) as bus:
            yield ws, bus


async def lag(group) -> int:
    """A consumer group's lag on either backend (JetStream asks the server)."""
    if hasattr(group, "lag_async"):
        return await group.lag_async()
    return group.lag()
