"""Where the production services listen, and whether they are there.

The appendix and its tests probe a port before using a service, so a machine without them
(a reader's laptop, Binder) gets "skipped: PostgreSQL is not listening on 127.0.0.1:5432"
instead of a hang or a traceback. ``compose.yaml`` at the top of the repository starts
exactly these services for a reader who has a container engine.
"""
from __future__ import annotations

import os
import socket

from toylib.core import validate as v

HOST = "127.0.0.1"
# name -> (environment variable that overrides the port, default port, what it is)
SERVICES = {
    "postgres": ("TOYLIB_PG_PORT", 5432, "PostgreSQL"),
    "nats": ("TOYLIB_NATS_PORT", 4222, "NATS with JetStream"),
}


def port(service: str) -> int:
    env, default, _ = SERVICES[v.one_of("service", service, SERVICES)]
    return v.number(env, int(os.environ.get(env, default)), low=1, high=65535, integer=True)


def postgres_dsn(database: str = "postgres") -> str:
    """The DSN of the local PostgreSQL (trust auth; user from TOYLIB_PG_USER, default postgres)."""
    v.name("database", database)
    user = os.environ.get("TOYLIB_PG_USER", "postgres")
    return f"postgresql://{user}@{HOST}:{port('postgres')}/{database}"


def nats_url() -> str:
    return f"nats://{HOST}:{port('nats')}"


def listening(service: str, timeout: float = 0.5) -> bool:
    """True if something accepts TCP connections on the service's port."""
    v.number("timeout", timeout, low=0.001, high=10)
    try:
        with socket.create_connection((HOST, port(service)), timeout=timeout):
            return True
    except OSError:
        return False


def missing(*services: str) -> list[str]:
    """Human descriptions of the services (default: all) that are not listening."""
    names = services or tuple(SERVICES)
    return [f"{SERVICES[s][2]} on {HOST}:{port(s)}" for s in names if not listening(s)]


def available(*services: str) -> bool:
    return not missing(*services)
