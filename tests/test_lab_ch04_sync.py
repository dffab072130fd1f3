"""Lab 4 (ch04_sync): its checker passes two independently written correct solutions, rejects
known-wrong ones (at least one per class of fault it grades: real restarts, concurrency, faults
between statements and transactions, client-visible against durable state, several instances,
generated cases), and its cases inject the faults their names promise. Each wrong solution is
the reference with one realistic mistake.
"""
from __future__ import annotations

import asyncio
import itertools
import json
import time
import uuid

import pytest
from aiohttp import web

from toylib.labs import ch04_sync as lab
from toylib.labs.grading import Case
from toylib.labs.solutions import ch04_sync as solutions

REFERENCE, ALTERNATIVE = solutions.REFERENCE, solutions.ALTERNATIVE
ref_accept = solutions.accept


@pytest.mark.parametrize("solution", [REFERENCE, ALTERNATIVE], ids=["reference", "alternative"])
async def test_lab4_correct_solutions_pass(solution, leakcheck):
    report = await lab.check(**solution)
    assert report.ok, report.summary()
    assert report.verdict() == f"done: cases passed: {len(lab.CASES)} of {len(lab.CASES)}"


async def test_lab4_profile_counts_the_statements_and_commits_of_one_checkout():
    assert await lab.profile(REFERENCE) == (6, 1)
    assert await lab.profile(ALTERNATIVE) == (6, 1)


async def test_lab4_cases_inject_what_they_name():
    for case in lab.CASES:
        if case.name == "generated":
            continue
        got = await lab.run_case(REFERENCE, case, points=(6, 1))
        p = case.params
        # every order the client was told about, or that was stored before a death, finished
        assert got["completed"] + got["compensated"] >= got["accepted"], (case.name, got)
        if p.get("deaths") == "statements":       # each planned death fired, one per statement
            assert got["deaths"] == 6 and got["restarts"] == 6, (case.name, got)
        if p.get("deaths") == "commits":
            assert got["deaths"] == 1 and got["restarts"] == 1, (case.name, got)
        if p.get("deaths") == "random":
            assert got["deaths"] >= 1 and got["restarts"] >= 1, (case.name, got)
        if "restart_after" in p:
            assert got["restarts"] == p.get("instances", 1), (case.name, got)
        assert got["instances"] == p.get("instances", 1)
        if p.get("p"):
            assert got["compensated"] >= 1 and got["completed"] >= 1, (case.name, got)
        if p.get("scale"):       # the source's delays: the saga itself takes the whole chain
            assert got["median response ms"] * lab.MIN_SPEEDUP < lab.CHAIN_MS, got


# -- wrong solutions ------------------------------------------------------------------------------
async def _store(shop, body, order_id=None) -> str:
    order_id = await shop.statuses.accept(order_id)
    await shop.db.execute("INSERT INTO orders VALUES (?, ?, ?, 'accepted', ?)",
                          (order_id, body["cart_id"], body["customer_id"], time.time()))
    return order_id


def _accepted(order_id):
    return web.json_response({"order_id": order_id, "status": "accepted"}, status=202)


async def calls_the_chain_first(shop, request):
    """The old handler's calls kept before the new code."""
    body = await request.json()
    await shop.service.call("cart", "GET", f"/carts/{body['cart_id']}")
    await shop.service.call("customer", "GET", f"/customers/{body['customer_id']}")
    return await ref_accept(shop, request)


async def waits_for_the_saga(shop, request):
    """Stores correctly, then holds the client until the order is final."""
    answer = await ref_accept(shop, request)
    order_id = json.loads(answer.body)["order_id"]
    while await shop.statuses.status(order_id) not in ("completed", "compensated", "failed"):
        await asyncio.sleep(0.01)
    return answer


async def two_transactions(shop, request):
    body = await request.json()
    async with shop.db.transaction():
        order_id = await _store(shop, body)
    async with shop.db.transaction():
        await shop.outbox.emit("checkouts", order_id, {**body, "order_id": order_id})
    return _accepted(order_id)


async def publishes_directly(shop, request):
    """No outbox: publishes to the bus after the commit (the dual write)."""
    body = await request.json()
    async with shop.db.transaction():
        order_id = await _store(shop, body)
    await shop.bus.publish("checkouts", order_id, {**body, "order_id": order_id})
    return _accepted(order_id)


_background: set = set()


async def answers_before_storing(shop, request):
    """Answers 202 at once and stores the order in a background task."""
    body = await request.json()
    order_id = f"order-{uuid.uuid4().hex[:8]}"

    async def store():
        try:
            async with shop.db.transaction():
                await _store(shop, body, order_id)
                await shop.outbox.emit("checkouts", order_id, {**body, "order_id": order_id})
        except Exception:
            pass                          # a fire-and-forget task: nobody hears it die
    task = asyncio.ensure_future(store())
    _background.add(task)
    task.add_done_callback(_background.discard)
    return _accepted(order_id)


