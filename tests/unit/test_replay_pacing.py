"""Pacing with a fake clock: fixed rate, event-time speedup, no drift, catching up after a stall."""

from __future__ import annotations

import pytest

from streamtrain.replay import RatePacer, SpeedupPacer, Unpaced


class FakeClock:
    """Monotonic time that only moves when someone sleeps or a send 'costs' time."""

    def __init__(self) -> None:
        self.now = 100.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        assert seconds > 0
        self.sleeps.append(seconds)
        self.now += seconds


def send_times(pacer, clock: FakeClock, event_times: list[float], cost_s: float = 0.0) -> list[float]:
    """When each event would go out: after the pacer's wait, then the send takes cost_s."""
    out = []
    for t in event_times:
        pacer.wait(t)
        out.append(clock.now)
        clock.now += cost_s
    return out


def test_rate_sends_event_k_at_k_over_rate() -> None:
    clock = FakeClock()
    sent = send_times(RatePacer(10.0, clock, clock.sleep, min_sleep_s=0.0), clock, [0.0] * 50)
    assert sent == pytest.approx([100.0 + k / 10.0 for k in range(50)])


def test_rate_is_not_exceeded_and_does_not_drift_with_send_cost() -> None:
    clock = FakeClock()
    rate = 1000.0
    sent = send_times(RatePacer(rate, clock, clock.sleep, min_sleep_s=0.005), clock, [0.0] * 5000, cost_s=0.0003)
    start = sent[0]
    for k, t in enumerate(sent):
        # never ahead of schedule by more than the skipped-sleep granularity
        assert t >= start + k / rate - 0.005 - 1e-9
    # total time is the schedule's, not schedule + accumulated send costs
    assert sent[-1] - start == pytest.approx(4999 / rate, abs=0.006)
    # small waits were batched: far fewer sleeps than events
    assert len(clock.sleeps) < 1000


def test_rate_catches_up_without_sleeping_after_a_stall() -> None:
    clock = FakeClock()
    pacer = RatePacer(100.0, clock, clock.sleep, min_sleep_s=0.0)
    send_times(pacer, clock, [0.0] * 10)  # on schedule: event 9 at +0.09
    clock.now += 1.0  # the producer blocked for a second
    slept_before = len(clock.sleeps)
    sent = send_times(pacer, clock, [0.0] * 50)
    # events 10..59 were all due before +1.09: they go out back to back, no sleep
    assert sent == pytest.approx([100.0 + 0.09 + 1.0] * 50)
    assert len(clock.sleeps) == slept_before
    # and the schedule resumes: event 109 is due at +1.09, event 110 sleeps until +1.10
    sent = send_times(pacer, clock, [0.0] * 51)
    assert sent[-1] == pytest.approx(100.0 + 1.10)


def test_speedup_compresses_event_time() -> None:
    clock = FakeClock()
    event_times = [1000.0, 1000.0, 1060.0, 1090.0, 1600.0]
    sent = send_times(SpeedupPacer(60.0, clock, clock.sleep, min_sleep_s=0.0), clock, event_times)
    assert [t - sent[0] for t in sent] == pytest.approx([0.0, 0.0, 1.0, 1.5, 10.0])


def test_speedup_sends_out_of_order_events_at_once() -> None:
    clock = FakeClock()
    sent = send_times(SpeedupPacer(1.0, clock, clock.sleep, min_sleep_s=0.0), clock, [50.0, 52.0, 10.0, 51.0])
    assert [t - sent[0] for t in sent] == pytest.approx([0.0, 2.0, 2.0, 2.0])


def test_unpaced_never_sleeps() -> None:
    pacer = Unpaced()
    for t in range(100):
        assert pacer.wait(float(t)) is None


@pytest.mark.parametrize("bad", [0.0, -1.0, float("nan")])
def test_pacers_refuse_non_positive_speeds(bad: float) -> None:
    clock = FakeClock()
    with pytest.raises(ValueError):
        RatePacer(bad, clock, clock.sleep)
    with pytest.raises(ValueError):
        SpeedupPacer(bad, clock, clock.sleep)
