"""``xir``: cache-augmented in-batch importance resampling (Chen et al., NeurIPS 2022)."""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import torch

from streamtrain.sampling.base import SamplerInput, SamplerOutput, register
from streamtrain.sampling.bir import resampled_negatives, resampling_probs
from streamtrain.sampling.proposal import candidates_to_known
from streamtrain.sampling.resampling import RESAMPLERS, Draws, draw_indices
from streamtrain.sampling.seeded import SeededSampler
from streamtrain.sampling.softmax_loss import (
    hits,
    loss_separate_positive,
    reduce_loss,
    scores,
)

__all__ = ["CacheImportanceResampler"]

log = logging.getLogger(__name__)

_MIN_OCCURRENCE_ROWS = 1024


def _member(values: torch.Tensor, pool: torch.Tensor) -> torch.Tensor:
    """(n,) bool: is ``values[i]`` in ``pool`` (m ≥ 1,)? By sort + search: no host sync."""
    ordered = pool.sort().values  # (m,)
    at = torch.searchsorted(ordered, values).clamp_(max=ordered.numel() - 1)  # (n,)
    return ordered[at] == values


@register
class CacheImportanceResampler(SeededSampler):
    """BIR over the batch plus importance resampling from a cache of hot item ids.

    State: a cache of C item rows (ids only; embedded with the *current* item tower every step,
    so gradients reach them) and an occurrence vector o over item rows (starts at 1). Per step:

    1. K draws per query from the cache, c(k|u) ∝ exp(s(u,k) − log p̂_k), and R draws from the
       batch, w(j|u) ∝ exp(s(u,j) − log p̂_j); accidental hits get weight 0 in both.
    2. L_XIR = λ · L(u; K_u) + (1 − λ) · L(u; R_u), each term of the BIR form
       ``log(exp(s(u,i⁺)) + Σ_j n_uj exp(s(u,j))) − s(u,i⁺)`` (n_uj: draw multiplicities).
       While the cache is still empty (first step) the loss is L(u; R_u) alone.
    3. Unless ``update_state=False``: o[id] += times id was drawn this step (all queries, both
       sources); the new cache is C draws with replacement from the *distinct* ids drawn this
       step, P(id) ∝ o[id]. (If nothing was drawn, e.g. every item is every query's positive,
       the candidates are all batch and cache ids.)

    Defaults: C = B, K = C/2, R = B/2, λ = 0.5 (the authors' scripts use 0.2).
    ``resampling="systematic"`` is an opt-in cheaper resampler (see resampling.py and BIR).
    Reference: Chen et al., "Cache-Augmented Inbatch Importance Resampling for Training
    Recommender Retriever", NeurIPS 2022.

    Stats (0-dim tensors, always the same keys):
    - ``ess``: mean over queries of (Σw)²/Σw² of the batch weights w(·|u) (as for BIR);
    - ``cache_ess``: the same for the cache weights c(·|u) (0 while the cache is empty);
    - ``cache_hit_ratio``: the share of this step's *batch* draws whose item is in the cache,
      i.e. how often the items importance resampling picks from fresh data are already cached
      (how well the cache tracks the currently hard items); 0 while the cache is empty;
    - ``cache_draw_share``: the share of all drawn negatives that came from the cache, K/(K+R)
      up to masked hits (0 while the cache is empty).
    """

    name = "xir"

    def __init__(
        self,
        cache_size: int,
        cache_draws: int,
        batch_draws: int,
        mix_lambda: float = 0.2,
        *,
        resampling: str = "multinomial",
        seed: int = 0,
        device: torch.device | str = "cpu",
    ) -> None:
        if min(cache_size, cache_draws, batch_draws) < 1 or not 0.0 <= mix_lambda <= 1.0:
            raise ValueError(
                f"need cache_size, cache_draws, batch_draws >= 1 and 0 <= mix_lambda <= 1, got "
                f"{cache_size}, {cache_draws}, {batch_draws}, {mix_lambda}"
            )
        if resampling not in RESAMPLERS:
            raise ValueError(f"resampling must be one of {sorted(RESAMPLERS)}, got {resampling!r}")
        super().__init__(seed=seed, device=device)
        self.resampling = resampling
        self.cache_size = cache_size
        self.cache_draws = cache_draws
        self.batch_draws = batch_draws
        self.mix_lambda = mix_lambda
        self.cache_rows = torch.zeros(0, dtype=torch.long, device=self.device)  # (C,) once filled
        self.occurrence = torch.ones(_MIN_OCCURRENCE_ROWS, dtype=torch.long, device=self.device)  # o
        self._last_draws: dict[str, Draws | None] = {}

    @classmethod
    def from_config(
        cls, config: Any, *, batch_size: int, seed: int, device: torch.device | str
    ) -> CacheImportanceResampler:
        """Build from a :class:`~streamtrain.config.SamplerConfig` (``xir.*``; None → defaults)."""
        p = config.xir
        cache_size = p.cache_size or batch_size
        return cls(
            cache_size,
            p.cache_draws or max(1, cache_size // 2),
            p.batch_draws or max(1, batch_size // 2),
            p.mix_lambda,
            resampling=p.resampling,
            seed=seed,
            device=device,
        )

    def loss(self, inp: SamplerInput, *, update_state: bool = True) -> SamplerOutput:
        """Resample from batch and cache, mix the two BIR terms, then (if allowed) update o and
        the cache. No device→host read unless ``inp.num_item_rows`` is missing (see
        :meth:`_ensure_occurrence`)."""
        gen = self._generator(update_state)
        pos_items, cache_rows = inp.pos_items, self.cache_rows
        log_q_b = inp.log_q(pos_items).detach().float()  # (B,)
        logits_b = scores(inp.queries, inp.pos_emb, inp.temperature)  # (B, B) s(u, j), grad
        positives = logits_b.diagonal()  # (B,) s(u_b, i⁺_b)
        neg_b, draws_b, ess_b = resampled_negatives(
            logits_b, log_q_b, hits(pos_items, pos_items), self.batch_draws, gen, method=self.resampling
        )
        term_b = loss_separate_positive(positives, neg_b)  # (B,) L(u; R_u)
        cached = cache_rows.numel() > 0
        draws_c: Draws | None = None
        if cached:
            log_q_c = inp.log_q(cache_rows).detach().float()  # (C,)
            emb_c = inp.embed_items(cache_rows)  # (C, D) current item tower: gradients reach the cache
            logits_c = scores(inp.queries, emb_c, inp.temperature)  # (B, C) s(u, k), grad
            neg_c, draws_c, ess_c = resampled_negatives(
                logits_c, log_q_c, hits(pos_items, cache_rows), self.cache_draws, gen, method=self.resampling
            )
            term_c = loss_separate_positive(positives, neg_c)  # (B,) L(u; K_u)
            loss = reduce_loss(self.mix_lambda * term_c + (1.0 - self.mix_lambda) * term_b, inp.weights)
            cand_rows = torch.cat([pos_items, cache_rows])  # (B+C,)
        else:
            loss = reduce_loss(term_b, inp.weights)
            cand_rows = pos_items

        with torch.no_grad():
            per_batch = draws_b.per_column()  # (B,) int64 draws of each batch position, all queries
            per_cache = draws_c.per_column() if draws_c is not None else per_batch[:0]  # (C,)
            batch_f, drawn_b, drawn_c = per_batch.float(), per_batch.sum().float(), per_cache.sum().float()
            zero = torch.zeros((), device=per_batch.device)  # cache stats while the cache is empty
            in_cache = _member(pos_items, cache_rows).float() if cached else batch_f * 0  # (B,)
            stats = {
                "ess": ess_b.mean(),
                "cache_ess": ess_c.mean() if cached else zero,
                "cache_hit_ratio": (batch_f * in_cache).sum() / drawn_b.clamp_min(1.0),
                "cache_draw_share": drawn_c / (drawn_b + drawn_c).clamp_min(1.0),
            }
        self._last_draws = {"batch": draws_b, "cache": draws_c}
        if update_state:
            self._ensure_occurrence(inp)
            self._update_cache(cand_rows, torch.cat([per_batch, per_cache]), gen)
        return SamplerOutput(loss=loss, stats=stats)

    @property
    def last_counts(self) -> dict[str, torch.Tensor | None]:
        """Draws of the last call as dense counts: ``batch`` (B, B), ``cache`` (B, C) or None while the
        cache was empty (built on demand; tests, debugging)."""
        return {k: None if d is None else d.counts() for k, d in self._last_draws.items()}

    def _ensure_occurrence(self, inp: SamplerInput) -> None:
        """Grow o (new entries start at 1) so every item row indexes it. Uses the item table's
        capacity when the trainer passes it; otherwise reads the batch's largest row (one sync)."""
        need = inp.num_item_rows
        if need is None:
            need = int(inp.pos_items.max()) + 1
        size = self.occurrence.numel()
        if need > size:
            grown = torch.ones(max(need, 2 * size), dtype=torch.long, device=self.occurrence.device)
            grown[:size] = self.occurrence
            self.occurrence = grown

    @torch.no_grad()
    def _update_cache(self, cand_rows: torch.Tensor, cand_counts: torch.Tensor, gen: torch.Generator) -> None:
        """o[row] += draws; new cache = C draws ∝ o over the distinct drawn rows.

        ``cand_rows`` (n,) item rows of the batch and cache positions, ``cand_counts`` (n,) int64 how
        often each position was drawn this step (``Draws.per_column``). Sync-free: duplicates are
        resolved by sorting.
        """
        self.occurrence.index_add_(0, cand_rows, cand_counts)
        drawn = cand_counts > 0  # (n,)
        order = torch.argsort(cand_rows * 2 + (~drawn).long())  # a row's drawn copies sort first
        rows = cand_rows[order]  # (n,)
        first = torch.ones_like(drawn)
        first[1:] = rows[1:] != rows[:-1]  # (n,) one entry per distinct row
        occ = self.occurrence[rows].double()  # (n,)
        weight = torch.where(first & drawn[order], occ, torch.zeros_like(occ))  # (n,)
        weight = torch.where(weight.sum() > 0, weight, occ * first)  # nothing drawn: all candidates
        keep = (weight > 0).unsqueeze(0)  # (1, n)
        picks = draw_indices(weight.log().unsqueeze(0), ~keep, self.cache_size, gen)  # (1, C)
        self.cache_rows = rows[picks.squeeze(0)]

    @torch.no_grad()
    def proposal_log_probs(self, inp: SamplerInput) -> torch.Tensor:
        """λ·c(·|u) + (1−λ)·w(·|u) on the realised batch and the current cache (w alone while the
        cache is empty), summed per item; support: batch ∪ cache items."""

        def probs_on_known(rows: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
            corrected = scores(inp.queries, emb, inp.temperature, inp.log_q(rows))
            probs = resampling_probs(corrected, hits(inp.pos_items, rows))
            return candidates_to_known(rows, probs, inp.known_items).exp()  # (B, N)

        probs = probs_on_known(inp.pos_items, inp.pos_emb)
        if self.cache_rows.numel():
            cache = probs_on_known(self.cache_rows, inp.embed_items(self.cache_rows))
            probs = self.mix_lambda * cache + (1.0 - self.mix_lambda) * probs
        return probs.log()  # (B, N)

    def state_dict(self) -> dict[str, Any]:
        """Generator state, cache item rows (empty before the first step) and o."""
        state = super().state_dict()
        state["cache_rows"] = self.cache_rows.cpu().numpy().copy()
        state["occurrence"] = self.occurrence.cpu().numpy().copy()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore; a saved cache of another size is kept as is until the next update resizes it."""
        super().load_state_dict(state)
        if "cache_rows" not in state or "occurrence" not in state:
            raise ValueError("xir state needs 'cache_rows' and 'occurrence'")
        occ = np.asarray(state["occurrence"], dtype=np.int64)
        if occ.ndim != 1 or occ.size == 0 or (occ < 1).any():
            raise ValueError("xir occurrence vector must be a non-empty 1-d array of counts >= 1")
        self.cache_rows = torch.as_tensor(np.asarray(state["cache_rows"], dtype=np.int64).reshape(-1)).to(self.device)
        self.occurrence = torch.as_tensor(occ).to(self.device)
        if self.cache_rows.numel() and int(self.cache_rows.max()) >= occ.size:
            raise ValueError("xir cache holds rows beyond its occurrence vector; state is corrupted")
        if self.cache_rows.numel() and self.cache_rows.numel() != self.cache_size:
            log.warning("xir cache restored with %d rows, configured %d", self.cache_rows.numel(), self.cache_size)

    def _state_keys(self) -> set[str]:
        return {"rng", "cache_rows", "occurrence"}