async def no_status(shop, request):
    """Writes the order and its event, but no status for the order."""
    body = await request.json()
    async with shop.db.transaction():
        (n,) = await shop.db.fetchone("SELECT COUNT(*) FROM orders")
        order_id = f"order-{n + 1}"
        await shop.db.execute("INSERT INTO orders VALUES (?, ?, ?, 'accepted', ?)",
                              (order_id, body["cart_id"], body["customer_id"], time.time()))
        await shop.outbox.emit("checkouts", order_id, {**body, "order_id": order_id})
    return _accepted(order_id)


async def status_without_404(shop, request):
    """Wrong: an unknown id raises, and the service answers 500."""
    return await shop.statuses.get(request.match_info["id"])


async def status_from_the_orders_table(shop, request):
    """Wrong: reads the orders table and answers 200 'unknown' for an unknown id."""
    row = await shop.db.fetchone("SELECT status FROM orders WHERE order_id = ?",
                                 (request.match_info["id"],))
    return {"status": row[0] if row else "unknown"}


# New, one class of issue 12 each ----------------------------------------------------------------
_NEXT_ID = itertools.count(1)


async def ids_from_memory(shop, request):
    """Real restarts / several instances: the id comes from a counter in the process's memory,
    which starts again at 1 after a restart and in every instance."""
    body = await request.json()
    order_id = f"order-{next(_NEXT_ID)}"
    async with shop.db.transaction():
        await _store(shop, body, order_id)
        await shop.outbox.emit("checkouts", order_id, {**body, "order_id": order_id})
    return _accepted(order_id)


async def count_outside_the_transaction(shop, request):
    """Concurrency: the id is read from a count before the transaction that inserts it, so two
    concurrent checkouts read the same count."""
    body = await request.json()
    (n,) = await shop.db.fetchone("SELECT COUNT(*) FROM requests")
    order_id = f"order-{n + 1}"
    await asyncio.sleep(0.005)       # the time a real handler spends validating the body
    async with shop.db.transaction():
        await _store(shop, body, order_id)
        await shop.outbox.emit("checkouts", order_id, {**body, "order_id": order_id})
    return _accepted(order_id)


async def status_after_the_event(shop, request):
    """Faults between transactions: the order and its event commit, then the status in a
    second transaction; a death between the two leaves an order nobody can poll."""
    body = await request.json()
    order_id = f"order-{uuid.uuid4().hex[:10]}"
    async with shop.db.transaction():
        await shop.db.execute("INSERT INTO orders VALUES (?, ?, ?, 'accepted', ?)",
                              (order_id, body["cart_id"], body["customer_id"], time.time()))
        await shop.outbox.emit("checkouts", order_id, {**body, "order_id": order_id})
    async with shop.db.transaction():
        await shop.statuses.accept(order_id)
    return _accepted(order_id)


async def answers_the_latest_id(shop, request):
    """Client-visible state: stores correctly, then answers the newest order's id, read after
    the commit: under concurrency, another request's order."""
    await ref_accept(shop, request)
    await asyncio.sleep(0.005)
    (order_id,) = await shop.db.fetchone(
        "SELECT order_id FROM orders ORDER BY created_at DESC LIMIT 1")
    return _accepted(order_id)


async def optimistic_status(shop, request):
    """Client-visible state: answers 'completed' for every known order, whatever the database
    says (a compensated order too)."""
    order_id = request.match_info["id"]
    if await shop.db.fetchone("SELECT 1 FROM requests WHERE request_id = ?", (order_id,)) is None:
        return web.json_response({"error": "unknown"}, status=404)
    return {"request_id": order_id, "status": "completed", "terminal": True}


ACCEPTS = {f.__name__: f for f in (
    calls_the_chain_first, waits_for_the_saga, two_transactions, publishes_directly,
    answers_before_storing, no_status, ids_from_memory, count_outside_the_transaction,
    status_after_the_event, answers_the_latest_id)}
STATUSES = {f.__name__: f for f in (status_without_404, status_from_the_orders_table,
                                    optimistic_status)}

