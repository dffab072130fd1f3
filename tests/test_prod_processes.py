"""Services as OS processes: a real kill -9 of a consumer and of the orchestrator mid-run
loses nothing and does nothing twice (read from PostgreSQL); the scope leaves no process."""
from __future__ import annotations

import os

import pytest

from toylib.prod import services
from toylib.prod.processes import Processes

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def real_stack():
    absent = services.missing("postgres", "nats")
    if absent:
        pytest.skip(f"needs {' and '.join(absent)} (not listening; compose.yaml starts them)")


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


async def test_kill_9_loses_nothing_and_does_nothing_twice(real_stack, leakcheck):
    from toylib.prod.crash import crash_test
    r = await crash_test(orders=24, sagas=10, declined=2, timeout=60)
    assert r["kills"] == {"orders": 0, "billing": 1, "orchestrator": 1}
    assert r["at_kill"]["billing_charged"] < r["orders"], "billing died mid-run"
    assert r["at_kill"]["sagas_unfinished"] > 0, "the orchestrator died mid-run"
    assert (r["charged"], r["lost"], r["charged_twice"]) == (r["orders"], 0, 0)
    assert r["completed"] + r["compensated"] == r["sagas"]
    assert r["compensated_as_declined"] and r["sagas_wrong"] == 0
    assert r["command_attempts"] >= r["commands_applied"]
    assert r["pids"] and not any(alive(pid) for pid in r["pids"]), "the scope stopped them all"


async def test_the_scope_refuses_bad_use(real_stack):
    with pytest.raises(ValueError, match="role"):
        async with Processes() as procs:
            await procs.start("x", "payments", {})
    with pytest.raises(RuntimeError, match="scope"):
        await Processes().start("x", "orders", {})
    with pytest.raises((TypeError, ValueError), match="grace"):
        Processes(grace=float("nan"))


async def test_a_worker_that_cannot_start_is_reported_with_its_log(real_stack):
    async with Processes(start_timeout=20) as procs:
        with pytest.raises(RuntimeError, match="failed to start"):
            await procs.start("orders", "orders", {"dsn": "postgresql://nobody@127.0.0.1:1/x",
                                                   "schemas": {"orders": "nowhere"}})
        pid = procs.procs["orders"].pid
    assert not alive(pid)
