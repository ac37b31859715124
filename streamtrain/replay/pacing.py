"""When to send each event: as fast as possible, at a fixed rate, or at event-time speed × factor.

A pacer is asked once per event, just before it is sent, and sleeps until that event is due.
Schedules are absolute (event *k* is due at ``start + k / rate``), so sleeping late or a slow
send never accumulates drift; when the sender falls behind, events go out without sleeping until
it has caught up. Sleeps shorter than ``min_sleep_s`` are skipped and made up by the next one:
at tens of thousands of events per second a sleep per event would cost more than the send.

Clock and sleep are passed in (``time.monotonic``/``time.sleep`` in the CLI; the CLI's sleep is
``threading.Event.wait`` so Ctrl-C wakes it), which lets unit tests run a fake clock.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

__all__ = ["Pacer", "RatePacer", "SpeedupPacer", "Unpaced"]

Clock = Callable[[], float]
Sleep = Callable[[float], object]


class Pacer(Protocol):
    """Decides when the next event may be sent."""

    def wait(self, event_time: float) -> None:
        """Called once per event, in stream order, before it is sent; returns when it is due."""
        ...


class Unpaced:
    """As fast as the producer takes events."""

    def wait(self, event_time: float) -> None:
        return None


class _Scheduled:
    def __init__(self, clock: Clock, sleep: Sleep, min_sleep_s: float) -> None:
        if min_sleep_s < 0:
            raise ValueError("min_sleep_s must be >= 0")
        self._clock = clock
        self._sleep = sleep
        self._min_sleep_s = min_sleep_s
        self._start: float | None = None

    def _sleep_until(self, offset_s: float) -> None:
        now = self._clock()
        if self._start is None:
            self._start = now
        ahead = self._start + offset_s - now
        if ahead >= self._min_sleep_s and ahead > 0:
            self._sleep(ahead)


class RatePacer(_Scheduled):
    """``rate`` events per second: event *k* (from 0) is due ``k / rate`` s after the first."""

    def __init__(self, rate: float, clock: Clock, sleep: Sleep, *, min_sleep_s: float = 0.001) -> None:
        if not rate > 0:
            raise ValueError(f"rate must be > 0 events/s, got {rate}")
        super().__init__(clock, sleep, min_sleep_s)
        self._interval = 1.0 / rate
        self._count = 0

    def wait(self, event_time: float) -> None:
        self._sleep_until(self._count * self._interval)
        self._count += 1


class SpeedupPacer(_Scheduled):
    """Event time compressed by ``factor``: an event is due ``(t - t_first) / factor`` s after the first.

    With ``factor=60`` an hour of history replays in a minute. Events older than the first (a
    shuffled stream) are due at once.
    """

    def __init__(self, factor: float, clock: Clock, sleep: Sleep, *, min_sleep_s: float = 0.001) -> None:
        if not factor > 0:
            raise ValueError(f"speedup factor must be > 0, got {factor}")
        super().__init__(clock, sleep, min_sleep_s)
        self._factor = factor
        self._first_time: float | None = None

    def wait(self, event_time: float) -> None:
        if self._first_time is None:
            self._first_time = event_time
        self._sleep_until(max(0.0, event_time - self._first_time) / self._factor)
