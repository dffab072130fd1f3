"""The shared lifecycle of designs that own databases: order of hooks, cleanup on error."""
import pytest

from toylib import Service, Topology
from toylib.chapters.design import Experiment


class Probe(Experiment):
    design = "probe"

    def __init__(self, fail_in=None):
        svc = Service("svc")

        @svc.get("/x")
        async def x(request):
            return {}
        super().__init__(Topology(svc))
        self.fail_in, self.calls = fail_in, []

    async def _on_workspace(self):
        self.calls.append("on_workspace")
        self.db = await self.ws.database("probe")

    async def _open(self):
        self.calls.append("open")

    async def _start(self, stack):
        self.calls.append("start")
        if self.fail_in == "start":
            raise RuntimeError("start failed")

    def _forget(self):
        self.calls.append("forget")


async def test_hooks_run_in_order_and_everything_is_released():
    p = Probe()
    async with p as running:
        assert running is p
        folder = p.ws.path
        assert folder.exists() and p.topology["svc"].port
        await p.topology.call("svc", "GET", "/x")
        with pytest.raises(RuntimeError, match="already running"):
            await p.__aenter__()
    assert p.calls == ["on_workspace", "open", "start", "forget"]
    assert not folder.exists()
    assert p.topology["svc"].port is None


async def test_an_error_while_starting_releases_what_was_opened():
    p = Probe(fail_in="start")
    with pytest.raises(RuntimeError, match="start failed"):
        async with p:
            pass
    assert p.calls[-1] == "forget"
    assert not p.ws.path.exists()
    assert p.topology["svc"].port is None
    async with Probe():      # and a design can run again afterwards
        pass
