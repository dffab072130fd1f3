"""Tiny aiohttp services and the topology that runs them.

A :class:`Service` is a name, a plane and a few routes::

    users = Service("users")

    @users.get("/users/{id}")
    async def get_user(request):
        return {"id": int(request.match_info["id"])}

A :class:`Topology` starts every service on 127.0.0.1 on an ephemeral port, lets services find
each other by name (``await gateway.call("users", "GET", "/users/1")``), records every call as a
span, and releases every port, client session and task when its ``async with`` block ends —
normally, on an error, or when the kernel is interrupted (the block's ``__aexit__`` runs on
``CancelledError`` and ``KeyboardInterrupt`` too).
"""
from __future__ import annotations

import asyncio
import inspect
import json as jsonlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp
from aiohttp import web
from aiohttp import web_app
from yarl import URL

from toylib.core import validate as v
from toylib.core import deadline as dl
from toylib.core import trace as tr
from toylib.core.clock import now
from toylib.core.faults import Faults

PLANES = ("edge", "service", "state", "control")
HOST = "127.0.0.1"          # never anything else: the toys must not be reachable from outside
ROUTE_HEADER = "X-Toy-Route"
CLIENT = "client"           # the caller name of calls made from outside every service
METHODS = ("GET", "POST", "PUT", "DELETE", "PATCH")
MAX_PATH = 4096             # characters; aiohttp's server refuses request lines over 8190 bytes
MAX_POOL = 10_000           # connections one service's client may keep open


class UnknownService(KeyError, ValueError):
    """A name that is not a service (or node) of the topology.

    Both a KeyError (``topo["x"]`` is a lookup) and a ValueError (a bad argument), so code
    catching either keeps working; the message names the parameter and the known names.
    """

    def __str__(self) -> str:      # KeyError would print the message inside quotes
        return str(self.args[0]) if self.args else ""


def check_path(path) -> str:
    """``path`` (with an optional ``?query``) must be a path on the callee, nothing more.

    A call addresses a service by name; the path must not be able to change where the request
    goes. ``"@127.0.0.1:8081/x"`` appended to ``http://127.0.0.1:8080`` would make the first
    address a user name and send the call to port 8081; ``"//example.com/"``, a scheme, a
    backslash (which some parsers read as a slash), a fragment or a control character (which
    could split the request line) are refused for the same reason.
    """
    if not isinstance(path, str):
        raise TypeError(f"path must be a string starting with '/'; got {path!r}")
    shown = repr(path) if len(path) <= 80 else repr(path[:77]) + "..."
    if not path.startswith("/") or path.startswith("//"):
        raise ValueError(f"path must start with a single '/' (a path on the callee, not a URL "
                         f"or an address); got {shown}")
    if len(path) > MAX_PATH:
        raise ValueError(f"path must be at most {MAX_PATH} characters; got {len(path)}")
    bad = next((c for c in path if c in "\\#" or ord(c) < 0x20 or ord(c) == 0x7F), None)
    if bad is not None:
        raise ValueError(f"path must not contain {bad!r} (backslash, '#' and control characters "
                         f"could change where the request goes); got {shown}")
    return path


def _header_text(param: str, value, *, limit: int = 1000) -> str:
    """A header name or value: a non-empty string of printable characters, no line breaks."""
    if not isinstance(value, str) or not value or len(value) > limit or \
            any(ord(c) < 0x20 or ord(c) == 0x7F for c in value):
        shown = repr(value) if len(repr(value)) <= 80 else repr(value)[:77] + "..."
        raise ValueError(f"{param} must be a non-empty string of at most {limit} printable "
                         f"characters without line breaks; got {shown}")
    return value


class CallError(Exception):
    """A call between services failed: an HTTP error status or no answer at all.

    ``kind`` is "http" (``status`` holds the code), "refused", "reset", "timeout", "deadline"
    or "overloaded" (a 503/429 the callee marked as load shedding: do not retry it).
    """

    def __init__(self, caller: str, callee: str, path: str, kind: str,
                 status: int | None = None, detail: str = ""):
        self.caller, self.callee, self.path = caller, callee, path
        self.kind, self.status, self.detail = kind, status, detail
        what = f"HTTP {status}" if status is not None else kind
        super().__init__(f"{caller} -> {callee} {path}: {what}{': ' + detail if detail else ''}")


