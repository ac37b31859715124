"""Extra optimiser steps per micro-batch over the batch and a window of recent events.

One pass over Kafka does not have to mean one gradient step per event. After the trainer's step on
micro-batch t (test-then-train: t was scored before any of this), :func:`~streamtrain.training.step.replay_steps` takes
``extra_steps`` more optimiser steps, each on batch t together with up to ``B`` events drawn
uniformly from a ring of the ``window_events`` events before it. Each stored event keeps the causal
history it had when it arrived, so a replayed query is the same function of the past as the first
time. The samplers run with ``update_state=False`` on these steps (XIR's cache and occurrence counts
follow the stream, once per batch).

Costs (BENCHMARKS.md): each extra step costs about one training step on 2B events (5 extra steps:
~15x the one-step time per event at B 2048 on CPU). Nothing here
reads the device: the ring's fill and write position live on the host, the draws are a ``randperm``
on the device (a seeded device generator, persisted with the checkpoint), so the step stays
sync-free on CUDA; the ring is
part of the checkpoint file, so a restart replays exactly what an uninterrupted run would.

Rows handed to new ids (eviction) would make stored events point at another id; the trainer calls
:meth:`forget` on any eviction, which empties the ring (evictions are rare, and a fresh ring only
means fewer replays for a window).

Under the split step (W > 1 ranks) every rank takes the same extra steps on the same draws of the
global batch (replicated: identical gradients on every rank, no exchange needed), so W = 2 trains
exactly as W = 1.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch

from streamtrain.model.history import EMPTY

__all__ = ["ReplaySteps"]


class ReplaySteps:
    """Ring of recent events (user row, item row, causal history, weight) and the draws of the extra steps
    (:func:`streamtrain.training.step.replay_steps` takes them)."""

    def __init__(self, extra_steps: int, window_events: int, history_length: int, seed: int,
                 device: torch.device) -> None:
        if extra_steps < 0 or window_events < 0:
            raise ValueError(f"extra_steps and window_events must be >= 0, got {extra_steps}, {window_events}")
        self.extra_steps = extra_steps
        self.window = window_events if extra_steps else 0
        self.device = device
        # On the device: the draws need no upload (a host array would be a pageable copy on CUDA).
        self._gen = torch.Generator(device=device).manual_seed(seed + 16)
        self.users = torch.zeros(self.window, dtype=torch.int64, device=device)
        self.items = torch.zeros(self.window, dtype=torch.int64, device=device)
        self.history = torch.full((self.window, history_length), EMPTY, dtype=torch.int32, device=device)
        self.weights = torch.ones(self.window, dtype=torch.float32, device=device)
        self._filled = 0
        self._at = 0

    @property
    def enabled(self) -> bool:
        return self.extra_steps > 0

    def forget(self) -> None:
        """Empty the ring (a row changed id)."""
        self._filled = self._at = 0

    def _draw(self, n: int) -> torch.Tensor | None:
        if not self._filled or not n:
            return None
        take = min(n, self._filled)
        return torch.randperm(self._filled, generator=self._gen, device=self.device)[:take]

    def push(self, users: torch.Tensor, items: torch.Tensor, history: torch.Tensor | None,
              weights: torch.Tensor | None) -> None:
        """The batch joins the ring (its newest ``window`` events), after its extra steps."""
        if not self.window:
            return
        b = users.numel()
        keep = min(b, self.window)
        pos = (torch.arange(keep, device=self.device) + self._at) % self.window
        self.users[pos] = users[b - keep:]
        self.items[pos] = items[b - keep:]
        if history is not None:
            self.history[pos] = history[b - keep:].to(torch.int32)
        if weights is None:  # index_fill_: an indexed scalar assignment copies the scalar from the host (CUDA sync)
            self.weights.index_fill_(0, pos, 1.0)
        else:
            self.weights[pos] = weights[b - keep:].float()
        self._at = (self._at + keep) % self.window
        self._filled = min(self._filled + keep, self.window)

    def draws(self, users: torch.Tensor, items: torch.Tensor, history: torch.Tensor | None,
              weights: torch.Tensor | None) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor | None,
                                                              torch.Tensor | None]]:
        """Each extra step's events: the batch plus up to B events drawn from the ring (before the batch
        joins it). Rows (n,), histories (n, H) or None, weights (n,) or None."""
        b = users.numel()
        for _ in range(self.extra_steps):
            idx = self._draw(b)
            if idx is None:
                yield users, items, history, weights
                continue
            yield (torch.cat([users, self.users[idx]]), torch.cat([items, self.items[idx]]),
                   None if history is None else torch.cat([history, self.history[idx].long()]),
                   torch.cat([torch.ones(b, device=self.device) if weights is None else weights, self.weights[idx]]))

    def state_dict(self) -> dict[str, Any]:
        return {
            "users": self.users.cpu(), "items": self.items.cpu(), "history": self.history.cpu(),
            "weights": self.weights.cpu(), "filled": self._filled, "at": self._at, "rng": self._gen.get_state(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if tuple(state["history"].shape) != tuple(self.history.shape):
            raise ValueError(f"replay ring is {tuple(state['history'].shape)}, configured {tuple(self.history.shape)}")
        for name in ("users", "items", "history", "weights"):
            getattr(self, name).copy_(state[name])
        self._filled, self._at = int(state["filled"]), int(state["at"])
        self._gen.set_state(state["rng"])
