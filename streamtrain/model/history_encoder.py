"""The history query tower's encoder: a user's last H items -> one (B, D) vector.

Two choices, each measured in BENCHMARKS.md ("Beating co-visitation"):

* **what an item in a history looks like** (``history_input``): ``"item"`` reuses the item tower's
  output, so a query made of items is closest to *those same items*; on logs where nobody takes an
  item twice (ratings) that puts the user's own past at the top of every ranking. ``"context"``
  gives each item a second row, its *context* embedding (word2vec's input vs output vectors): the
  query is built from context rows and scored against item rows, so "what follows item h" is learned
  freely instead of being tied to "what h is like". Context rows start at zero (a new item in a
  history adds nothing until it is trained, rather than noise) and follow the item vocabulary.
* **how the items are pooled** (``history_pooling``): ``"mean"``, weights ``decay^age``; or
  ``"attention"``, one causal self-attention layer over the H items with learned position
  embeddings (SASRec, Kang & McAuley 2018), whose output at the newest position is the query.

The encoder sees only item rows (``EMPTY`` = no item), so serving computes a user's query from the
stored history exactly as training does; the export stays ``score = q(user) . e(item)``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch
from torch import nn

from streamtrain.model.history import EMPTY

__all__ = ["HISTORY_INPUTS", "HISTORY_POOLINGS", "HistoryEncoder"]

HistoryInput = Literal["item", "context", "both"]
HistoryPooling = Literal["mean", "attention"]
HISTORY_INPUTS: tuple[str, ...] = ("item", "context", "both")
HISTORY_POOLINGS: tuple[str, ...] = ("mean", "attention")


class HistoryEncoder(nn.Module):
    """(B, H) item rows -> (B, D) pooled history (zeros for an empty history)."""

    def __init__(
        self, item_capacity: int, dim: int, length: int, decay: float, *,
        history_input: HistoryInput = "item", pooling: HistoryPooling = "mean",
    ) -> None:
        super().__init__()
        if history_input not in HISTORY_INPUTS:
            raise ValueError(f"history_input must be one of {HISTORY_INPUTS}, got {history_input!r}")
        if pooling not in HISTORY_POOLINGS:
            raise ValueError(f"history_pooling must be one of {HISTORY_POOLINGS}, got {pooling!r}")
        self.history_input = history_input
        self.pooling = pooling
        self.decay = decay
        # A 1-row placeholder when unused, so every checkpoint has the same keys.
        rows = item_capacity if history_input != "item" else 1
        self.context = nn.Embedding(rows, dim, sparse=True)
        nn.init.zeros_(self.context.weight)
        self.attention = _Attention(dim, length) if pooling == "attention" else None

    def forward(self, history: torch.Tensor, item_tower: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
        b, h = history.shape
        valid = history != EMPTY  # (B, H)
        rows = history.clamp(min=0).reshape(-1)  # (B·H,); B = 0 on an idle rank of the split step
        if self.history_input == "context":
            flat = self.context(rows)
        elif self.history_input == "item":
            flat = item_tower(rows)
        else:  # both: the item's own vector (symmetric similarity) plus its context row (what follows it)
            flat = item_tower(rows) + self.context(rows)
        emb = flat.reshape(b, h, flat.shape[-1])  # (B, H, D)
        # Column H-1 is the newest item; older ones weigh decay^age.
        age = torch.arange(h - 1, -1, -1, device=history.device, dtype=emb.dtype)  # (H,)
        weight = valid.to(emb.dtype) * self.decay**age  # (B, H)
        total = weight.sum(1, keepdim=True).clamp(min=1e-6)  # (B, 1)
        mean = torch.einsum("bh,bhd->bd", weight / total, emb)  # (B, D)
        if self.attention is None:
            return mean
        return mean + self.attention(mean, emb, valid)  # (B, D)

    def row_tables(self) -> list[nn.Parameter]:
        """Tables indexed by item row (the context rows), empty when there are none."""
        return [self.context.weight] if self.history_input != "item" else []  # type: ignore[list-item]

    @torch.no_grad()
    def reset_rows(self, rows: torch.Tensor) -> None:
        """Zero the context rows of item rows handed to new ids."""
        if self.history_input != "item" and rows.numel():
            self.context.weight.index_fill_(0, rows.to(self.context.weight.device), 0.0)


class _Attention(nn.Module):
    """One self-attention read of the history with learned positions, added to the decayed mean.

    The query is the decayed mean (the newest items dominate it), keys and values are the items plus
    a learned embedding of their position (age), so the layer learns which of the last H items, and
    which ages, predict the next one (SASRec's causal layer at the newest position). The output
    projection starts at zero: a fresh model *is* the mean-pooling tower and the attention grows from
    there, which keeps the first steps of a stream as good as the mean's. No row is empty-safe by
    itself: an all-empty history has no valid key, and its output is 0."""

    def __init__(self, dim: int, length: int) -> None:
        super().__init__()
        # Initial values from a fixed local generator, not the process-wide one: every rank of a
        # distributed job, and a process that rebuilds the model, starts from the same layer.
        gen = torch.Generator().manual_seed(16)
        self.position = nn.Parameter(torch.randn(length, dim, generator=gen) * 0.02)  # (H, D), column H-1 newest
        self.q = nn.Linear(dim, dim, bias=False)
        self.k = nn.Linear(dim, dim, bias=False)
        self.v = nn.Linear(dim, dim, bias=False)
        self.out = nn.Linear(dim, dim, bias=False)
        with torch.no_grad():
            for layer in (self.q, self.k, self.v):
                layer.weight.copy_(torch.randn(dim, dim, generator=gen) * dim**-0.5)
        nn.init.zeros_(self.out.weight)
        self.scale = dim**-0.5

    def forward(self, mean: torch.Tensor, emb: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        x = emb + self.position.to(emb.dtype)  # (B, H, D)
        logits = torch.einsum("bd,bhd->bh", self.q(mean), self.k(x)) * self.scale  # (B, H)
        logits = logits.float().masked_fill(~valid, -1e9)
        attn = torch.softmax(logits, dim=1) * valid.any(1, keepdim=True)  # (B, H); 0 for an empty history
        return self.out(torch.einsum("bh,bhd->bd", attn.to(x.dtype), self.v(x)))  # (B, D)