@dataclass
class Node:
    """Something drawn in a topology diagram: a service, a database, a cache, a queue, a client."""
    name: str
    plane: str = "service"
    label: str | None = None
    uses: tuple[str, ...] = ()
    shape: str = "box"      # box, db (a cylinder), queue, client

    def __post_init__(self):
        v.name("name", self.name)
        v.one_of("plane", self.plane, PLANES)
        v.one_of("shape", self.shape, ("box", "db", "queue", "client"))
        if self.label is not None and (not isinstance(self.label, str) or len(self.label) > 200):
            raise TypeError(f"label must be a string of at most 200 characters or None; "
                            f"got {self.label!r:.80}")
        if isinstance(self.uses, (str, bytes)) or not isinstance(self.uses, Iterable):
            raise TypeError(f"uses must be a tuple of node names; got {self.uses!r}")
        self.uses = tuple(self.uses)
        for u in self.uses:
            v.name("uses", u)

    @property
    def title(self) -> str:
        return self.label or self.name


def Store(name: str, plane: str = "state", label: str | None = None,
          uses: tuple[str, ...] = ()) -> Node:
    """A database, cache or queue: drawn in the diagram, not an HTTP server."""
    return Node(name, plane, label, uses, shape="db")


class Service(Node):
    """An aiohttp application with a name, a plane, routes, faults and an outbound client.

    ``max_concurrency`` bounds how many requests the service works on at once, like a fixed
    pool of worker threads; further requests wait for a slot (``when_full="wait"``) or are
    turned away at once with 503 (``when_full="reject"``).
    """

    def __init__(self, name: str, plane: str = "service", *, label: str | None = None,
                 uses: tuple[str, ...] = (), max_concurrency: int | None = None,
                 when_full: str = "wait", pool_size: int = 100):
        super().__init__(name, plane, label, uses, "box")
        self.max_concurrency = v.optional(v.positive, "max_concurrency", max_concurrency,
                                          integer=True, high=v.MAX_WORKERS)
        self.when_full = v.one_of("when_full", when_full, ("wait", "reject"))
        self.pool_size = v.positive("pool_size", pool_size, integer=True, high=MAX_POOL)
        self.routes: list[tuple[str, str, Any]] = []
        self.faults = Faults(name)
        self.topology: Topology | None = None
        self.port: int | None = None
        self.in_flight = 0
        self.handled = 0
        self.rejected = 0
        self.errors = 0
        self._runner: web.AppRunner | None = None
        self._site: web.TCPSite | None = None
        self._session: aiohttp.ClientSession | None = None
        self._slots: asyncio.Semaphore | None = None
        self._down = False

    # -- defining routes -------------------------------------------------------------------
    def route(self, method: str, path: str):
        """Decorator registering ``async def handler(request)`` for ``method path``.

        A handler may return a dict or list (sent as JSON), a str (text) or a ``web.Response``.
        """
        v.one_of("method", method, METHODS)
        if not isinstance(path, str) or not path.startswith("/"):   # a pattern: regexes allowed
            raise ValueError(f"path must be a route pattern starting with '/'; got {path!r}")
        if self._runner is not None:
            raise RuntimeError(f"service {self.name!r} is running; add routes before starting it")

        def register(handler):
            if not asyncio.iscoroutinefunction(handler):
                raise TypeError(f"handler for {method} {path} must be an async function")
            self.routes.append((method, path, handler))
            return handler
        return register

    def get(self, path: str):
        return self.route("GET", path)

    def post(self, path: str):
        return self.route("POST", path)

    # -- calling other services ------------------------------------------------------------
    async def call(self, target: str, method: str, path: str, **kwargs) -> Any:
        """Call another service of the topology by name; see :meth:`Topology.call`."""
        if self.topology is None:
            raise RuntimeError(f"service {self.name!r} is not part of a running topology")
        return await self.topology.call(target, method, path, caller=self.name, **kwargs)

    @property
    def url(self) -> str:
        if self.port is None:
            raise RuntimeError(f"service {self.name!r} is not running")
        return f"http://{HOST}:{self.port}"

    # -- down and up: connection refused, then back ------------------------------------------
    async def down(self) -> None:
        """Stop listening (new connections are refused) and reset kept-alive ones."""
        if self._site is not None and not self._down:
            self._down = True
            await self._site.stop()
            self._site = None

    async def up(self) -> None:
        """Listen again on the same port."""
        if self._down:
            self._site = web.TCPSite(self._runner, HOST, self.port, reuse_address=True)
            await self._site.start()
            self._down = False

    @property
    def is_down(self) -> bool:
        return self._down

    # -- lifecycle (driven by Topology) -------------------------------------------------------
    def _make_app(self) -> web.Application:
        app = web.Application(middlewares=[self._middleware])
        for method, path, handler in self.routes:
            app.router.add_route(method, path, self._wrap(handler))
        app.router.add_get("/health", self._health)
        return app

    async def _health(self, request):
        return web.json_response({"service": self.name, "status": "up",
                                  "in_flight": self.in_flight})

    def _wrap(self, handler):
        async def wrapped(request):
            try:
                result = await handler(request)
            except CallError as e:
                # A dependency failed and the handler did not cope: answer 502 as a gateway
                # does, rather than a stack trace on stderr.
                self.errors += 1
                return web.json_response({"error": str(e), "service": self.name}, status=502)
            except web.HTTPException:
                raise
            except Exception as e:
                self.errors += 1
                return web.json_response({"error": f"{type(e).__name__}: {e}",
                                          "service": self.name}, status=500)
            if isinstance(result, web.StreamResponse):
                return result
            if isinstance(result, str):
                return web.Response(text=result)
            return web.json_response(result)
        return wrapped

    @web.middleware
    async def _middleware(self, request: web.Request, handler):
        route = request.match_info.route.resource.canonical if request.match_info.route.resource \
            else request.path
        if self._down:
            request.transport.abort()  # a kept-alive connection to a service that is down
            raise asyncio.CancelledError
        trace_id = request.headers.get(tr.TRACE_HEADER)
        parent = request.headers.get(tr.PARENT_HEADER)
        try:   # a malformed header is the caller's error (400), not a traceback on stderr
            ctx = (trace_id, int(parent)) if trace_id and parent else None
            deadline = (dl.Deadline.from_header(request.headers[dl.HEADER])
                        if dl.HEADER in request.headers else None)
        except (TypeError, ValueError) as e:
            return self._answer(web.json_response({"error": f"bad header: {e}"}, status=400),
                                route)
        token = tr.current.set(ctx)
        try:
            with dl.scope(deadline):
                if deadline is not None and deadline.expired():
                    return self._answer(web.json_response(
                        {"error": "deadline exceeded on arrival"}, status=504), route)
                if self._slots is not None and self._slots.locked() and self.when_full == "reject":
                    self.rejected += 1
                    return self._answer(web.json_response(
                        {"error": "overloaded"}, status=503, headers={"X-Toy-Overloaded": "1"}),
                        route)
                if self._slots is None:
                    return await self._serve(request, handler, route, trace_id)
                async with self._slots:
                    return await self._serve(request, handler, route, trace_id)
        finally:
            tr.current.reset(token)

    async def _serve(self, request, handler, route, trace_id):
        self.in_flight += 1
        try:
            d = self.faults.decide(route, request.path, trace_id)
            if d.delay:
                await asyncio.sleep(d.delay)
            if d.hang:
                await asyncio.Event().wait()   # never set: only cancellation ends it
            if d.reset:
                request.transport.abort()
                raise asyncio.CancelledError
            if d.status is not None:
                return self._answer(web.json_response(
                    {"error": "injected fault", "service": self.name}, status=d.status), route)
            return self._answer(await handler(request), route)
        finally:
            self.in_flight -= 1
            self.handled += 1

    @staticmethod
    def _answer(response, route):
        response.headers[ROUTE_HEADER] = route
        return response

    async def _start(self, topology: Topology) -> None:
        self.topology = topology
        self._slots = asyncio.Semaphore(self.max_concurrency) if self.max_concurrency else None
        # handler_cancellation: when a caller gives up (timeout), the server stops working on
        # the request, as a well-behaved server does; without it hung handlers outlive callers.
        self._runner = web.AppRunner(self._make_app(), handle_signals=False, access_log=None,
                                     handler_cancellation=True, shutdown_timeout=0.5)
        await self._runner.setup()
        self._site = web.TCPSite(self._runner, HOST, 0)
        await self._site.start()
        self.port = self._runner.addresses[0][1]
        self._session = topology._new_session(self.pool_size)

    async def _stop(self) -> None:
        try:
            if self._session is not None:
                await self._session.close()
        finally:
            self._session = None
            if self._runner is not None:
                await self._runner.cleanup()
            self._runner, self._site, self.port, self._down = None, None, None, False
            self.topology = None
            _forget_middleware_chains()


