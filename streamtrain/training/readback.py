"""Device→host transfer of a step's statistics, one step late, through pinned memory.

A training step ends with one (L,) float32 vector of everything the host wants to know (the
finite-loss flag, the loss, logQ moments, sampler statistics, progressive-evaluation sums).
Reading it at once would make the host wait for the whole step on the device each step. Instead
:meth:`StatsReadback.push` starts an asynchronous copy into a reused pinned buffer and returns a
ticket; the trainer :meth:`~StatsReadback.read`\\ s the ticket of step t during step t+1, after step
t+1's work is queued, so the device always has the next step to run while the host waits.

The ring has two buffers: the ticket of step t is read before step t+2 pushes into its buffer.
Durations: on CUDA the device time between the step's start and its statistics (timing events);
on CPU, where every operation completes before the host moves on, the host time of the step.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

__all__ = ["StatsReadback", "Ticket"]


@dataclass
class Ticket:
    """One pushed statistics vector, not yet read."""

    slot: int
    length: int
    started: float  # perf_counter at begin() (CPU durations)
    finished: float  # perf_counter at push()
    values: torch.Tensor | None = None  # CPU: the vector itself (already computed)
    start_event: torch.cuda.Event | None = None
    end_event: torch.cuda.Event | None = None


class StatsReadback:
    """Late reads of per-step statistics; see the module docstring."""

    def __init__(self, device: torch.device | str, *, slots: int = 2) -> None:
        self.device = torch.device(device)
        self.cuda = self.device.type == "cuda"
        self._buffers: list[torch.Tensor | None] = [None] * slots
        self._next = 0
        self._started = time.perf_counter()
        self._start_event: torch.cuda.Event | None = None

    def begin(self) -> None:
        """Mark the start of a step (its duration counts from here)."""
        self._started = time.perf_counter()
        if self.cuda:
            self._start_event = torch.cuda.Event(enable_timing=True)
            self._start_event.record(torch.cuda.current_stream(self.device))

    def push(self, values: torch.Tensor) -> Ticket:
        """Start copying ``values`` (L,) float32 (on the device) to the host; returns at once."""
        values = values.detach().reshape(-1)
        length = values.numel()
        slot = self._next
        self._next = (self._next + 1) % len(self._buffers)
        now = time.perf_counter()
        if not self.cuda:
            return Ticket(slot, length, self._started, now, values=values)
        buffer = self._buffers[slot]
        if buffer is None or buffer.numel() < length:
            buffer = self._buffers[slot] = torch.empty(max(64, 2 * length), dtype=torch.float32, pin_memory=True)
        buffer[:length].copy_(values.float(), non_blocking=True)
        end = torch.cuda.Event(enable_timing=True)
        end.record(torch.cuda.current_stream(self.device))
        return Ticket(slot, length, self._started, now, start_event=self._start_event, end_event=end)

    def read(self, ticket: Ticket) -> tuple[list[float], float]:
        """The pushed floats and the step's duration in seconds; waits for the copy if it is still
        running (the one place the host waits for the device, one step behind)."""
        if ticket.values is not None:
            return ticket.values.tolist(), ticket.finished - ticket.started
        assert ticket.end_event is not None
        ticket.end_event.synchronize()
        buffer = self._buffers[ticket.slot]
        assert buffer is not None
        values = buffer[: ticket.length].tolist()  # a CPU tensor: no device access
        if ticket.start_event is not None:
            duration = ticket.start_event.elapsed_time(ticket.end_event) / 1000.0
        else:
            duration = ticket.finished - ticket.started
        return values, duration
