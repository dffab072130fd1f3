"""Tracing: every call between services becomes a span, so a chapter can count requests and bytes.

A span is recorded by the *caller* when a call ends (or fails, or is cancelled): who called whom,
which route, when, how long, with what status and how many bytes went each way. A trace id and
the caller's span id travel with each request as headers, so the spans of one page view can be
put back together into a sequence diagram.
"""
from __future__ import annotations

import contextvars
import itertools
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass

import pandas as pd

TRACE_HEADER = "X-Toy-Trace"
PARENT_HEADER = "X-Toy-Parent"

# (trace id, span id of the call being served) for the code running now; set by the server
# middleware for each request and inherited by tasks the handler starts (asyncio copies context).
current: contextvars.ContextVar[tuple[str, int] | None] = contextvars.ContextVar(
    "toylib_trace", default=None)


@dataclass(frozen=True)
class Span:
    trace_id: str
    span_id: int
    parent_id: int | None
    caller: str
    callee: str
    method: str
    route: str          # the callee's route pattern, e.g. /users/{id}; the path if unknown
    path: str
    start: float        # seconds on the tracer's clock
    end: float
    status: int | str   # HTTP status, or "refused", "reset", "timeout", "cancelled", ...
    req_bytes: int      # request body
    resp_bytes: int     # response body
    wire_bytes: int     # both ways with HTTP headers (0 when no answer came)

    @property
    def ok(self) -> bool:
        return isinstance(self.status, int) and self.status < 400


COLUMNS = [f for f in Span.__dataclass_fields__] + ["duration_ms", "ok"]


class Tracer:
    """Collects spans in memory; one per topology."""

    def __init__(self, clock=time.perf_counter):
        if not callable(clock):
            raise TypeError(f"clock must be a callable returning seconds; got {clock!r}")
        self.clock = clock
        self.t0 = clock()
        self.spans: list[Span] = []
        self._ids = itertools.count(1)
        self._traces = itertools.count(1)

    def new_span_id(self) -> int:
        return next(self._ids)

    def new_trace_id(self, prefix: str = "t") -> str:
        if not isinstance(prefix, str) or len(prefix) > 100:
            raise TypeError(f"prefix must be a string of at most 100 characters; got {prefix!r}")
        return f"{prefix}{next(self._traces)}"

    def record(self, span: Span) -> None:
        self.spans.append(span)

    def clear(self) -> None:
        self.spans.clear()

    def __len__(self) -> int:
        return len(self.spans)

    def df(self, spans: list[Span] | None = None) -> pd.DataFrame:
        """All spans (or the given ones) as a DataFrame; times in ms since the tracer started."""
        if spans is not None and (not isinstance(spans, (list, tuple))
                                  or not all(isinstance(s, Span) for s in spans)):
            raise TypeError(f"spans must be a list of Span (e.g. from tracer.capture()) or "
                            f"None; got {spans!r:.80}")
        rows = [asdict(s) for s in (self.spans if spans is None else spans)]
        if not rows:
            return pd.DataFrame(columns=COLUMNS)
        df = pd.DataFrame(rows)
        df["start"] = (df["start"] - self.t0) * 1000.0
        df["end"] = (df["end"] - self.t0) * 1000.0
        df["duration_ms"] = df["end"] - df["start"]
        df["ok"] = df["status"].map(lambda s: isinstance(s, int) and s < 400)
        return df

    @contextmanager
    def capture(self):
        """Collect the spans recorded inside the block: ``with tracer.capture() as spans: ...``."""
        first = len(self.spans)
        captured: list[Span] = []
        try:
            yield captured
        finally:
            captured.extend(self.spans[first:])
