"""``xir``: cache-augmented in-batch importance resampling (Chen et al., NeurIPS 2022)."""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import torch

from streamtrain.vocab.membership import member as _member
from streamtrain.sampling.base import SamplerInput, SamplerOutput, register
from streamtrain.sampling.bir import positive_logits, resampled_negatives, resampling_probs
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
_RESCALE_LOG2 = 64.0  # fold the pending decay into the stored counts once it exceeds 2^64


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

    In a stream (``occurrence_half_life_steps`` h): o = 1 + Σ_s 2^(−(t−s)/h) · draws_s, i.e. the draw
    counts halve every h steps, so the cache follows drift instead of last month's hard items (the
    paper trains offline; h = None or 0 keeps plain counts). Stored lazily as counts scaled up by
    2^(age/h), so a step touches only the rows drawn, not all of o. :meth:`forget_rows` resets o
    of reassigned rows to 1 and replaces their cache entries by −1: masked (never drawn, never
    embedded as that row) until the next cache update draws a fresh cache.

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
        occurrence_half_life_steps: float | None = None,
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
        if occurrence_half_life_steps is not None and occurrence_half_life_steps < 0:
            raise ValueError(f"occurrence_half_life_steps must be >= 0 or None, got {occurrence_half_life_steps}")
        self.half_life = occurrence_half_life_steps or None
        self._decay = 0.5 ** (1.0 / self.half_life) if self.half_life else 1.0  # per step
        self.cache_rows = torch.zeros(0, dtype=torch.long, device=self.device)  # (C,) once filled; −1 = forgotten
        # o = 1 + excess · decay^age: draw counts are stored scaled up by decay^−(age at the draw).
        self._excess = torch.zeros(_MIN_OCCURRENCE_ROWS, dtype=torch.float64, device=self.device)  # (rows,)
        self._age = 0  # steps since the stored counts were last rescaled
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
            occurrence_half_life_steps=p.occurrence_half_life_steps,
            resampling=p.resampling,
            seed=seed,
            device=device,
        )

    def loss(self, inp: SamplerInput, *, update_state: bool = True) -> SamplerOutput:
        """Resample from batch and cache, mix the two BIR terms, then (if allowed) update o and
        the cache. No device→host read unless ``inp.num_item_rows`` is missing (see
        :meth:`_ensure_occurrence`)."""
        gen = self._generator(update_state)
        # Per-query draws: the rank's own stream in the split step; the cache update below keeps ``gen``.
        draw_gen = gen if inp.draw_generator is None else inp.draw_generator
        pos_items, cache_rows, query_items = inp.pos_items, self.cache_rows, inp.query_items()
        log_q_b = inp.log_q(pos_items).detach().float()  # (P,)
        logits_b = scores(inp.queries, inp.pos_emb, inp.temperature)  # (B, P) s(u, j), grad
        positives = positive_logits(logits_b, inp.positive_cols)  # (B,) s(u_b, i⁺_b)
        neg_b, draws_b, ess_b = resampled_negatives(
            logits_b, log_q_b, hits(query_items, pos_items), self.batch_draws, draw_gen, method=self.resampling
        )
        term_b = loss_separate_positive(positives, neg_b)  # (B,) L(u; R_u)
        cached = cache_rows.numel() > 0
        draws_c: Draws | None = None
        if cached:
            forgotten = cache_rows < 0  # (C,) entries of reassigned rows: masked like accidental hits
            safe_rows = cache_rows.clamp_min(0)  # (C,) any valid row; never drawn where forgotten
            log_q_c = inp.log_q(safe_rows).detach().float()  # (C,)
            emb_c = inp.embed_items(safe_rows)  # (C, D) current item tower: gradients reach the cache
            logits_c = scores(inp.queries, emb_c, inp.temperature)  # (B, C) s(u, k), grad
            hit_c = hits(query_items, cache_rows) | forgotten.unsqueeze(0)  # (B, C)
            neg_c, draws_c, ess_c = resampled_negatives(
                logits_c, log_q_c, hit_c, self.cache_draws, draw_gen, method=self.resampling
            )
            term_c = loss_separate_positive(positives, neg_c)  # (B,) L(u; K_u)
            loss = reduce_loss(self.mix_lambda * term_c + (1.0 - self.mix_lambda) * term_b, inp.weights)
            cand_rows = torch.cat([pos_items, cache_rows])  # (P+C,)
        else:
            loss = reduce_loss(term_b, inp.weights)
            cand_rows = pos_items

        with torch.no_grad():
            per_batch = draws_b.per_column()  # (P,) int64 draws of each batch position, these queries
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
            # Split step: every rank's draws (summed) so that every rank's cache gets the same update.
            counts = inp.summed_over_ranks(torch.cat([per_batch, per_cache]))  # (P+C,)
            self._update_cache(cand_rows, counts, gen)
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
        size = self._excess.numel()
        if need > size:
            grown = torch.zeros(max(need, 2 * size), dtype=torch.float64, device=self._excess.device)
            grown[:size] = self._excess
            self._excess = grown

    @property
    def occurrence(self) -> torch.Tensor:
        """(rows,) float64 o = 1 + decayed draw counts (computed; tests, debugging)."""
        return 1.0 + self._excess * self._decay**self._age

    @occurrence.setter
    def occurrence(self, values: torch.Tensor) -> None:
        self._excess = values.to(device=self.device, dtype=torch.float64) - 1.0
        self._age = 0

    @torch.no_grad()
    def forget_rows(self, rows: torch.Tensor) -> None:
        """o of ``rows`` back to 1 and their cache entries to −1 (masked until the next update
        redraws the cache). Sync-free: rows beyond o's current size are already at 1."""
        if rows.numel() == 0:
            return
        size = self._excess.numel()
        inside = rows < size
        # min(excess, 0) = 0 resets a row; min(excess, inf) leaves the clamped stand-ins untouched.
        reset = torch.where(inside, 0.0, float("inf")).to(torch.float64)
        self._excess.scatter_reduce_(0, rows.clamp(max=size - 1), reset, reduce="amin")
        if self.cache_rows.numel():
            self.cache_rows = torch.where(_member(self.cache_rows, rows), -1, self.cache_rows)

    @torch.no_grad()
    def _update_cache(self, cand_rows: torch.Tensor, cand_counts: torch.Tensor, gen: torch.Generator) -> None:
        """o[row] += draws; new cache = C draws ∝ o over the distinct drawn rows.

        ``cand_rows`` (n,) item rows of the batch and cache positions, ``cand_counts`` (n,) int64 how
        often each position was drawn this step (``Draws.per_column``). Sync-free: duplicates are
        resolved by sorting.
        """
        valid = cand_rows >= 0  # (n,) forgotten cache entries (−1) are never drawn
        safe = cand_rows.clamp_min(0)
        growth = self._decay ** -self._age  # counts enter at today's scale
        self._excess.index_add_(0, safe, cand_counts.double() * growth)
        drawn = cand_counts > 0  # (n,)
        order = torch.argsort(cand_rows * 2 + (~drawn).long())  # a row's drawn copies sort first
        rows = cand_rows[order]  # (n,)
        first = torch.ones_like(drawn)
        first[1:] = rows[1:] != rows[:-1]  # (n,) one entry per distinct row
        occ = 1.0 + self._excess[safe[order]] * self._decay**self._age  # (n,) o after this step's draws
        weight = torch.where(first & drawn[order], occ, torch.zeros_like(occ))  # (n,)
        fallback = occ * (first & valid[order])  # nothing drawn: all valid candidates
        weight = torch.where(weight.sum() > 0, weight, fallback)
        keep = (weight > 0).unsqueeze(0)  # (1, n)
        picks = draw_indices(weight.log().unsqueeze(0), ~keep, self.cache_size, gen)  # (1, C)
        self.cache_rows = rows[picks.squeeze(0)]
        self._advance_age()

    def _advance_age(self) -> None:
        """One step older; folds the pending decay into the stored counts before they grow past
        2^64 (every 64 half-lives: O(rows) then, nothing in between)."""
        if self.half_life is None:
            return
        self._age += 1
        if self._age / self.half_life > _RESCALE_LOG2:
            self._excess.mul_(self._decay**self._age)
            self._age = 0

    @torch.no_grad()
    def proposal_log_probs(self, inp: SamplerInput) -> torch.Tensor:
        """λ·c(·|u) + (1−λ)·w(·|u) on the realised batch and the current cache (w alone while the
        cache is empty), summed per item; support: batch ∪ cache items."""

        def probs_on_known(rows: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
            safe = rows.clamp_min(0)  # forgotten cache entries (−1) are masked below
            corrected = scores(inp.queries, emb, inp.temperature, inp.log_q(safe))
            probs = resampling_probs(corrected, hits(inp.query_items(), rows) | (rows < 0).unsqueeze(0))
            return candidates_to_known(rows, probs, inp.known_items).exp()  # (B, N)

        probs = probs_on_known(inp.pos_items, inp.pos_emb)
        if self.cache_rows.numel():
            cache = probs_on_known(self.cache_rows, inp.embed_items(self.cache_rows.clamp_min(0)))
            probs = self.mix_lambda * cache + (1.0 - self.mix_lambda) * probs
        return probs.log()  # (B, N)

    def state_dict(self) -> dict[str, Any]:
        """Generator state, cache item rows (empty before the first step; −1 = forgotten) and o as
        stored: ``occurrence_excess`` (float64, scaled counts) and ``occurrence_age`` (steps)."""
        state = super().state_dict()
        state["cache_rows"] = self.cache_rows.cpu().numpy().copy()
        state["occurrence_excess"] = self._excess.cpu().numpy().copy()
        state["occurrence_age"] = np.asarray(self._age, dtype=np.int64)
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore; a saved cache of another size is kept as is until the next update resizes it.
        Also reads the integer ``occurrence`` vector of states saved before o decayed."""
        super().load_state_dict(state)
        if "cache_rows" not in state or not ("occurrence" in state or "occurrence_excess" in state):
            raise ValueError("xir state needs 'cache_rows' and 'occurrence_excess' (or the older 'occurrence')")
        if "occurrence_excess" in state:
            excess = np.asarray(state["occurrence_excess"], dtype=np.float64)
            age = int(np.asarray(state.get("occurrence_age", 0)))
        else:  # integer counts + 1, no decay yet: the same o at age 0
            excess, age = np.asarray(state["occurrence"], dtype=np.float64) - 1.0, 0
        if excess.ndim != 1 or excess.size == 0 or not (excess >= 0).all():
            raise ValueError("xir occurrence vector must be a non-empty 1-d array of values >= 1")
        self.cache_rows = torch.as_tensor(np.asarray(state["cache_rows"], dtype=np.int64).reshape(-1)).to(self.device)
        self._excess = torch.as_tensor(excess).to(self.device)
        self._age = age
        if self.cache_rows.numel() and int(self.cache_rows.max()) >= excess.size:
            raise ValueError("xir cache holds rows beyond its occurrence vector; state is corrupted")
        if self.cache_rows.numel() and self.cache_rows.numel() != self.cache_size:
            log.warning("xir cache restored with %d rows, configured %d", self.cache_rows.numel(), self.cache_size)

    def _state_keys(self) -> set[str]:
        return {"rng", "cache_rows", "occurrence", "occurrence_excess", "occurrence_age"}
