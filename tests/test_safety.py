"""Safety: repeated experiments leak nothing, and no toylib server can bind beyond 127.0.0.1."""
from __future__ import annotations

import ast
import asyncio
import gc
import ipaddress
import re
import sys
import warnings
from contextlib import contextmanager
from pathlib import Path

import aiohttp
import pytest

from toylib.testing import fd_count, other_tasks, settle, thread_count
from toylib.core import services
from toy_experiment import profile_experiment, profile_topology

TOYLIB = Path(services.__file__).resolve().parent.parent
RUNS = 20
SLACK = 3       # a small constant: lazily created loop or library objects, never growth


@contextmanager
def strict_resources():
    """ResourceWarning is an error; errors in __del__ and loop exception reports are collected.

    A ResourceWarning raised inside a destructor cannot propagate, so the unraisable hook and
    the loop's exception handler are where leaks show up; the caller asserts both stay empty.
    """
    problems: list[str] = []
    loop = asyncio.get_running_loop()
    old_hook, old_handler = sys.unraisablehook, loop.get_exception_handler()
    sys.unraisablehook = lambda u: problems.append(f"{u.exc_type.__name__}: {u.exc_value}")
    loop.set_exception_handler(lambda _loop, ctx: problems.append(ctx.get("message", str(ctx))))
    gc.collect()
    gc.freeze()     # what existed before is not under test: later collections skip it (fast)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", ResourceWarning)
            yield problems
            gc.collect()
    finally:
        gc.unfreeze()
        sys.unraisablehook = old_hook
        loop.set_exception_handler(old_handler)


async def chapter2_experiment(seed: int) -> None:
    """What chapter 2 does (core only): build the N+1 design, a few pages, leave the block."""
    assert await profile_experiment(seed, pages=3, table_kb=1) == 3 * (1 + 1 + 3 + 3)


async def snapshot() -> tuple[int, int, int]:
    await settle()
    return fd_count(), len(other_tasks()), thread_count()


async def test_twenty_experiments_leak_no_fds_tasks_or_threads():
    with strict_resources() as problems:
        await chapter2_experiment(0)                 # warm up lazily created objects
        base = await snapshot()
        history = []
        for run in range(RUNS):
            await chapter2_experiment(run)
            history.append(await snapshot())
    fds, tasks, threads = zip(*history)
    assert not problems, problems
    assert max(fds) <= base[0] + SLACK, f"fds grew from {base[0]}: {fds}"
    assert max(tasks) <= base[1], f"tasks left behind: {tasks}"
    assert max(threads) <= base[2] + 1, f"threads grew from {base[2]}: {threads}"
    # flat, not creeping: the last runs hold no more than the first ones
    assert fds[-1] <= fds[0] and threads[-1] <= threads[0]


async def test_interrupted_experiments_leak_nothing_either():
    """The same, with the kernel interrupted in the middle of a page every time."""
    async def interrupted():
        async with profile_topology(n_posts=5, n_friends=5, latency_ms=20, table_kb=1) as b:
            await b.call("gateway", "GET", "/profile/1")

    with strict_resources() as problems:
        base = await snapshot()
        for _ in range(5):
            task = asyncio.ensure_future(interrupted())
            await asyncio.sleep(0.05)                 # mid-page: a few calls have been made
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
        after = await snapshot()
    assert not problems, problems
    assert after[0] <= base[0] + SLACK and after[1] <= base[1] and after[2] <= base[2] + 1


async def test_the_harness_does_notice_a_leak():
    """The check above bites: an unclosed session is reported."""
    with strict_resources() as problems:
        session = aiohttp.ClientSession()
        del session
        gc.collect()
    assert any("Unclosed" in p or "ResourceWarning" in p for p in problems), problems


# -- no bind address other than 127.0.0.1 ----------------------------------------------------
SERVER_CALLS = {"TCPSite": 1, "create_server": 1, "start_server": 1, "bind": 0, "run_app": None,
                "SockSite": None, "HTTPServer": 0, "ThreadingHTTPServer": 0, "serve": None}


