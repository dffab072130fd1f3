"""The one lifecycle of every chapter's designs: hooks in order, everything released, on error too."""
import pytest

from toylib import Service, Topology
from toylib.chapters.design import Design, build, knobs_or_default
from toylib.data.bus import EventBus


class Probe(Design):
    chapter, name, databases = "ch00_probe", "probe", True

    def __init__(self, fail_in=None):
        self.fail_in, self.calls = fail_in, []
        super().__init__(knobs=None)

    def build(self):
        svc = Service("svc")

        @svc.get("/x")
        async def x(request):
            return {}
        return Topology(svc)

    async def open_databases(self):
        self.calls.append("open")
        self.db = await self.ws.database("probe")

    async def start_beside(self, stack):
        self.calls.append("start")
        self.bus = await self.open_bus(stack)
        if self.fail_in == "start":
            raise RuntimeError("start failed")

    def forget(self):
        self.calls.append("forget")


async def test_hooks_run_in_order_and_everything_is_released():
    p = Probe()
    assert not p.running and "stopped" in repr(p)
    async with p as running:
        assert running is p and p.running
        folder = p.ws.path
        assert folder.exists() and p.topology["svc"].port
        assert isinstance(p.bus, EventBus)
        await p.call("svc", "GET", "/x")
        with pytest.raises(RuntimeError, match="already running"):
            await p.__aenter__()
    assert p.calls == ["open", "start", "forget"]
    assert not folder.exists()
    assert p.topology["svc"].port is None
    with pytest.raises(RuntimeError, match="not running"):
        p.require_running()


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


def test_build_refuses_an_unknown_name_and_build_must_return_a_topology():
    with pytest.raises(ValueError, match="name must be one of"):
        build({"probe": Probe}, "nope", None)

    class Bad(Design):
        def build(self):
            return "not a topology"
    with pytest.raises(TypeError, match="Topology"):
        Bad(None)


def test_knobs_or_default():
    class K:
        pass
    k = K()
    assert knobs_or_default(K, k) is k
    assert isinstance(knobs_or_default(K, None), K)
    with pytest.raises(TypeError, match="knobs must be"):
        knobs_or_default(K, 3)
