"""toylib.data.db: real SQLite files in a temporary workspace, usable from asyncio."""
import asyncio
import sqlite3
import threading
import time

import pytest

from toylib.data.db import Database, Workspace


def leftovers():
    """Tasks other than the test itself, and SQLite worker threads still alive."""
    tasks = {t for t in asyncio.all_tasks() if t is not asyncio.current_task()}
    threads = [t for t in threading.enumerate() if t.name.startswith("sqlite-")]
    return tasks, threads


async def test_workspace_files_exist_inside_and_are_removed_after(leakcheck):
    async with Workspace() as ws:
        db = await ws.database("orders")
        await db.execute("CREATE TABLE t (x)")
        assert ws.files() == ["orders.sqlite"]
        assert (ws.path / "orders.sqlite").is_file()
        folder = ws.path
    assert not folder.exists()
    assert db.closed
    assert leftovers() == (set(), [])


async def test_workspace_removed_and_connections_closed_on_error(leakcheck):
    with pytest.raises(ZeroDivisionError):
        async with Workspace() as ws:
            db = await ws.database("orders")
            async with db.transaction():
                await db.execute("CREATE TABLE t (x)")
                folder = ws.path
                1 / 0
    assert not folder.exists()
    assert db.closed
    assert leftovers() == (set(), [])


async def test_workspace_removed_on_cancellation(leakcheck):
    started = asyncio.Event()
    box = {}

    async def experiment():
        async with Workspace() as ws:
            box["folder"] = ws.path
            db = await ws.database("orders")
            await db.execute("CREATE TABLE t (x)")
            started.set()
            await asyncio.sleep(3600)

    task = asyncio.create_task(experiment())
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert not box["folder"].exists()
    assert leftovers() == (set(), [])


async def test_shared_database_is_one_file_with_one_connection_per_service():
    async with Workspace() as ws:
        a = await ws.database("shared", owner="customer")
        b = await ws.database("shared", owner="inventory")
        assert a.path == b.path and a is not b and a._conn is not b._conn
        assert ws.files() == ["shared.sqlite"]
        await a.execute("CREATE TABLE customers (id INTEGER PRIMARY KEY, name TEXT)")
        await a.executemany("INSERT INTO customers (name) VALUES (?)", [("ada",), ("bob",)])
        assert await b.fetchall("SELECT name FROM customers ORDER BY id") == [("ada",), ("bob",)]
        assert await b.fetchone("SELECT COUNT(*) FROM customers") == (2,)
        df = await b.dataframe("SELECT id, name FROM customers")
        assert list(df.columns) == ["id", "name"] and len(df) == 2


async def test_transaction_commits_and_rolls_back_on_error():
    async with Workspace() as ws:
        db = await ws.database("orders")
        await db.execute("CREATE TABLE t (x INTEGER)")
        async with db.transaction():
            await db.execute("INSERT INTO t VALUES (1)")
        with pytest.raises(RuntimeError, match="boom"):
            async with db.transaction():
                await db.execute("INSERT INTO t VALUES (2)")
                raise RuntimeError("boom")
        assert await db.fetchall("SELECT x FROM t") == [(1,)]
        assert db.stats["commits"] == 1 and db.stats["rollbacks"] == 1


async def test_transaction_rolls_back_when_the_task_is_cancelled(leakcheck):
    async with Workspace() as ws:
        db = await ws.database("orders")
        await db.execute("CREATE TABLE t (x INTEGER)")
        inside = asyncio.Event()

        async def writer():
            async with db.transaction():
                await db.execute("INSERT INTO t VALUES (1)")
                inside.set()
                await asyncio.sleep(3600)

        task = asyncio.create_task(writer())
        await inside.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert await db.fetchall("SELECT x FROM t") == []
        async with db.transaction():              # the connection is usable again
            await db.execute("INSERT INTO t VALUES (2)")
        assert await db.fetchall("SELECT x FROM t") == [(2,)]


async def test_transactions_of_concurrent_tasks_on_one_connection_do_not_interleave():
    """Read-modify-write in a transaction from many tasks: no lost update."""
    async with Workspace() as ws:
        db = await ws.database("counter")
        await db.execute("CREATE TABLE c (n INTEGER)")
        await db.execute("INSERT INTO c VALUES (0)")

        async def bump():
            for _ in range(10):
                async with db.transaction():
                    (n,) = await db.fetchone("SELECT n FROM c")
                    await asyncio.sleep(0)          # let the others try to get in
                    await db.execute("UPDATE c SET n = ?", (n + 1,))

        await asyncio.gather(*(bump() for _ in range(5)))
        assert await db.fetchone("SELECT n FROM c") == (50,)


