"""Rate-limited one-line logging: a peer that sends thousands of bad calls gets a few lines a second, and a
count of the rest, instead of a line (or a traceback) per call."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable


class RateLimiter:
    """At most `burst` events per key per `period_s` window; counts the rest. Pure bookkeeping, no I/O."""

    def __init__(self, burst: int = 3, period_s: float = 1.0, max_keys: int = 4096) -> None:
        self.burst, self.period_s, self.max_keys = burst, period_s, max_keys
        self._windows: dict[str, tuple[float, int, int]] = {}  # key -> (window start, allowed, suppressed)

    def allow(self, key: str, now: float) -> tuple[bool, int]:
        """(whether this event may be logged, how many were suppressed in the key's previous window)."""
        start, allowed, suppressed = self._windows.get(key, (now - self.period_s, 0, 0))
        if now - start >= self.period_s:
            if len(self._windows) >= self.max_keys and key not in self._windows:
                self._forget_old(now)
            self._windows[key] = (now, 1, 0)
            return True, suppressed
        if allowed < self.burst:
            self._windows[key] = (start, allowed + 1, suppressed)
            return True, 0
        self._windows[key] = (start, allowed, suppressed + 1)
        return False, 0

    def pending(self) -> dict[str, int]:
        """Suppressed counts not yet reported, per key."""
        return {k: s for k, (_, _, s) in self._windows.items() if s}

    def _forget_old(self, now: float) -> None:
        for k, (start, _, _) in list(self._windows.items()):
            if now - start >= self.period_s:
                del self._windows[k]


class RateLimitedLog:
    """A logger front that applies a RateLimiter per key (e.g. the caller's address)."""

    def __init__(
        self,
        logger: logging.Logger,
        *,
        burst: int = 3,
        period_s: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.logger, self.clock = logger, clock
        self.limiter = RateLimiter(burst, period_s)
        self._lock = threading.Lock()

    def log(self, level: int, key: str, message: str, *args: object) -> bool:
        """Log one line unless `key` is over its rate; True when it was logged."""
        with self._lock:
            allowed, suppressed = self.limiter.allow(key, self.clock())
        if not allowed:
            return False
        if suppressed:
            message += " (%d more from %s suppressed)"
            args = (*args, suppressed, key)
        self.logger.log(level, message, *args)
        return True

    def flush(self) -> None:
        """Report what is still suppressed (at shutdown: the last window's count would be lost)."""
        with self._lock:
            pending = self.limiter.pending()
            self.limiter = RateLimiter(self.limiter.burst, self.limiter.period_s, self.limiter.max_keys)
        for key, count in sorted(pending.items()):
            self.logger.warning("%d more refused calls from %s suppressed", count, key)
