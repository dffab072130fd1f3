"""Parameter checks shared by every public toylib function.

Every error names the parameter, the allowed range and the value received, so a reader who
types a negative latency into a widget learns what to type instead.

Two rules hold for every check here:

* NaN is never a number (it compares false with everything, so it would slip through any range
  and then hang a timer or poison a sum), and infinity is refused wherever a range is stated:
  a timeout, a rate or a size of "infinity" is never what a reader means, and it fails later,
  deep inside asyncio, aiohttp or SQLite, with an OverflowError that names nothing.
  ``number(name, x)`` with no range at all is for measured figures, where an infinite ratio
  can be a result; pass ``finite=True`` to refuse it there too.
* Every size and every duration has an upper bound that fits a laptop (``MAX_*`` below), so
  a typo such as ``partitions=10**9`` is refused at once instead of filling memory.
"""
from __future__ import annotations

import inspect
import math
from collections.abc import Iterable
from numbers import Integral, Real

# Upper bounds shared by the modules that take such parameters (each names its own too).
MAX_SECONDS = 24 * 3600.0      # any duration, timeout, deadline or delay: one day
MAX_REQUESTS = 1_000_000       # requests of one load run (a row each in a DataFrame)
MAX_WORKERS = 10_000           # concurrent tasks, consumers, slots
MAX_RATE = 100_000.0           # requests or tokens per second: far beyond what one loop serves
MAX_ITEMS = 10_000_000         # entries of a cache, a window, a batch
MAX_PARTITIONS = 4096          # partitions of one topic
MAX_ATTEMPTS = 1000            # tries of one call
SEED_RANGE = (-(2 ** 63), 2 ** 64 - 1)
MAX_NAME = 100                 # characters of a service, topic or group name


def _is_number(value) -> bool:
    return isinstance(value, Real) and not isinstance(value, bool)


def _is_integer(value) -> bool:
    if isinstance(value, Integral):
        return True
    try:   # a float such as 3.0; float() of a huge Fraction can overflow
        return float(value).is_integer()
    except (OverflowError, ValueError):
        return False


def number(name: str, value, *, low=None, high=None, low_open=False, high_open=False,
           integer=False, finite=None):
    """Return ``value`` if it is a number within the range, else raise.

    ``low``/``high`` are inclusive unless ``low_open``/``high_open`` is true. TypeError for
    something that is not a number (NaN included), ValueError for a number out of range.
    ``finite`` (default: true when a range is given) refuses +/-infinity.
    """
    kind = "an integer" if integer else "a number"
    rng = _range(low, high, low_open, high_open)
    if not _is_number(value) or (isinstance(value, float) and math.isnan(value)) \
            or (integer and not isinstance(value, Integral) and math.isinf(value)) \
            or (integer and not _is_integer(value)):
        raise TypeError(f"{name} must be {kind}{rng}; got {value!r}")
    if finite is None:
        finite = low is not None or high is not None
    if finite and not isinstance(value, Integral) and math.isinf(value):
        raise ValueError(f"{name} must be a finite {kind[kind.index(' ') + 1:]}{rng}; "
                         f"got {value!r}")
    bad = ((low is not None and (value <= low if low_open else value < low))
           or (high is not None and (value >= high if high_open else value > high)))
    if bad:
        raise ValueError(f"{name} must be {kind}{rng}; got {_short(value)}")
    return int(value) if integer else value


def _short(value) -> str:
    """The value as received, summarised when it is a huge integer (10**5000 has no repr)."""
    if isinstance(value, Integral) and abs(int(value)).bit_length() > 100:
        return f"an integer of about {int(abs(int(value)).bit_length() * 0.30103)} digits"
    return repr(value)


def _range(low, high, low_open, high_open) -> str:
    if low is None and high is None:
        return ""
    if high is None:
        return f" {'>' if low_open else '>='} {low}"
    if low is None:
        return f" {'<' if high_open else '<='} {high}"
    return f" in {'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"


def positive(name: str, value, *, integer=False, high=None):
    """A finite number strictly greater than zero (a timeout, a rate, a count of workers)."""
    return number(name, value, low=0, low_open=True, high=high, integer=integer)


def non_negative(name: str, value, *, integer=False, high=None):
    """A finite number zero or greater (a latency, a delay, a count that may be zero)."""
    return number(name, value, low=0, high=high, integer=integer)


def seconds(name: str, value, *, zero=False):
    """A duration in seconds: finite, greater than zero (or zero if ``zero``), at most a day."""
    return number(name, value, low=0, low_open=not zero, high=MAX_SECONDS)


def seed(name: str, value):
    """A random seed: an integer that fits 64 bits."""
    return number(name, value, low=SEED_RANGE[0], high=SEED_RANGE[1], integer=True)


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
    if not isinstance(value, str) or not value or len(value) > MAX_NAME \
            or not all(c.isalnum() or c in "_-" for c in value):
        shown = repr(value) if len(repr(value)) <= 80 else repr(value)[:77] + "..."
        raise ValueError(f"{param} must be a non-empty string of at most {MAX_NAME} letters, "
                         f"digits, '_' or '-'; got {shown}")
    return value


def optional(check, param: str, value, **kwargs):
    """Apply ``check`` unless ``value`` is None."""
    return None if value is None else check(param, value, **kwargs)


def async_function(name: str, fn) -> None:
    """An ``async def`` function (or an object with an ``async def __call__``)."""
    if not (inspect.iscoroutinefunction(fn)
            or inspect.iscoroutinefunction(getattr(fn, "__call__", None))):
        raise TypeError(f"{name} must be an async function (async def); got {fn!r}")