async def test_nested_transaction_is_refused_but_atomic_joins():
    async with Workspace() as ws:
        db = await ws.database("orders")
        await db.execute("CREATE TABLE t (x INTEGER)")
        async with db.transaction():
            with pytest.raises(RuntimeError, match="re-entrant"):
                async with db.transaction():
                    pass
            async with db.atomic():
                await db.execute("INSERT INTO t VALUES (1)")
            assert db.in_transaction
        assert not db.in_transaction
        with pytest.raises(KeyError):
            async with db.transaction():
                async with db.atomic():
                    await db.execute("INSERT INTO t VALUES (2)")
                raise KeyError("the outer transaction fails")
        assert await db.fetchall("SELECT x FROM t") == [(1,)]


async def test_writer_gives_up_after_busy_timeout_on_a_shared_database():
    async with Workspace() as ws:
        a = await ws.database("shared", owner="a", busy_timeout=0)
        b = await ws.database("shared", owner="b", busy_timeout=0)
        await a.execute("CREATE TABLE t (x)")
        async with a.transaction():
            await a.execute("INSERT INTO t VALUES (1)")
            with pytest.raises(sqlite3.OperationalError, match="locked"):
                async with b.transaction():
                    pass
        assert b.stats["locked"] == 1 and b.stats["rollbacks"] == 0   # BEGIN never began
        async with b.transaction():                 # free again
            await b.execute("INSERT INTO t VALUES (2)")
        assert await a.fetchone("SELECT COUNT(*) FROM t") == (2,)


async def test_waiting_for_the_write_lock_does_not_block_the_event_loop():
    async with Workspace() as ws:
        a = await ws.database("shared", owner="a", busy_timeout=2)
        b = await ws.database("shared", owner="b", busy_timeout=2)
        await a.execute("CREATE TABLE t (x)")
        ticks = 0

        async def ticker():
            nonlocal ticks
            while True:
                ticks += 1
                await asyncio.sleep(0.005)

        t = asyncio.create_task(ticker())
        async with a.transaction():
            waiter = asyncio.create_task(b.execute("INSERT INTO t VALUES (2)"))
            await asyncio.sleep(0.2)                # b waits inside SQLite meanwhile
            assert not waiter.done()
            await a.execute("INSERT INTO t VALUES (1)")
        start = time.monotonic()
        await waiter
        t.cancel()
        await asyncio.gather(t, return_exceptions=True)
        assert ticks >= 20                          # the loop kept running
        assert time.monotonic() - start < 1.5
        assert await a.fetchall("SELECT x FROM t ORDER BY rowid") == [(1,), (2,)]


async def test_database_standalone_and_wal(tmp_path):
    path = tmp_path / "alone.sqlite"
    async with Database(path, owner="svc", wal=True, synchronous="off") as db:
        assert await db.fetchone("PRAGMA journal_mode") == ("wal",)
        assert await db.fetchone("PRAGMA busy_timeout") == (5000,)
    assert db.closed
    with pytest.raises(RuntimeError, match="closed"):
        await db.execute("SELECT 1")
    assert leftovers()[1] == []


@pytest.mark.parametrize("kwargs, param", [
    (dict(path=5), "path"),
    (dict(path="x.sqlite", owner=""), "owner"),
    (dict(path="x.sqlite", owner="a b"), "owner"),
    (dict(path="x.sqlite", busy_timeout=-1), "busy_timeout"),
    (dict(path="x.sqlite", wal="yes"), "wal"),
    (dict(path="x.sqlite", synchronous="fast"), "synchronous"),
])
def test_database_rejects_bad_parameters(kwargs, param):
    with pytest.raises((TypeError, ValueError), match=param):
        Database(**kwargs)


@pytest.mark.parametrize("kwargs, param", [
    (dict(prefix="a/b"), "prefix"),
    (dict(busy_timeout=-0.5), "busy_timeout"),
    (dict(synchronous="sometimes"), "synchronous"),
])
def test_workspace_rejects_bad_parameters(kwargs, param):
    with pytest.raises((TypeError, ValueError), match=param):
        Workspace(**kwargs)


async def test_statements_reject_bad_parameters():
    async with Workspace() as ws:
        with pytest.raises(ValueError, match="name"):
            await ws.database("../escape")
        db = await ws.database("orders")
        with pytest.raises(ValueError, match="sql"):
            await db.execute("   ")
        with pytest.raises(TypeError, match="params"):
            await db.execute("SELECT ?", 5)
        with pytest.raises(TypeError, match="seq_of_params"):
            await db.executemany("SELECT ?", [5])
        with pytest.raises(ValueError, match="script"):
            await db.executescript("")
    with pytest.raises(RuntimeError, match="not open"):
        await Workspace().database("orders")
