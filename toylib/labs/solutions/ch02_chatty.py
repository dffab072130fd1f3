"""Lab 2 (ch02_chatty): two correct solutions, written independently.

The lab notebook shows the reference (``Loader``, ``posts_batch``, ``profile``) inside its hidden
solution dropdown and runs it; the tests grade both solutions. ``REFERENCE`` and
``ALTERNATIVE`` are the keyword arguments ``check`` takes.
"""
from __future__ import annotations

import asyncio

from toylib.chapters import ch02_chatty as chatty


# -- the reference ----------------------------------------------------------------------------------
class Loader:
    def __init__(self, batch_fn):
        self.batch_fn = batch_fn
        self.pending = {}          # key -> future, for the batch being gathered
        self.scheduled = False

    def load(self, key):
        if key in self.pending:    # the same key twice in one tick: one future
            return self.pending[key]
        loop = asyncio.get_running_loop()
        fut = self.pending[key] = loop.create_future()
        if not self.scheduled:
            self.scheduled = True
            loop.call_soon(lambda: asyncio.ensure_future(self.dispatch()))
        return fut

    async def dispatch(self):
        # Take the batch now: loads that arrive while it is in flight start the next one.
        batch, self.pending, self.scheduled = self.pending, {}, False
        try:
            values = await self.batch_fn(list(batch))
        except Exception as e:     # every waiter learns; nothing is kept
            for fut in batch.values():
                if not fut.done():
                    fut.set_exception(e)
            return
        for fut, value in zip(batch.values(), values):
            if not fut.done():
                fut.set_result(value)


async def posts_batch(request):
    ids = [int(i) for i in request.query.get("ids", "").split(",") if i]
    return [chatty.post_record(i) for i in ids]


async def profile(gateway, uid, Loader):
    def batch(service, path):
        async def fetch(ids):
            return await gateway.call(service, "GET", path,
                                      params={"ids": ",".join(map(str, ids))})
        return fetch

    user = await gateway.call("users", "GET", f"/users/{uid}")                 # request 1
    posts = Loader(batch("posts", "/posts/batch"))                              # request 2
    friends = Loader(batch("users", "/users/batch"))                            # request 3
    post_list, friend_list = await asyncio.gather(
        asyncio.gather(*(posts.load(p) for p in user["post_ids"])),
        asyncio.gather(*(friends.load(f) for f in user["friend_ids"])))
    return {"user": chatty.friend_summary(user), "bio": user["bio"], "posts": list(post_list),
            "friends": [chatty.friend_summary(f) for f in friend_list]}


# -- an alternative, written independently ----------------------------------------------------------
class alternative_Loader:
    """A queue of (key, future) pairs flushed by a task that yields once, so every load of the
    current tick is in; duplicates are merged when the batch is sent."""

    def __init__(self, batch_fn):
        self._fn = batch_fn
        self._queue: list[tuple[object, asyncio.Future]] = []
        self._flusher: asyncio.Task | None = None

    def load(self, key):
        fut = asyncio.get_running_loop().create_future()
        self._queue.append((key, fut))
        if self._flusher is None:
            self._flusher = asyncio.ensure_future(self._flush())
        return fut

    async def _flush(self):
        await asyncio.sleep(0)                 # let the rest of this tick's loads queue up
        queue, self._queue, self._flusher = self._queue, [], None
        keys = list(dict.fromkeys(k for k, _ in queue))
        try:
            values = dict(zip(keys, await self._fn(keys)))
        except Exception as e:
            for _, fut in queue:
                fut.done() or fut.set_exception(e)
            return
        for key, fut in queue:
            fut.done() or fut.set_result(values[key])


async def alternative_posts_batch(request):
    raw = request.query.get("ids", "")
    return [chatty.post_record(int(i)) for i in filter(None, raw.split(","))]


async def alternative_profile(gateway, uid, Loader):
    async def users_by_id(ids):
        return await gateway.call("users", "GET", "/users/batch",
                                  params={"ids": ",".join(str(i) for i in ids)})

    async def posts_by_id(ids):
        return await gateway.call("posts", "GET", "/posts/batch",
                                  params={"ids": ",".join(str(i) for i in ids)})

    user = await gateway.call("users", "GET", f"/users/{uid}")
    post_loader, user_loader = Loader(posts_by_id), Loader(users_by_id)
    post_futs = [post_loader.load(p) for p in user["post_ids"]]
    friend_futs = [user_loader.load(f) for f in user["friend_ids"]]
    posts = [await f for f in post_futs]
    friends = [await f for f in friend_futs]
    return {"user": {"id": user["id"], "name": user["name"]}, "bio": user["bio"],
            "posts": posts, "friends": [{"id": f["id"], "name": f["name"]} for f in friends]}


REFERENCE = {"Loader": Loader, "posts_batch": posts_batch, "profile": profile}
ALTERNATIVE = {"Loader": alternative_Loader, "posts_batch": alternative_posts_batch,
               "profile": alternative_profile}
