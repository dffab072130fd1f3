"""Lab 6's solutions: the reference breaker the lab shows in its hidden solution, and an
independently written one. Both must pass ``toylib.labs.ch06_breakers.check`` every time."""
from __future__ import annotations

from collections import deque


class RefBreaker:
    """The reference: one class, the state in a string, the window in a deque.

    One small class per state would mirror resilience4j more closely (see
    ``toylib.resilience.breaker``); this version keeps everything in one class to stay short.
    """

    def __init__(self, *, failure_rate_threshold, minimum_calls, window_size, wait_in_open,
                 permitted_in_half_open, clock):
        self.threshold, self.minimum = failure_rate_threshold, min(minimum_calls, window_size)
        self.window_size, self.wait = window_size, wait_in_open
        self.permits_n = permitted_in_half_open
        self.clock = clock
        self._close()

    def _close(self):
        self.state, self.window = "closed", deque(maxlen=self.window_size)

    def _open(self):
        self.state, self.opened_at = "open", self.clock()

    def _half_open(self):
        self.state, self.permits, self.trials = "half_open", self.permits_n, []

    def _rate(self, outcomes):
        return 100.0 * sum(not ok for ok in outcomes) / len(outcomes)

    def try_acquire(self):
        if self.state == "open" and self.clock() > self.opened_at + self.wait:
            self._half_open()                     # lazily, on the first call after the wait
        if self.state == "closed":
            return True
        if self.state == "half_open" and self.permits > 0:
            self.permits -= 1
            return True
        return False

    def on_result(self, ok):
        if self.state == "closed":
            self.window.append(ok)
            if len(self.window) >= self.minimum and self._rate(self.window) >= self.threshold:
                self._open()
        elif self.state == "half_open":
            self.trials.append(ok)
            if len(self.trials) == self.permits_n:   # the verdict waits for every trial
                if self._rate(self.trials) >= self.threshold:
                    self._open()
                else:
                    self._close()


class AlternativeBreaker:
    """Written apart from the reference: a ring buffer with a running failure count, a
    deadline instead of an opening time, and integer arithmetic for the threshold test
    (failures * 100 >= threshold * calls), so no float rounding can move the boundary."""

    def __init__(self, *, failure_rate_threshold, minimum_calls, window_size, wait_in_open,
                 permitted_in_half_open, clock):
        self._threshold = failure_rate_threshold
        self._size = window_size
        self._minimum = min(minimum_calls, window_size)
        self._wait = wait_in_open
        self._trials = permitted_in_half_open
        self._clock = clock
        self._reset_window()
        self.state = "closed"

    def _reset_window(self):
        self._ring = [None] * self._size
        self._next = self._count = self._failed = 0

    def _push(self, ok):
        old = self._ring[self._next]
        if old is not None:
            self._count -= 1
            self._failed -= not old
        self._ring[self._next] = ok
        self._next = (self._next + 1) % self._size
        self._count += 1
        self._failed += not ok

    def _too_many(self, failed, calls):
        return failed * 100 >= self._threshold * calls

    def try_acquire(self):
        if self.state == "open":
            if self._clock() <= self._retry_at:
                return False
            self.state = "half_open"
            self._left, self._seen, self._bad = self._trials, 0, 0
        if self.state == "half_open":
            if self._left == 0:
                return False
            self._left -= 1
        return True

    def on_result(self, ok):
        if self.state == "closed":
            self._push(ok)
            if self._count >= self._minimum and self._too_many(self._failed, self._count):
                self._trip()
        elif self.state == "half_open":
            self._seen += 1
            self._bad += not ok
            if self._seen == self._trials:
                if self._too_many(self._bad, self._seen):
                    self._trip()
                else:
                    self.state = "closed"
                    self._reset_window()

    def _trip(self):
        self.state = "open"
        self._retry_at = self._clock() + self._wait
