"""A DataLoader-style batcher: the general fix for N+1.

Code that looks like N+1 (``for id in ids: await loader.load(id)`` spread over concurrent
tasks) costs one request: every ``load`` issued in the same event-loop tick is queued, and when
the tick ends one ``batch_fn(keys)`` fetches them all. As in graphql/dataloader, ``batch_fn``
must return one result per key in key order; keys are deduplicated through a per-loader cache
(make one loader per request, so one page never sees another's data); a failed batch is not
cached, and every waiter gets the error.

Each batch call runs as a task the batcher keeps (asyncio holds only weak references to
tasks): :meth:`Batcher.close`, or leaving ``async with Batcher(...)``, cancels the batches still
running, and ``spawn=topo.spawn`` makes them tasks of a topology, so they end with its block.
"""
from __future__ import annotations

import asyncio

from toylib.core import validate as v


class Batcher:
    def __init__(self, batch_fn, *, max_batch: int = 100, cache: bool = True, spawn=None):
        if not asyncio.iscoroutinefunction(batch_fn):
            raise TypeError(f"batch_fn must be an async function of a list of keys; got {batch_fn!r}")
        self.batch_fn = batch_fn
        self.max_batch = v.positive("max_batch", max_batch, integer=True, high=v.MAX_ITEMS)
        if not isinstance(cache, bool):
            raise TypeError(f"cache must be True or False; got {cache!r}")
        self.cache = cache
        if spawn is not None and not callable(spawn):
            raise TypeError(f"spawn must be a function that starts a task from a coroutine "
                            f"(e.g. topo.spawn) or None; got {spawn!r}")
        self._spawn = spawn or asyncio.ensure_future
        self._tasks: set[asyncio.Task] = set()   # batches running now
        self._futures: dict = {}
        self._queue: list = []
        self._scheduled = False
        self.batches: list[list] = []   # the key lists actually sent, for counting

    def load(self, key) -> asyncio.Future:
        """A future for ``key``'s value; awaiting several in one tick makes one batch call."""
        if self.cache:
            try:
                hash(key)
            except TypeError:
                raise TypeError(f"key must be hashable (it is a cache key); got {key!r}") from None
        if self.cache and key in self._futures:
            return self._futures[key]
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        if self.cache:
            self._futures[key] = fut
        self._queue.append((key, fut))
        if not self._scheduled:
            self._scheduled = True
            loop.call_soon(self._dispatch)   # after every task ready in this tick has run
        return fut

    async def load_many(self, keys) -> list:
        if isinstance(keys, (str, bytes)) or not hasattr(keys, "__iter__"):
            raise TypeError(f"keys must be a list of keys; got {keys!r}")
        return list(await asyncio.gather(*(self.load(k) for k in keys)))

    def _dispatch(self) -> None:
        self._scheduled = False
        queue, self._queue = self._queue, []
        for i in range(0, len(queue), self.max_batch):
            task = self._spawn(self._run(queue[i:i + self.max_batch]))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def close(self) -> None:
        """Cancel the batches still running (their waiters get CancelledError) and wait."""
        tasks = list(self._tasks)
        for t in tasks:
            t.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        for _, fut in self._queue:     # loads queued for a batch not yet dispatched
            if not fut.done():
                fut.cancel()
        self._queue.clear()

    async def __aenter__(self) -> "Batcher":
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()

    async def _run(self, items) -> None:
        keys = [k for k, _ in items]
        self.batches.append(keys)
        try:
            values = await self.batch_fn(keys)
            if not isinstance(values, list) or len(values) != len(keys):
                raise ValueError(f"batch_fn must return a list of {len(keys)} values, one per "
                                 f"key in order; got {type(values).__name__} of "
                                 f"{len(values) if hasattr(values, '__len__') else '?'}")
        except BaseException as e:
            for k, fut in items:
                if self.cache and self._futures.get(k) is fut:
                    del self._futures[k]    # a failed batch is not cached
                if not fut.done():
                    fut.set_exception(e if isinstance(e, Exception) else asyncio.CancelledError())
            if not isinstance(e, Exception):
                raise
            return
        for (k, fut), val in zip(items, values):
            if not fut.done():
                fut.set_result(val)
