"""The one contract every chapter follows: knobs -> design -> experiments -> claims.

Each chapter module ``toylib/chapters/chNN_<idea>.py`` provides, under these names:

* ``CHAPTER``: its one name, ``"chNN_<idea>"`` (the notebook, the lab, the tests and the claim
  ids use it too);
* ``Knobs``: a frozen dataclass of everything a reader may turn, validated when built (a bad
  value raises at once, naming the field and the allowed range);
* designs: subclasses of :class:`Design`, listed in ``DESIGNS = {"before": ..., "after": ...}``
  (a chapter may add more, e.g. ``"dataloader"``); :func:`build` makes one from knobs;
* experiments: ``async def <name>(knobs, *, ...) -> <Result>``. An experiment builds the
  designs it compares, interleaves their runs, releases every port, task and file when it
  returns, and returns a result object; a function that measures one running design takes the
  design first (``async def page_latency(design, n)``);
* ``CLAIMS``: the source article's claims for the chapter, declared once
  (:class:`toylib.claims.Claim`), and ``findings(...) -> list[Finding]`` that judges them from
  the experiments' results, so the chapter's last section and chapter 7 (which lists every claim) render
  the same verdicts;
* ``AUDIT_KNOBS`` and ``async def audit(knobs=AUDIT_KNOBS) -> list[Finding]``: a small run of
  the experiments behind every claim, for chapter 7, which lists every claim.

A :class:`Design` is built from knobs, started and stopped with ``async with`` (which owns its
topology and, for designs with databases, a workspace of real SQLite files and whatever the
design runs beside its services), and shows itself with :meth:`Design.diagram`.
"""
from __future__ import annotations

from contextlib import AsyncExitStack

from toylib.core.clock import now
from toylib.core.services import Topology
from toylib.data.bus import EventBus
from toylib.data.db import Workspace
from toylib.present.diagrams import flowchart


class Design:
    """One design of a chapter, built from the chapter's knobs and run inside ``async with``.

    Subclasses set ``chapter`` and ``name`` and implement :meth:`build` (the topology). Designs
    that own databases set ``databases = True`` and override the hooks, which run in this order
    on entry: :meth:`open_databases` (in ``self.ws``), the topology starts, then
    :meth:`start_beside` (relays, consumers, orchestrators, on the design's exit stack). Leaving
    the block, normally, on error or on cancellation, closes everything in reverse order, then
    :meth:`forget` drops the handles, and the workspace folder is deleted.
    """
    chapter = ""         # "chNN_<idea>"
    name = ""            # "before", "after", ...
    databases = False    # True: a Workspace of SQLite files is opened for the design
    wal = True           # the workspace's journal mode (when databases is True)

    def __init__(self, knobs):
        self.knobs = knobs
        self.ws: Workspace | None = None
        self._stack: AsyncExitStack | None = None
        self.topology: Topology = self.build()
        if not isinstance(self.topology, Topology):
            raise TypeError(f"{type(self).__name__}.build() must return a Topology; "
                            f"got {type(self.topology).__name__}")

    # -- what a chapter writes ---------------------------------------------------------------
    def build(self) -> Topology:
        raise NotImplementedError

    def workspace(self) -> Workspace:
        return Workspace(prefix=f"{self.chapter or 'toylib'}-{self.name}-", wal=self.wal)

    async def open_databases(self) -> None:
        """Open this design's databases in ``self.ws`` (designs with ``databases = True``)."""

    async def start_beside(self, stack: AsyncExitStack) -> None:
        """Start what runs beside the services (relays, consumers), owned by ``stack``."""

    async def open_bus(self, stack: AsyncExitStack):
        """The event bus a design with events uses: toylib's in-process one. A subclass may
        return another with the same interface (the appendix's broker-backed bus), entered
        on ``stack``, without touching the design's code; :meth:`workspace` is the same hook
        for the databases."""
        return EventBus(clock=now)

    def forget(self) -> None:
        """Drop handles to what the workspace has closed."""

    # -- what every design has ---------------------------------------------------------------
    @property
    def running(self) -> bool:
        return self._stack is not None

    def require_running(self) -> None:
        if not self.running:
            raise RuntimeError(f"the {self.name or type(self).__name__} design is not running: "
                               f"use it inside `async with`")

    @property
    def tracer(self):
        return self.topology.tracer

    def service(self, name: str):
        return self.topology.service(name)

    async def call(self, target: str, method: str, path: str, **kwargs):
        """A call from outside (the client) into the running design."""
        return await self.topology.call(target, method, path, **kwargs)

    def diagram(self, **kwargs):
        """A Mermaid flowchart of this design in the four planes (see toylib.present.diagrams)."""
        return flowchart(self.topology, **kwargs)

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"<{type(self).__name__} {self.chapter}:{self.name} {state}>"

    # -- the scope ---------------------------------------------------------------------------
    async def __aenter__(self):
        if self._stack is not None:
            raise RuntimeError(f"the {self.name} design is already running")
        stack = AsyncExitStack()
        try:
            if self.databases:
                self.ws = await stack.enter_async_context(self.workspace())
                await self.open_databases()
            await stack.enter_async_context(self.topology)
            await self.start_beside(stack)
        except BaseException:
            try:
                await stack.aclose()
            finally:
                self.forget()
            raise
        self._stack = stack
        return self

    async def __aexit__(self, *exc) -> None:
        stack, self._stack = self._stack, None
        try:
            if stack is not None:
                await stack.aclose()
        finally:
            self.forget()


def knobs_or_default(knobs_type: type, knobs, default=None):
    """``knobs`` if it is a ``knobs_type``; ``default`` (or ``knobs_type()``) for None; anything
    else is refused, naming the chapter's knobs type."""
    if knobs is None:
        return default if default is not None else knobs_type()
    if not isinstance(knobs, knobs_type):
        raise TypeError(f"knobs must be a {knobs_type.__module__.rsplit('.', 1)[-1]}.Knobs or "
                        f"None (the defaults); got {type(knobs).__name__}")
    return knobs


def running_design(design_type: type, design, param: str = "design"):
    """``design`` if it is a running ``design_type``; anything else is refused, naming ``param``
    (the probes of a chapter take a running design first)."""
    if not isinstance(design, design_type):
        chapter = getattr(design_type, "chapter", "") or "chapter's"
        raise TypeError(f"{param} must be a running {chapter} design (from design(...), inside "
                        f"`async with`); got {type(design).__name__}")
    design.require_running()
    return design


def build(designs: dict, name: str, knobs):
    """``designs[name](knobs)``, refusing an unknown name with the names that exist."""
    if not isinstance(name, str) or name not in designs:
        raise ValueError(f"name must be one of {sorted(designs)}; got {name!r}")
    return designs[name](knobs)
