"""`make bench`: how close the harness comes to the ideal, and how long the chapters take.

Measures, on this machine:
  1. a 5-hop synchronous chain with delays 50/30/200/100/150 ms (ideal 530 ms), p50 and p99;
  2. the 1+10+10 pattern at 20 ms per call, serial (ideal 420 ms) and in parallel (ideal 40 ms:
     the first call, then the 20 others together);
  3. the per-hop overhead (an empty hop, sequential);
  4. the whole book built from scratch (every notebook executed) and rebuilt with nothing
     changed, and each notebook's execution time from the build's execution cache.
Prints measured / ideal ratios (--no-book skips the book builds). Not part of `make test`: speed targets are reported, not asserted.
"""
from __future__ import annotations

import asyncio
import platform
import statistics
import sys
import time
from pathlib import Path


from toylib import Latency, Service, Topology
from toylib.core import load

ROOT = Path(__file__).resolve().parent.parent
CHAIN = [("cart", 50), ("customer", 30), ("payment", 200), ("inventory", 100), ("shipping", 150)]


def chain_topology() -> Topology:
    checkout = Service("checkout", "edge")
    deps = []
    for name, ms in CHAIN:
        svc = Service(name)

        @svc.get("/work")
        async def work(request):
            return {"ok": True}
        svc.faults.add(Latency(ms, 0, "fixed"))
        deps.append(svc)

    @checkout.post("/checkout")
    async def do_checkout(request):
        for name, _ in CHAIN:                     # one after another: the anti-pattern
            await checkout.call(name, "GET", "/work")
        return {"ok": True}

    return Topology(checkout, *deps)


def fanout_topology(ms: float) -> Topology:
    gw = Service("gateway", "edge")
    users = Service("users")

    @users.get("/item/{i}")
    async def item(request):
        return {"i": request.match_info["i"]}
    users.faults.add(Latency(ms, 0, "fixed"))

    @gw.get("/serial")
    async def serial(request):
        for i in range(21):
            await gw.call("users", "GET", f"/item/{i}")
        return {}

    @gw.get("/parallel")
    async def parallel(request):
        await gw.call("users", "GET", "/item/0")
        await asyncio.gather(*(gw.call("users", "GET", f"/item/{i}") for i in range(1, 21)))
        return {}

    @gw.get("/empty")
    async def empty(request):
        return {}
    return Topology(gw, users)


async def measure() -> list[tuple[str, float, float]]:
    rows = []
    async with chain_topology() as topo:
        r = await load.sequential(lambda i: topo.call("checkout", "POST", "/checkout"), n=30,
                                  progress=False)
        s = r.summary()
        rows += [("5-hop chain p50 (ideal 530 ms)", s["p50_ms"], 530.0),
                 ("5-hop chain p99 (ideal 530 ms)", s["p99_ms"], 530.0)]
    async with fanout_topology(20) as topo:
        for _ in range(3):   # interleaved
            ser = await load.sequential(lambda i: topo.call("gateway", "GET", "/serial"), n=5,
                                        progress=False)
            par = await load.sequential(lambda i: topo.call("gateway", "GET", "/parallel"), n=5,
                                        progress=False)
            rows += [("1+10+10 serial at 20 ms (ideal 420 ms)", ser.summary()["p50_ms"], 420.0),
                     ("1+10+10 parallel at 20 ms (ideal 40 ms)", par.summary()["p50_ms"], 40.0)]
        hop = await load.sequential(lambda i: topo.call("gateway", "GET", "/empty"), n=500,
                                    progress=False)
        rows.append(("one empty hop p50 (ideal 0 ms)", hop.summary()["p50_ms"], 0.0))
    merged: dict[str, list] = {}
    for name, m, ideal in rows:
        merged.setdefault(name, [ideal]).append(m)
    return [(n, statistics.median(v[1:]), v[0]) for n, v in merged.items()]


def time_book() -> tuple[float, float, list[tuple[str, float]]]:
    """Build the whole book twice into a temporary folder: from scratch (every notebook
    executed), then again with nothing changed (everything from the execution cache)."""
    import shutil
    import subprocess
    import tempfile

    from jupyter_cache import get_cache

    jb = Path(sys.executable).parent / "jupyter-book"
    out = Path(tempfile.mkdtemp(prefix="bench-book-"))
    try:
        times = []
        for _ in range(2):
            t = time.perf_counter()
            subprocess.run([str(jb), "build", str(ROOT), "--path-output", str(out), "-W", "-n",
                            "--keep-going", "-q"], check=True, stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL)
            times.append(time.perf_counter() - t)
        cache = get_cache(str(out / "_build" / ".jupyter_cache"))
        per_nb = sorted((Path(r.uri).relative_to(ROOT).as_posix(),
                         float(r.data.get("execution_seconds", float("nan"))))
                        for r in cache.list_cache_records())
        return times[0], times[1], per_nb
    finally:
        shutil.rmtree(out, ignore_errors=True)


def main() -> int:
    print(f"machine: {platform.machine()}, {platform.system()} {platform.release()}, "
          f"Python {platform.python_version()}, {__import__('os').cpu_count()} cores")
    print(f"\n{'figure':45} {'measured':>10} {'ideal':>8} {'ratio':>7}")
    for name, m, ideal in asyncio.run(measure()):
        ratio = f"{m / ideal:.3f}" if ideal else "-"
        print(f"{name:45} {m:9.2f}  {ideal:7.1f} {ratio:>7}")
    if "--no-book" not in sys.argv:
        fresh, cached, per_nb = time_book()
        print(f"\n{'notebook (executed in the fresh build)':45} {'seconds':>10}")
        for name, secs in per_nb:
            print(f"{name:45} {secs:10.1f}")
        print(f"{'all notebooks':45} {sum(s for _, s in per_nb):10.1f}")
        print(f"\n{'book build, from scratch (target < 300 s)':45} {fresh:10.1f}")
        print(f"{'book build, nothing changed (target < 30 s)':45} {cached:10.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