LAB4_WRONG = {  # mistake -> (the case that must reject it, what its message says)
    "calls_the_chain_first": (None, "while the client waited"),
    "waits_for_the_saga": ("answers-before-the-chain", "5x sooner"),
    "two_transactions": (None, "never finished"),
    "publishes_directly": (None, "never finished"),
    "answers_before_storing": ("dies-at-every-statement", ("answers 404", "did not fire")),
    "no_status": (None, "shop.statuses.accept()"),
    "status_without_404": (None, "must be answered 404"),
    "status_from_the_orders_table": (None, "must be answered 404"),
    # real restarts: recovery from the database alone
    "ids_from_memory": ("restarts-then-serves-from-the-database", "checkout 3 was answered 500"),
    # concurrency: ids read from a count, then inserted
    "count_outside_the_transaction": ("concurrent-checkouts", "was answered 500"),
    # a fault between two transactions, proven to have fired
    "status_after_the_event": ("dies-after-every-commit", ("never finished", "disagree",
                                                           "in the same transaction")),
    # client-visible state against durable state, per request
    "answers_the_latest_id": ("concurrent-checkouts", "another request's order"),
    "optimistic_status": ("transient-failures-20", "while the checkout's database says"),
}


def _wrong(mistake: str) -> dict:
    if mistake in STATUSES:
        return {**REFERENCE, "order_status": STATUSES[mistake]}
    return {**REFERENCE, "accept": ACCEPTS[mistake]}


@pytest.mark.parametrize("mistake", list(LAB4_WRONG))
async def test_lab4_rejects_wrong_handlers(mistake, leakcheck):
    only, says = LAB4_WRONG[mistake]
    report = await lab.check(**_wrong(mistake), only=only, stop_after=1)
    assert not report.ok, f"the checker accepted a wrong solution: {mistake}"
    failure = report.first_failure
    says = (says,) if isinstance(says, str) else says
    assert any(s in failure.message for s in says), report.summary()
    assert "not done" in report.summary() and "Replay it alone: await check(" in report.summary()


async def test_lab4_two_instances_reject_ids_kept_in_memory(leakcheck):
    report = await lab.check(**_wrong("ids_from_memory"), only="two-instances-one-database")
    assert not report.ok
    msg = report.first_failure.message
    assert "was answered 500" in msg or "were both answered" in msg, report.summary()
    # the history shows what each client was told beside what the database holds
    assert "client was told" in report.first_failure.detail
    assert "database holds" in report.first_failure.detail


async def test_lab4_generated_cases_shrink_a_failure_and_print_the_seed(leakcheck):
    report = await lab.check(**_wrong("count_outside_the_transaction"), only="generated",
                             seed=7)
    assert not report.ok
    f = report.first_failure
    assert "a generated case failed (seed 7" in f.message and "Hypothesis shrank it to" in f.message
    shrunk = eval(f.message.split("shrank it to ", 1)[1].split(":\n", 1)[0])  # noqa: S307
    assert shrunk["checkouts"] <= 3 and shrunk["clients"] >= 2 or shrunk.get("instances") == 2 \
        or "restart_after" in shrunk, shrunk
    assert f.replay == "await check(..., only='generated', seed=7)"
    assert "only='generated', seed=7" in report.summary()


async def test_lab4_a_planned_death_that_never_fires_is_a_grader_error(leakcheck):
    case = Case("dies-at-every-statement", 4, 4, {"deaths": "statements"})
    with pytest.raises(lab.GraderError, match="did not fire"):
        await lab.run_case(REFERENCE, case, points=(9, 1))   # the reference has 6 statements


async def test_lab4_starter_fails_with_a_message(leakcheck):
    async def accept(shop, request):
        raise NotImplementedError("accept: TODO")

    async def order_status(shop, request):
        raise NotImplementedError("order_status: TODO")

    report = await lab.check(accept=accept, order_status=order_status, only="one-checkout")
    assert report.passed == 0
    assert report.first_failure.message == "not implemented yet: accept: TODO"


async def test_lab4_replays_one_case_and_checks_its_arguments():
    report = await lab.check(**REFERENCE, only="dies-after-every-commit")
    assert [o.case.name for o in report.outcomes] == ["dies-after-every-commit"] and report.ok
    bad = [({"order_status": lambda shop, request: None}, TypeError, "^order_status must be"),
           ({"accept": "accept"}, TypeError, "^accept must be"),
           ({"only": "no-such-case"}, ValueError, "^only must be one of"),
           ({"stop_after": 0}, ValueError, "^stop_after must be"),
           ({"seed": -1}, ValueError, "^seed must be"),
           ({"seed": float("nan")}, TypeError, "^seed must be")]
    for kw, error, match in bad:
        with pytest.raises(error, match=match):
            await lab.check(**{**REFERENCE, **kw})
    with pytest.raises(TypeError, match="^case must be"):
        await lab.run_case(REFERENCE, "one-checkout")
    for solution in ({"accept": solutions.accept}, [solutions.accept], None):
        with pytest.raises(TypeError, match="^solution must be"):
            await lab.run_case(solution, lab.CASES[0])
        with pytest.raises(TypeError, match="^solution must be"):
            await lab.profile(solution)
