"""Per-user recent-item history: the input of the history query tower.

A user whose events arrive in one burst is gone before an id embedding could learn anything about
them, so the query is built from what the user just did (Covington et al. 2016; Yi et al. 2019).
This module keeps, per user row, the item rows of that user's last ``H`` events and answers two
questions without any per-event Python:

* :meth:`UserHistory.causal` — for every event of a micro-batch, the ``H`` items the user touched
  *before* it: the stored history followed by the user's earlier events of the same batch, in event
  time order (ties by position in the batch). Never the event itself or a later one, so the
  progressive (test-then-train) metrics stay honest and a new user is scored from their second event.
* :meth:`UserHistory.append` — fold a batch into the stored histories (after the causal read).

Layout: ``items`` is a ``(user_capacity, H)`` int32 buffer, right-aligned (column ``H-1`` is the
newest item), ``-1`` where a user has fewer than ``H`` events. It is a buffer of the model, so it
travels with ``model.state_dict()`` into checkpoints, ``eval`` and ``export`` (memory:
4·H bytes per user row). Rows follow the vocabularies: :meth:`forget_users` clears a user row
handed to a new id, :meth:`forget_items` drops an item row handed to a new id from every history.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch
from torch import nn

from streamtrain.vocab.membership import member

__all__ = ["EMPTY", "BatchOrder", "OrderTensors", "UserHistory"]

EMPTY = -1  # marks an unused history slot


class OrderTensors(NamedTuple):
    """:class:`BatchOrder`'s arrays on the device (int64): what :class:`UserHistory` reads."""

    order: torch.Tensor  # (B,)
    rank: torch.Tensor  # (B,)
    users: torch.Tensor  # (U,)
    last: torch.Tensor  # (U,)
    count: torch.Tensor  # (U,)


class BatchOrder:
    """How a batch's events group by user, in event-time order: computed once per step on the host,
    from the host's copy of the user rows (never read back from the device).

    ``order`` (B,) sorts events by (user row, event time, position); ``rank`` (B,) is each sorted
    event's index among its user's events in the batch; ``last`` (U,) the sorted index of each
    user's last event, ``users`` (U,) those users' rows, ``count`` (U,) their events in the batch.
    The trainer uploads :meth:`arrays` with the rest of the batch; :meth:`tensors` copies them itself.
    """

    def __init__(self, user_rows: np.ndarray, event_time: np.ndarray | None = None) -> None:
        n = len(user_rows)
        times = np.zeros(n) if event_time is None else np.asarray(event_time, dtype=np.float64)
        # lexsort: last key is primary; np.arange breaks time ties by position in the batch.
        order = np.lexsort((np.arange(n), times, user_rows))  # (B,)
        sorted_users = user_rows[order]
        first = np.ones(n, dtype=bool)
        first[1:] = sorted_users[1:] != sorted_users[:-1]
        starts = np.flatnonzero(first)  # (U,)
        group_start = np.maximum.accumulate(np.where(first, np.arange(n), 0))  # (B,)
        self.order = order
        self.rank = np.arange(n) - group_start  # (B,)
        self.last = np.append(starts[1:], n) - 1  # (U,)
        self.users = sorted_users[starts]  # (U,)
        self.count = self.rank[self.last] + 1  # (U,)

    def arrays(self) -> list[np.ndarray]:
        """The five int64 arrays in :class:`OrderTensors` order."""
        return [np.asarray(a, dtype=np.int64) for a in (self.order, self.rank, self.users, self.last, self.count)]

    def tensors(self, device: torch.device | str) -> OrderTensors:
        """:class:`OrderTensors` on ``device`` (a plain, blocking copy: tests, probes)."""
        return OrderTensors(*(torch.as_tensor(a, device=device) for a in self.arrays()))


def _on_device(border: BatchOrder | OrderTensors, device: torch.device) -> OrderTensors:
    return border if isinstance(border, OrderTensors) else border.tensors(device)


class UserHistory(nn.Module):
    """The last ``length`` item rows of every user row; see the module docstring."""

    def __init__(self, user_capacity: int, length: int) -> None:
        super().__init__()
        if length < 1:
            raise ValueError(f"history length must be >= 1, got {length}")
        self.length = length
        self.register_buffer("items", torch.full((user_capacity, length), EMPTY, dtype=torch.int32))
        self.items: torch.Tensor

    def current(self, user_rows: torch.Tensor) -> torch.Tensor:
        """(n,) user rows -> (n, H) int64 stored histories (what a query after all training sees)."""
        return self.items[user_rows].long()

    def _window(
        self, user_rows: torch.Tensor, item_rows: torch.Tensor, order: torch.Tensor, sorted_index: torch.Tensor,
        before: torch.Tensor,
    ) -> torch.Tensor:
        """The last H of (stored history of the user, then the batch items in sorted positions
        ``sorted_index - before .. sorted_index - 1``): (n, H) int64, right-aligned."""
        device = self.items.device
        h = self.length
        sorted_items = item_rows[order]  # (B,)
        col = torch.arange(h, device=device)  # (H,)
        pos = before.unsqueeze(1) + col  # (n, H) index into [stored (H) ++ batch part (before)]
        from_stored = pos < h
        stored = self.items[user_rows].long()  # (n, H)
        stored_part = stored.gather(1, pos.clamp(max=h - 1))
        batch_at = (sorted_index.unsqueeze(1) + col - h).clamp(min=0)  # (n, H)
        return torch.where(from_stored, stored_part, sorted_items[batch_at])

    @torch.no_grad()
    def causal(
        self, user_rows: torch.Tensor, item_rows: torch.Tensor, border: BatchOrder | OrderTensors
    ) -> torch.Tensor:
        """(B,) users and items of a batch -> (B, H) int64 history before each event, in batch order."""
        device = self.items.device
        t = _on_device(border, device)
        sorted_users = user_rows[t.order]  # (B,)
        idx = torch.arange(t.order.numel(), device=device)
        window = self._window(sorted_users, item_rows, t.order, idx, t.rank)  # (B, H) in sorted order
        out = torch.empty_like(window)
        out[t.order] = window
        return out

    @torch.no_grad()
    def append(self, item_rows: torch.Tensor, border: BatchOrder | OrderTensors) -> None:
        """Fold the batch (its items, grouped by ``border``) into the stored histories."""
        t = _on_device(border, self.items.device)
        window = self._window(t.users, item_rows, t.order, t.last + 1, t.count)  # (U, H)
        self.items[t.users] = window.to(self.items.dtype)

    @torch.no_grad()
    def forget_users(self, user_rows: torch.Tensor) -> None:
        """Clear the histories of user rows handed to new ids. ``index_fill_``, not ``items[rows] = EMPTY``:
        on CUDA the latter copies the scalar from the host, a sync the first lent GPU caught."""
        if user_rows.numel():
            self.items.index_fill_(0, user_rows.to(self.items.device), EMPTY)

    @torch.no_grad()
    def forget_items(self, item_rows: torch.Tensor) -> None:
        """Drop item rows handed to new ids from every history (a full scan: call only on evictions).
        Sync-free (sort + search, not ``torch.isin``)."""
        if item_rows.numel():
            stale = member(self.items, item_rows.to(self.items.device))
            self.items.masked_fill_(stale, EMPTY)
