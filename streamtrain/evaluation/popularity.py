"""Popularity baselines for progressive evaluation: does the model beat counting?

Two rankers that need no model, scored on exactly the batches and positives the model's
progressive evaluation scores (the first ``max_queries`` events of an evaluated batch, positives
with an item row, every known item a candidate):

* ``popular_all``: "most popular so far", items by how many events they had in all earlier steps;
* ``popular_recent``: "most popular recently", the same counts decayed by half every
  ``half_life_events`` events, so a fading item drops and a rising one climbs within a few half-lives.

Both recommend the same top-K list to every query (popularity is not personal), so an evaluated step
costs one ``topk`` over the known items' counts per baseline, and the per-event metrics are the
model's: Recall@K = [position < K], NDCG@K = [position < K] / log2(position + 2), where position is
the positive's place in that list. Counts are a per-item-row tensor updated once per step with
``index_add_``; a row handed to a new item id is zeroed with :meth:`PopularityBaselines.forget_rows`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from streamtrain.evaluation.progressive import ProgressiveEvaluator, excluded_candidates
from streamtrain.vocab.vocabulary import FALLBACK_ROW

__all__ = ["BASELINES", "PopularityBaselines"]

BASELINES = ("popular_all", "popular_recent")
_STATE_FORMAT = 1


class PopularityBaselines:
    """Item-row counts (all-time and decayed) and the rolling progressive metrics of ranking by them.

    Per step the trainer calls, in order: :meth:`forget_rows` for rows (re)assigned this step,
    :meth:`score` on evaluated steps (before :meth:`observe`, so a batch never counts towards its own
    ranking), :meth:`observe` with every item row of the batch, and :meth:`update` with the floats of
    :meth:`score` once they are on the host.
    """

    def __init__(
        self,
        num_rows: int,
        k_list: Sequence[int],
        *,
        half_life_events: float,
        window: int = 50,
        max_queries: int = 256,
        device: torch.device | str = "cpu",
    ) -> None:
        if half_life_events <= 0:
            raise ValueError(f"half_life_events must be > 0, got {half_life_events}")
        self.k_list = tuple(int(k) for k in k_list)
        self.half_life_events = float(half_life_events)
        self.max_queries = max_queries
        self.device = torch.device(device)
        # int64: exact at any stream length. The decayed counts stay below ~1.44 x half-life per item,
        # so float32 keeps their ordering.
        self.counts_all = torch.zeros(num_rows, dtype=torch.int64, device=self.device)  # (R,)
        self.counts_recent = torch.zeros(num_rows, dtype=torch.float32, device=self.device)  # (R,)
        # ProgressiveEvaluator's rolling window is reused as is; its score() is never called here.
        self.rolling = {name: ProgressiveEvaluator(self.k_list, window=window) for name in BASELINES}

    @property
    def width(self) -> int:
        """Length of one baseline's sums in :meth:`score`: Recall@K and NDCG@K sums, then the count."""
        return 2 * len(self.k_list) + 1

    def forget_rows(self, rows: torch.Tensor) -> None:
        """Zero the counts of ``rows`` (n,): they now belong to new item ids."""
        if rows.numel():
            rows = rows.to(self.device)
            # index_fill_: a scalar assignment through an index copies the scalar from the host (a sync on CUDA)
            self.counts_all.index_fill_(0, rows, 0)
            self.counts_recent.index_fill_(0, rows, 0.0)

    def observe(self, item_rows: torch.Tensor) -> None:
        """Count one step's events, ``item_rows`` (B,); the decayed counts first age by B events."""
        item_rows = item_rows.to(self.device)
        self.counts_recent.mul_(0.5 ** (item_rows.numel() / self.half_life_events))
        self.counts_all.index_add_(0, item_rows, torch.ones_like(item_rows))
        self.counts_recent.index_add_(0, item_rows, torch.ones_like(item_rows, dtype=torch.float32))

    @torch.no_grad()
    def score(
        self, item_rows: torch.Tensor, known_items: torch.Tensor, exclude: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Both baselines' sums on this batch, ``(len(BASELINES) * width,)`` on the device, no host sync.

        ``item_rows`` (B,) the batch's positives (only the first ``max_queries`` are ranked, as the
        model's evaluator does); ``known_items`` (N,) the candidate rows, N > 0; ``exclude`` (B, H)
        item rows left out of each query's list (its user's recent items; a positive among them misses).
        """
        item_rows = item_rows[: self.max_queries].to(self.device)  # (b,)
        keep = item_rows != FALLBACK_ROW  # (b,)
        k_max = max(self.k_list)
        ex = None if exclude is None else exclude[: self.max_queries].to(self.device)  # (b, H)
        hittable = keep if ex is None else keep & ~excluded_candidates(ex, item_rows, known_items)[1]  # (b,)
        # With exclusions a query's list is the global one without its H items: take k_max + H.
        length = min(k_max + (0 if ex is None else ex.shape[1]), known_items.numel())
        out = []
        for counts in (self.counts_all, self.counts_recent):
            top = counts[known_items].topk(length).indices  # (L,)
            top_rows = known_items[top]  # (L,) the list every query gets
            match = item_rows.unsqueeze(1) == top_rows.unsqueeze(0)  # (b, L)
            place = torch.arange(length, device=self.device).expand(item_rows.numel(), -1)  # (b, L)
            if ex is not None:  # place among the entries the query keeps
                dropped = (top_rows.view(1, -1, 1) == ex.unsqueeze(1)).any(2)  # (b, L)
                place = (~dropped).long().cumsum(1) - 1
            # Position in the list; k_max (a miss at every K) when the positive is not in it.
            position = torch.where(match.any(1), place.gather(1, match.int().argmax(1, keepdim=True)).squeeze(1), k_max)
            # Python-int comparisons: torch.tensor(k_list) on CUDA would be a blocking host→device copy.
            hit = torch.stack([position < k for k in self.k_list], dim=1) & hittable.unsqueeze(1)  # (b, K)
            gain = hit.float() / torch.log2(position.float() + 2).unsqueeze(1)  # (b, K)
            out += [hit.float().sum(0), gain.sum(0), keep.sum().float().unsqueeze(0)]
        return torch.cat(out)  # (2 * (2K + 1),)

    def update(self, sums: Sequence[float]) -> dict[str, dict[str, float]]:
        """Add one evaluated step (the floats of :meth:`score`); returns each baseline's rolling averages."""
        if len(sums) != len(BASELINES) * self.width:
            raise ValueError(f"expected {len(BASELINES) * self.width} values, got {len(sums)}")
        return {
            name: ev.update(sums[i * self.width : (i + 1) * self.width]) for i, (name, ev) in enumerate(self.rolling.items())
        }

    def averages(self) -> dict[str, dict[str, float]]:
        """Each baseline's rolling Recall@K / NDCG@K (NaN before any evaluated step)."""
        return {name: ev.averages() for name, ev in self.rolling.items()}

    def reset_rolling(self) -> None:
        """Empty the rolling windows (counts are kept), e.g. to average over the second half of a run."""
        for ev in self.rolling.values():
            ev.load_state_dict({"history": []})

    def state_dict(self) -> dict[str, Any]:
        """Counts (live tensors: the caller copies them) and rolling windows; ``torch.load(weights_only=True)``-safe."""
        return {
            "format": _STATE_FORMAT,
            "counts_all": self.counts_all,
            "counts_recent": self.counts_recent,
            "rolling": {name: ev.state_dict() for name, ev in self.rolling.items()},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`.

        Raises:
            ValueError: another state format, or counts for a different item capacity.
        """
        if state.get("format") != _STATE_FORMAT:
            raise ValueError(f"popularity baseline state format {state.get('format')!r} is not {_STATE_FORMAT}")
        counts_all, counts_recent = state["counts_all"], state["counts_recent"]
        if counts_all.shape != self.counts_all.shape or counts_recent.shape != self.counts_recent.shape:
            raise ValueError(
                f"popularity counts have {counts_all.shape[0]} rows, the item table {self.counts_all.shape[0]}; "
                "restore with the model.item_capacity the checkpoint was written with"
            )
        self.counts_all.copy_(counts_all)
        self.counts_recent.copy_(counts_recent)
        for name, ev in self.rolling.items():
            ev.load_state_dict(state["rolling"][name])
