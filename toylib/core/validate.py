"""Parameter checks shared by every public toylib function.

Every error names the parameter, the allowed range and the value received, so a reader who
types a negative latency into a widget learns what to type instead.
"""
from __future__ import annotations

import inspect
import math
from collections.abc import Iterable
from numbers import Real


def _is_number(value) -> bool:
    return isinstance(value, Real) and not isinstance(value, bool)


def number(name: str, value, *, low=None, high=None, low_open=False, high_open=False,
           integer=False):
    """Return ``value`` if it is a (finite) number within the range, else raise ValueError.

    ``low``/``high`` are inclusive unless ``low_open``/``high_open`` is true.
    """
    kind = "an integer" if integer else "a number"
    if not _is_number(value) or (integer and not float(value).is_integer()) \
            or (isinstance(value, float) and math.isnan(value)):
        raise TypeError(f"{name} must be {kind}{_range(low, high, low_open, high_open)}; "
                        f"got {value!r}")
    bad = ((low is not None and (value <= low if low_open else value < low))
           or (high is not None and (value >= high if high_open else value > high)))
    if bad:
        raise ValueError(f"{name} must be {kind}{_range(low, high, low_open, high_open)}; "
                         f"got {value!r}")
    return int(value) if integer else value


def _range(low, high, low_open, high_open) -> str:
    if low is None and high is None:
        return ""
    if high is None:
        return f" {'>' if low_open else '>='} {low}"
    if low is None:
        return f" {'<' if high_open else '<='} {high}"
    return f" in {'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"


def positive(name: str, value, *, integer=False):
    """A number strictly greater than zero (a timeout, a rate, a count of workers)."""
    return number(name, value, low=0, low_open=True, integer=integer)


def non_negative(name: str, value, *, integer=False):
    """A number zero or greater (a latency, a delay, a count that may be zero)."""
    return number(name, value, low=0, integer=integer)


def probability(name: str, value):
    """A probability in [0, 1]."""
    return number(name, value, low=0, high=1)


def one_of(name: str, value, allowed: Iterable):
    """``value`` must be one of ``allowed`` (an unknown service name, plane, mode...)."""
    allowed = list(allowed)
    if value not in allowed:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, allowed))}; got {value!r}")
    return value


def name(param: str, value):
    """A non-empty identifier made of letters, digits, '_' and '-' (service and route names)."""
    if not isinstance(value, str) or not value or not all(c.isalnum() or c in "_-" for c in value):
        raise ValueError(f"{param} must be a non-empty string of letters, digits, '_' or '-'; "
                         f"got {value!r}")
    return value


def optional(check, param: str, value, **kwargs):
    """Apply ``check`` unless ``value`` is None."""
    return None if value is None else check(param, value, **kwargs)


def async_function(name: str, fn) -> None:
    """An ``async def`` function (or an object with an ``async def __call__``)."""
    if not (inspect.iscoroutinefunction(fn)
            or inspect.iscoroutinefunction(getattr(fn, "__call__", None))):
        raise TypeError(f"{name} must be an async function (async def); got {fn!r}")
