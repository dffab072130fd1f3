"""Services as separate OS processes, owned by one ``async with`` scope.

A crash in the toy is an exception in the same interpreter; here it is ``kill -9``: the
process gets no chance to roll back, acknowledge or say goodbye, and whatever it held only
in memory is gone. A restarted process starts from durable state only (its PostgreSQL
schema, the JetStream consumer's ack floor), which is exactly what the outbox, the idempotent
consumer and the saga log were designed for.

``async with Processes() as procs:`` then ``await procs.start("billing", "billing", cfg)``
runs ``python -m toylib.prod.worker`` with that role; the worker binds 127.0.0.1 on an
ephemeral port and reports it (``proc.port``). ``procs.kill("billing")`` is a real SIGKILL;
``procs.restart("billing")`` starts it again with the same configuration. Leaving the block
stops every process (SIGTERM, then SIGKILL after ``grace`` seconds) and waits for it, so
nothing keeps running; a worker also exits by itself when its parent's pipe closes (the
parent died).
"""
from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from toylib.core import validate as v

ROLES = ("orders", "billing", "orchestrator")
MAX_PROCESSES = 16
START_TIMEOUT = 30.0      # s for a worker to import, connect and report its port


@dataclass
class Proc:
    name: str
    role: str
    config: dict
    process: asyncio.subprocess.Process | None = None
    port: int | None = None
    starts: int = 0
    kills: int = 0
    log: Path | None = field(default=None, repr=False)

    @property
    def pid(self) -> int | None:
        return None if self.process is None else self.process.pid

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.returncode is None


class Processes:
    """The scope that owns the worker processes of one experiment."""

    def __init__(self, *, grace: float = 3.0, start_timeout: float = START_TIMEOUT):
        self.grace = v.number("grace", grace, low=0.01, high=60)
        self.start_timeout = v.number("start_timeout", start_timeout, low=0.5, high=600)
        self.procs: dict[str, Proc] = {}
        self._tmp: tempfile.TemporaryDirectory | None = None

    async def __aenter__(self) -> Processes:
        self._tmp = tempfile.TemporaryDirectory(prefix="toylib-procs-")
        return self

    async def __aexit__(self, *exc) -> None:
        try:
            await asyncio.gather(*(asyncio.shield(self.stop(n)) for n in self.procs),
                                 return_exceptions=True)
        finally:
            self.procs.clear()
            if self._tmp is not None:
                self._tmp.cleanup()
                self._tmp = None

    async def start(self, name: str, role: str, config: dict) -> Proc:
        """Start a worker ``role`` named ``name`` with ``config`` (JSON); wait for its port."""
        v.name("name", name)
        v.one_of("role", role, ROLES)
        if not isinstance(config, dict):
            raise TypeError(f"config must be a dict; got {config!r}")
        if self._tmp is None:
            raise RuntimeError("start() needs the scope: `async with Processes() as procs`")
        if name in self.procs and self.procs[name].running:
            raise RuntimeError(f"name must not be a running process; {name!r} is running")
        if name not in self.procs and len(self.procs) >= MAX_PROCESSES:
            raise RuntimeError(f"at most {MAX_PROCESSES} processes per scope")
        proc = self.procs.setdefault(name, Proc(name, role, dict(config)))
        await self._spawn(proc)
        return proc

    async def _spawn(self, proc: Proc) -> None:
        proc.log = Path(self._tmp.name) / f"{proc.name}.log"
        payload = json.dumps(dict(proc.config, role=proc.role, name=proc.name))
        with open(proc.log, "ab") as err:
            proc.process = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "toylib.prod.worker", payload,
                stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=err,
                env=dict(os.environ, PYTHONUNBUFFERED="1"))
        proc.starts += 1
        try:
            async with asyncio.timeout(self.start_timeout):
                line = await proc.process.stdout.readline()
        except TimeoutError:
            await self._kill(proc)
            raise RuntimeError(f"worker {proc.name} did not report its port within "
                               f"{self.start_timeout} s; its log: {self.tail(proc.name)}") from None
        if not line.startswith(b"READY "):
            await self._kill(proc)
            raise RuntimeError(f"worker {proc.name} failed to start: {self.tail(proc.name)}")
        proc.port = int(line.split()[1])

    def tail(self, name: str, lines: int = 15) -> str:
        proc = self.procs[v.one_of("name", name, self.procs)]
        if proc.log is None or not proc.log.exists():
            return ""
        return "\n".join(proc.log.read_text(errors="replace").splitlines()[-lines:])

    async def kill(self, name: str) -> None:
        """``kill -9``: SIGKILL, no cleanup in the process; returns once it is gone."""
        proc = self.procs[v.one_of("name", name, self.procs)]
        if not proc.running:
            raise RuntimeError(f"name must be a running process; {name!r} is not running")
        await self._kill(proc)
        proc.kills += 1

    async def _kill(self, proc: Proc) -> None:
        if proc.running:
            proc.process.send_signal(signal.SIGKILL)
        await proc.process.wait()
        _close_pipes(proc.process)

    async def restart(self, name: str) -> Proc:
        """Start a stopped or killed process again with the same configuration."""
        proc = self.procs[v.one_of("name", name, self.procs)]
        if proc.running:
            raise RuntimeError(f"name must be a stopped process; {name!r} is running")
        await self._spawn(proc)
        return proc

    async def stop(self, name: str) -> None:
        """Graceful stop: SIGTERM, then SIGKILL after ``grace`` seconds."""
        proc = self.procs[v.one_of("name", name, self.procs)]
        if proc.process is None:
            return
        if proc.running:
            proc.process.send_signal(signal.SIGTERM)
            try:
                async with asyncio.timeout(self.grace):
                    await proc.process.wait()
            except TimeoutError:
                pass
        await self._kill(proc)


def _close_pipes(process) -> None:
    for stream in (process.stdin,):
        if stream is not None and not stream.is_closing():
            stream.close()
    transport = getattr(process, "_transport", None)
    if transport is not None:
        transport.close()