@dataclass
class Reply:
    """What :meth:`Topology.call` returns with ``raw=True``."""
    status: int
    body: bytes
    headers: dict

    def json(self):
        return jsonlib.loads(self.body) if self.body else None


class Topology:
    """A set of services (and stores, for the diagram) that run together.

    ``async with Topology(a, b, c) as topo:`` starts them; the block's end stops them and
    releases everything. ``topo["users"]`` is a service; ``topo.tracer`` holds the spans.
    """

    def __init__(self, *nodes: Node, name: str = "topology", seed: int = 0):
        if not isinstance(name, str) or not name or len(name) > 200:
            raise TypeError(f"name must be a non-empty string of at most 200 characters; "
                            f"got {name!r:.80}")
        self.name = name
        self.nodes: dict[str, Node] = {}
        self.tracer = tr.Tracer()
        self.seed = v.seed("seed", seed)
        self._client_session: aiohttp.ClientSession | None = None
        self._tasks: set[asyncio.Task] = set()
        self._running = False
        for n in nodes:
            self.add(n)

    def add(self, node: Node) -> Node:
        if not isinstance(node, Node):
            raise TypeError(f"node must be a Service or a Store; got {node!r}")
        if node.name in self.nodes:
            raise ValueError(f"name must be unique in a topology; {node.name!r} is already used")
        if self._running and isinstance(node, Service):
            raise RuntimeError("add services before the topology starts")
        self.nodes[node.name] = node
        if isinstance(node, Service):
            node.faults.reseed(self.seed)
        return node

    @property
    def services(self) -> dict[str, Service]:
        return {k: n for k, n in self.nodes.items() if isinstance(n, Service)}

    def __getitem__(self, name: str) -> Node:
        return self._node("service", name)

    def _node(self, param: str, name) -> Node:
        if not isinstance(name, str) or name not in self.nodes:
            known = ", ".join(map(repr, self.nodes)) or "none"
            raise UnknownService(f"{param} must be the name of a service of this topology "
                                 f"({known}); got {name!r}")
        return self.nodes[name]

    def service(self, name: str, *, param: str = "service") -> Service:
        node = self._node(param, name)
        if not isinstance(node, Service):
            raise ValueError(f"{param} must be a service; {name!r} is a store in this topology "
                             f"(services: {', '.join(map(repr, self.services))})")
        return node

    # -- lifecycle ---------------------------------------------------------------------------
    def _new_session(self, pool_size: int) -> aiohttp.ClientSession:
        # timeout=None: no timeout unless the caller asks for one (the anti-pattern is the
        # default, on purpose; chapter 5 is about choosing one).
        return aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=pool_size, force_close=False),
            timeout=aiohttp.ClientTimeout(total=None), raise_for_status=False)

    async def __aenter__(self) -> Topology:
        if self._running:
            raise RuntimeError(f"topology {self.name!r} is already running")
        self._running = True
        try:
            self._client_session = self._new_session(1000)
            for svc in self.services.values():
                await svc._start(self)
        except BaseException:
            await self._stop()
            raise
        return self

    async def __aexit__(self, *exc) -> None:
        await self._stop()

    async def _stop(self) -> None:
        # Cancel background tasks first (they may be calling services), then close everything.
        # Shielded so that a second interrupt during cleanup does not leak what is left.
        await asyncio.shield(self._stop_all())

    async def _stop_all(self) -> None:
        tasks = [t for t in self._tasks if not t.done()]
        for t in tasks:
            t.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        self._tasks.clear()
        errors = []
        for svc in self.services.values():
            try:
                await svc._stop()
            except Exception as e:  # keep closing the others
                errors.append(e)
        if self._client_session is not None:
            await self._client_session.close()
            self._client_session = None
        self._running = False
        if errors:
            raise errors[0]

    def spawn(self, coro) -> asyncio.Task:
        """Run a background task owned by the topology: it is cancelled when the block ends."""
        if not asyncio.iscoroutine(coro):
            raise TypeError(f"coro must be a coroutine (call the async function: "
                            f"spawn(work()), not spawn(work)); got {coro!r}")
        if not self._running:
            coro.close()
            raise RuntimeError("start the topology (async with) before spawning tasks")
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    # -- calls -------------------------------------------------------------------------------
    async def call(self, target: str, method: str, path: str, *, caller: str = CLIENT,
                   json: Any = None, params: dict | None = None, timeout: float | None = None,
                   connect_timeout: float | None = None, trace_id: str | None = None,
                   headers: dict | None = None, raw: bool = False) -> Any:
        """Call ``target`` and return its JSON answer (or a :class:`Reply` with ``raw=True``).

        Raises :class:`CallError` for an HTTP error status (unless ``raw``) or no answer.
        ``timeout`` bounds the whole call in seconds (None: wait forever, the anti-pattern);
        an inherited deadline shortens it and travels on to ``target``.
        """
        if not self._running:
            raise RuntimeError(f"topology {self.name!r} is not running; use 'async with'")
        svc = self.service(target, param="target")
        v.one_of("method", method, METHODS)
        check_path(path)
        v.optional(v.seconds, "timeout", timeout)
        v.optional(v.seconds, "connect_timeout", connect_timeout)
        _check_call_extras(json, params, trace_id, headers, raw)
        session = (self._client_session if caller == CLIENT
                   else self.service(caller, param="caller")._session)
        if session is None:
            raise RuntimeError(f"service {caller!r} is not running")

        ctx = tr.current.get()
        if trace_id is None:
            trace_id = ctx[0] if ctx else self.tracer.new_trace_id()
        parent = ctx[1] if (ctx and ctx[0] == trace_id) else None
        span_id = self.tracer.new_span_id()
        hdrs = {tr.TRACE_HEADER: trace_id, tr.PARENT_HEADER: str(span_id), **(headers or {})}
        deadline = dl.current()
        kind = "timeout"
        if deadline is not None:
            if deadline.expired():
                self._record(trace_id, span_id, parent, caller, target, method, path, path,
                             self.tracer.clock(), "deadline", 0, 0, 0)
                raise CallError(caller, target, path, "deadline", detail="no time left")
            if timeout is None or deadline.remaining() < timeout:
                timeout, kind = deadline.remaining(), "deadline"
            hdrs[dl.HEADER] = deadline.to_header()
        body = b"" if json is None else jsonlib.dumps(json).encode()
        if json is not None:
            hdrs["Content-Type"] = "application/json"

        start = self.tracer.clock()
        status: int | str = "cancelled"
        route, resp_body, resp_headers, wire = path, b"", {}, 0
        try:
            async with session.request(
                    method, _url(svc, path), data=body or None, params=params, headers=hdrs,
                    timeout=aiohttp.ClientTimeout(total=timeout, connect=connect_timeout)) as r:
                resp_body = await r.read()
                status, route, resp_headers = r.status, r.headers.get(ROUTE_HEADER, path), \
                    dict(r.headers)
                wire = _wire_bytes(r, body, resp_body)
        except asyncio.TimeoutError:
            status = kind
        except aiohttp.ClientConnectorError:
            status = "refused"
        except (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError,
                aiohttp.ClientPayloadError):
            status = "reset"
        finally:
            self._record(trace_id, span_id, parent, caller, target, method, route, path, start,
                         status, len(body), len(resp_body), wire)
        if isinstance(status, str):
            raise CallError(caller, target, path, status)
        if raw:
            return Reply(status, resp_body, resp_headers)
        if status >= 400:
            overloaded = resp_headers.get("X-Toy-Overloaded") == "1"
            raise CallError(caller, target, path, "overloaded" if overloaded else "http", status,
                            _error_detail(resp_body))
        return jsonlib.loads(resp_body) if resp_body else None

    def _record(self, trace_id, span_id, parent, caller, callee, method, route, path, start,
                status, req_bytes, resp_bytes, wire_bytes):
        self.tracer.record(tr.Span(trace_id, span_id, parent, caller, callee, method, route,
                                   path, start, self.tracer.clock(), status, req_bytes,
                                   resp_bytes, wire_bytes))



