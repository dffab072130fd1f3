"""Helpers shared by the tests and the lab graders: resource checks, statistics, a fake clock.

Resource checks read the kernel's own view of this process: ``/proc/self/fd`` for open file
descriptors, ``/proc/net/tcp`` and ``/proc/net/tcp6`` (matched to this process's socket inodes)
for listening sockets.
"""
from __future__ import annotations

import asyncio
import gc
import math
import os
import socket
import threading

from toylib.core.clock import FakeClock  # noqa: F401  (the one fake clock, re-exported here)

LISTEN = "0A"   # TCP state code of a listening socket in /proc/net/tcp


# -- file descriptors, tasks, threads ---------------------------------------------------------
def fd_count() -> int:
    """Open file descriptors of this process (the listing itself opens one, always the same)."""
    return len(os.listdir("/proc/self/fd"))


def other_tasks() -> set[asyncio.Task]:
    """Tasks of the running loop other than the one asking."""
    me = asyncio.current_task()
    return {t for t in asyncio.all_tasks() if t is not me and not t.done()}


async def settle(rounds: int = 3, collect: bool = True) -> None:
    """Let callbacks scheduled by closing transports run, then (optionally) collect garbage."""
    for _ in range(rounds):
        await asyncio.sleep(0)
    if collect:
        gc.collect()


async def assert_no_tasks_left(timeout: float = 1.0) -> None:
    """Fail if any task other than the caller is still alive after ``timeout`` seconds."""
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while other_tasks() and loop.time() < end:
        await asyncio.sleep(0.01)
    left = other_tasks()
    assert not left, f"tasks left behind: {left}"


def thread_count() -> int:
    return threading.active_count()


# -- sockets ----------------------------------------------------------------------------------
def socket_inodes() -> set[str]:
    inodes = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[len("socket:["):-1])
    return inodes


def decode_addr(hex_addr: str, v6: bool) -> tuple[str, int]:
    host, port = hex_addr.split(":")
    raw = bytes.fromhex(host)
    if v6:  # four 32-bit words, each in host (little-endian) byte order
        raw = b"".join(raw[i:i + 4][::-1] for i in range(0, 16, 4))
        return socket.inet_ntop(socket.AF_INET6, raw), int(port, 16)
    return socket.inet_ntop(socket.AF_INET, raw[::-1]), int(port, 16)


PROC_TABLES = (("/proc/net/tcp", False), ("/proc/net/tcp6", True))


def listening_sockets(tables=PROC_TABLES, inodes=None) -> list[tuple[str, int]]:
    """(address, port) of every TCP socket *of this process* in the LISTEN state.

    Read from /proc/net/tcp and /proc/net/tcp6 and kept only if the socket's inode is one of
    this process's open file descriptors (those tables list the whole network namespace).
    ``tables`` and ``inodes`` can be replaced to test the parser itself.
    """
    mine = socket_inodes() if inodes is None else set(inodes)
    found = []
    for table, v6 in tables:
        try:
            with open(table) as f:
                rows = f.read().splitlines()[1:]
        except FileNotFoundError:
            continue
        for row in rows:
            cols = row.split()
            if cols[3] == LISTEN and cols[9] in mine:
                found.append(decode_addr(cols[1], v6))
    return found


def refused(port: int) -> bool:
    """True if connecting to 127.0.0.1:port is refused (nothing listens there any more)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(1.0)
        try:
            s.connect(("127.0.0.1", port))
        except ConnectionRefusedError:
            return True
        return False


# -- statistics -------------------------------------------------------------------------------
def binomial_margin(p: float, n: int, sigmas: float = 4.0) -> float:
    """``sigmas`` standard deviations of a proportion of ``n`` trials with probability ``p``."""
    return sigmas * math.sqrt(max(p * (1 - p), 1e-12) / n)


def median(xs) -> float:
    s = sorted(xs)
    n = len(s)
    return s[n // 2] if n % 2 else (s[n // 2 - 1] + s[n // 2]) / 2