def _sources() -> list[Path]:
    files = sorted(TOYLIB.rglob("*.py"))
    assert len(files) >= 10 and (TOYLIB / "core" / "services.py") in files
    return files


def _host_arg(call: ast.Call, position: int | None):
    for kw in call.keywords:
        if kw.arg in ("host", "address"):
            return kw.value
    if position is not None and len(call.args) > position:
        return call.args[position]
    return None


def _is_loopback(node, constants: dict) -> bool:
    if isinstance(node, ast.Constant):
        value = node.value
    elif isinstance(node, ast.Name) and node.id in constants:
        value = constants[node.id]
    elif isinstance(node, ast.Attribute) and node.attr == "HOST":
        value = services.HOST
    elif isinstance(node, ast.Tuple) and node.elts:       # sock.bind((host, port))
        return _is_loopback(node.elts[0], constants)
    else:
        return False
    return value == "127.0.0.1"


def bind_problems(source: str, filename: str) -> list[str]:
    """Every server-creating call whose host is not provably 127.0.0.1, and every literal
    address other than 127.0.0.1."""
    tree = ast.parse(source, filename)
    constants = {"HOST": services.HOST}
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant):
            for t in node.targets:
                if isinstance(t, ast.Name):
                    constants[t.id] = node.value.value
    problems = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            f = node.func
            name = f.attr if isinstance(f, ast.Attribute) else getattr(f, "id", None)
            if name in SERVER_CALLS:
                pos = SERVER_CALLS[name]
                if pos is None:
                    problems.append(f"{filename}:{node.lineno}: {name} is not allowed")
                elif not _is_loopback(_host_arg(node, pos), constants):
                    problems.append(f"{filename}:{node.lineno}: {name} without 127.0.0.1")
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            text = node.value
            words = re.findall(r"(?<![\d.])\d{1,3}(?:\.\d{1,3}){3}(?![\d.])", text)  # IPv4
            words += re.findall(r"\[([0-9a-fA-F:.]+)\]", text)                 # [IPv6]
            words += [text.strip()]                                            # "::", "::1"
            for addr in words:
                try:
                    ip = ipaddress.ip_address(addr)
                except ValueError:
                    continue
                if str(ip) != "127.0.0.1":
                    problems.append(f"{filename}:{node.lineno}: address {addr!r}")
            # exactly a host word (a Markdown bullet "* " in an f-string is not one)
            if node.value.lower() in ("localhost", "*", "any"):
                problems.append(f"{filename}:{getattr(node, 'lineno', '?')}: "
                                f"host {node.value!r}")
    return problems


def test_toylib_binds_nothing_but_loopback():
    assert services.HOST == "127.0.0.1"
    problems = []
    for path in _sources():
        problems += bind_problems(path.read_text(), path.name)
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("bad", [
    'web.TCPSite(runner, "0.0.0.0", 0)',
    'web.TCPSite(runner, None, 0)',
    'web.TCPSite(runner, port=0)',
    'web.TCPSite(runner, host="::", port=0)',
    'HOST = "0.0.0.0"\nweb.TCPSite(runner, HOST, 0)',
    'await loop.create_server(factory, "", 8080)',
    'sock.bind(("", 0))',
    'web.run_app(app)',
    'URL = "http://10.0.0.5:80"',
    'x = "[::]:8080"',
])
def test_the_scan_catches_a_wildcard_bind(bad):
    assert bind_problems(bad if "await" not in bad else f"async def f():\n    {bad}", "bad.py")


@pytest.mark.parametrize("good", [
    'web.TCPSite(runner, HOST, 0)',
    'web.TCPSite(runner, "127.0.0.1", self.port, reuse_address=True)',
    'sock.bind(("127.0.0.1", 0))',
    'v = "1.0"',
])
def test_the_scan_accepts_loopback(good):
    assert bind_problems(good, "good.py") == []