async def sample_busy(svc: Service, every: float, rows: list, t0: float) -> None:
    """Append ``{t_s, busy}`` (the service's busy workers) to ``rows`` every ``every`` seconds.

    Run it with ``topo.spawn`` so that it ends with the topology at the latest.
    """
    if not isinstance(svc, Service):
        raise TypeError(f"svc must be a Service; got {svc!r}")
    v.number("every", every, low=0.0005, high=v.MAX_SECONDS)
    if not isinstance(rows, list):
        raise TypeError(f"rows must be a list to append samples to; got {rows!r}")
    v.number("t0", t0, finite=True)
    while True:
        rows.append({"t_s": now() - t0, "busy": svc.in_flight})
        await asyncio.sleep(every)


async def gather_or_cancel(*aws):
    """Like ``asyncio.gather``, but when one call fails the others are cancelled at once.

    A composite that answers 502 because one backend failed should not leave the other calls
    running (and holding connections) behind its back.
    """
    for a in aws:
        if not inspect.isawaitable(a):
            raise TypeError(f"aws must be awaitables (coroutines or tasks); got {a!r}")
    tasks = [asyncio.ensure_future(a) for a in aws]
    try:
        return await asyncio.gather(*tasks)
    except BaseException:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise


def _forget_middleware_chains() -> None:
    """Drop aiohttp's cache of built middleware chains, so a stopped service can be collected.

    aiohttp (3.9 and later) memoises each (handler, app) pair's middleware chain in a
    module-level LRU of 1,024 entries; every entry holds the handler and the app, and through
    them the Service, its routes and whatever its handlers close over, until 1,024 newer
    entries push it out. Rerunning an experiment in one kernel then keeps every run's services
    alive. Clearing it costs the services still running one rebuild of a chain (a few
    microseconds) on their next request. Nothing to do if a later aiohttp drops the cache.
    """
    cache = getattr(web_app, "_cached_build_middleware", None)
    if callable(getattr(cache, "cache_clear", None)):
        cache.cache_clear()


