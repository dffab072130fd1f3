"""A design that runs: a workspace of SQLite files, a topology, and what the design starts.

Chapters whose designs own databases (chapter 1's monolith, chapter 4's checkout) share one
lifecycle: ``async with design:`` opens the workspace, lets the design open its databases,
starts the services, then lets the design start its relays, consumers and orchestrators on the
same exit stack. Leaving the block, normally, on error or on cancellation, closes all of it in
reverse order and deletes the databases with their folder.
"""
from __future__ import annotations

from contextlib import AsyncExitStack

from .db import Workspace
from .services import Topology


class Experiment:
    design = ""          # "before" / "after": names the running design in errors and folders
    prefix = "toylib"    # the workspace folder's prefix

    def __init__(self, topology: Topology):
        self.topology = topology
        self.ws: Workspace | None = None
        self._stack: AsyncExitStack | None = None

    def diagram(self, **kwargs):
        return self.topology.diagram(**kwargs)

    # -- hooks, in the order they run ------------------------------------------------------------
    def _workspace(self) -> Workspace:
        return Workspace(prefix=f"{self.prefix}-{self.design}-", wal=True)

    async def _on_workspace(self) -> None:
        """Open what every design of the chapter needs (before :meth:`_open`)."""

    async def _open(self) -> None:
        """Open this design's databases in ``self.ws``."""

    async def _start(self, stack: AsyncExitStack) -> None:
        """Start what runs beside the services (relays, consumers), owned by ``stack``."""

    def _forget(self) -> None:
        """Drop handles to what the workspace has closed."""

    # -- the scope -------------------------------------------------------------------------------
    async def __aenter__(self):
        if self._stack is not None:
            raise RuntimeError(f"the {self.design} design is already running")
        stack = AsyncExitStack()
        try:
            self.ws = await stack.enter_async_context(self._workspace())
            await self._on_workspace()
            await self._open()
            await stack.enter_async_context(self.topology)
            await self._start(stack)
        except BaseException:
            try:
                await stack.aclose()
            finally:
                self._forget()
            raise
        self._stack = stack
        return self

    async def __aexit__(self, *exc) -> None:
        stack, self._stack = self._stack, None
        try:
            await stack.aclose()
        finally:
            self._forget()