def _url(svc: Service, path: str) -> URL:
    """The callee's URL for ``path``: host and port come from the service, never from the path."""
    path, _, query = path.partition("?")
    url = URL.build(scheme="http", host=HOST, port=svc.port, path=path, query_string=query)
    if url.host != HOST or url.port != svc.port:     # cannot happen after check_path; kept so
        raise ValueError(f"path must stay on {svc.name!r}; got {path!r}")  # it never can
    return url


def _check_call_extras(json, params, trace_id, headers, raw) -> None:
    """The optional arguments of a call, checked before anything is sent."""
    if json is not None:
        try:
            jsonlib.dumps(json, allow_nan=False)      # NaN and infinity are not JSON
        except (TypeError, ValueError) as e:
            raise TypeError(f"json must be JSON-serialisable (dict, list, str, finite number, "
                            f"bool, None); got {type(json).__name__}: {e}") from None
    if params is not None:
        if not isinstance(params, Mapping):
            raise TypeError(f"params must be a dict of query parameters or None; got {params!r}")
        for k, val in params.items():
            if not isinstance(k, str) or isinstance(val, bool) \
                    or not isinstance(val, (str, int, float)):
                raise TypeError(f"params must map str to str, int or float; got {k!r}: {val!r}")
    if trace_id is not None:
        _header_text("trace_id", trace_id, limit=200)
    if headers is not None:
        if not isinstance(headers, Mapping):
            raise TypeError(f"headers must be a dict of str to str or None; got {headers!r}")
        for k, val in headers.items():
            _header_text("headers", k, limit=200)
            _header_text(f"headers[{k!r}]", val)
    if not isinstance(raw, bool):
        raise TypeError(f"raw must be True or False; got {raw!r}")


def _error_detail(body: bytes) -> str:
    """The ``error`` field of a toy service's error answer, so the cause travels upstream."""
    try:
        return str(jsonlib.loads(body).get("error", ""))[:300]
    except (ValueError, AttributeError):
        return ""


def _wire_bytes(r: aiohttp.ClientResponse, req_body: bytes, resp_body: bytes) -> int:
    """HTTP/1.1 bytes both ways: request line, headers and body, status line, headers and body.

    TCP/IP framing is not counted. The headers are what makes many small calls expensive.
    """
    info = r.request_info
    req = len(f"{info.method} {info.url.raw_path_qs} HTTP/1.1\r\n") + 2 + len(req_body)
    req += sum(len(k) + len(val) + 4 for k, val in info.headers.items())
    resp = len(f"HTTP/1.1 {r.status} {r.reason}\r\n") + 2 + len(resp_body)
    resp += sum(len(k) + len(val) + 4 for k, val in r.raw_headers)
    return req + resp


