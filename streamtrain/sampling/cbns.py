"""``cbns``: cross-batch negative sampling with a FIFO bank of past item embeddings
(Wang et al., SIGIR 2021)."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from streamtrain.vocab.membership import member
from streamtrain.sampling.base import Sampler, SamplerInput, SamplerOutput, register
from streamtrain.sampling.inbatch import duplicate_hits
from streamtrain.sampling.proposal import candidates_to_known
from streamtrain.sampling.softmax_loss import (
    MASKED_LOGIT,
    hits,
    loss_positive_at,
    reduce_loss,
    scores,
)

__all__ = ["CrossBatchSampler"]


@register
class CrossBatchSampler(Sampler):
    """In-batch logQ negatives plus a FIFO bank of the last M (detached) item embeddings::

        s'(u, j) = s(u, j) − log p̂_j        for batch items (positive included)
        s'(u, m) = <q_u, e_m>/τ − log q_m    for bank entries, log q_m stored at enqueue time
        L_b = log( Σ_{batch} exp(s') + Σ_{bank} exp(s') ) − s'(u_b, i_b)

    Steps ``0 .. W−1`` use the batch only (plain ``inbatch_logq``): early on the item embeddings
    drift too fast for stale copies to be good negatives. The bank is filled from step 0 and read
    from step W on. After each step the batch's detached embeddings, their rows and log p̂ are
    enqueued and the oldest entries dropped; bank entries whose row equals a query's positive are
    masked. Bank entries carry no gradient (they are snapshots). :meth:`forget_rows` invalidates the
    entries of reassigned rows (row −1, zero embedding; masked) until the ring overwrites them. Reference: Wang et al.,
    "Cross-Batch Negative Sampling for Training Two-Tower Recommenders", SIGIR 2021.
    """

    name = "cbns"

    def __init__(self, bank_size: int, warmup_steps: int, *, device: torch.device | str = "cpu") -> None:
        if bank_size < 1 or warmup_steps < 0:
            raise ValueError(f"need bank_size >= 1 and warmup_steps >= 0, got {bank_size}, {warmup_steps}")
        self.device = torch.device(device)
        self.bank_size = bank_size
        self.warmup_steps = warmup_steps
        self.step = 0  # training steps taken (drives the warm-up)
        self._ptr = 0  # next bank slot to overwrite
        self._filled = 0  # valid bank entries (≤ M)
        self._emb: torch.Tensor | None = None  # (M, D) float32, allocated on the first step
        self._log_q = torch.zeros(bank_size, device=self.device)  # (M,)
        self._rows = torch.full((bank_size,), -1, dtype=torch.long, device=self.device)  # (M,)

    @classmethod
    def from_config(cls, config: Any, *, batch_size: int, seed: int, device: torch.device | str) -> CrossBatchSampler:
        """Build from a :class:`~streamtrain.config.SamplerConfig` (``cbns.bank_size``, ``cbns.warmup_steps``)."""
        return cls(config.cbns.bank_size, config.cbns.warmup_steps, device=device)

    def _bank_active(self) -> bool:
        return self.step >= self.warmup_steps and self._filled > 0 and self._emb is not None

    def loss(self, inp: SamplerInput, *, update_state: bool = True) -> SamplerOutput:
        """Batch (∪ bank after warm-up) logQ softmax; enqueues the batch when ``update_state``."""
        log_q = inp.log_q(inp.pos_items).detach().float()  # (B,)
        cand_emb, cand_log_q, hit = inp.pos_emb, log_q, duplicate_hits(inp.pos_items, inp)  # (P, D), (P,), (B, P)
        if self._bank_active():
            assert self._emb is not None
            n = self._filled
            cand_emb = torch.cat([cand_emb.float(), self._emb[:n]])  # (B+n, D); bank rows carry no grad
            cand_log_q = torch.cat([log_q, self._log_q[:n]])  # (B+n,)
            bank_rows = self._rows[:n]  # (n,) −1 where forgotten
            bank_hit = hits(inp.query_items(), bank_rows) | (bank_rows < 0).unsqueeze(0)  # (B, n)
            hit = torch.cat([hit, bank_hit], dim=1)  # (B, B+n)
        logits = scores(inp.queries, cand_emb, inp.temperature, cand_log_q).masked_fill(hit, MASKED_LOGIT)
        loss = reduce_loss(loss_positive_at(logits, inp.positive_cols), inp.weights)
        if update_state:
            self._enqueue(inp.pos_emb.detach(), inp.pos_items, log_q)
            self.step += 1
        fill = torch.full((), self._filled / self.bank_size, device=loss.device)
        return SamplerOutput(loss=loss, stats={"bank_fill": fill})

    @torch.no_grad()
    def forget_rows(self, rows: torch.Tensor) -> None:
        """Invalidate bank entries holding ``rows``: row −1, embedding and log q zeroed (masked)."""
        if rows.numel() == 0:
            return
        stale = member(self._rows, rows)  # (M,) sync-free, unlike torch.isin
        self._rows = self._rows.masked_fill(stale, -1)
        self._log_q = self._log_q.masked_fill(stale, 0.0)
        if self._emb is not None:
            self._emb = self._emb.masked_fill(stale.unsqueeze(1), 0.0)

    def _enqueue(self, emb: torch.Tensor, rows: torch.Tensor, log_q: torch.Tensor) -> None:
        """Write the newest ``min(B, M)`` entries at the ring pointer (oldest get overwritten)."""
        if self._emb is None or self._emb.shape[1] != emb.shape[1]:
            self._emb = torch.zeros(self.bank_size, emb.shape[1], device=self.device)
        take = min(emb.shape[0], self.bank_size)
        slots = (self._ptr + torch.arange(take, device=self.device)) % self.bank_size  # (take,)
        # Out of place: this step's loss still holds the old bank for its backward pass.
        self._emb = self._emb.index_copy(0, slots, emb[-take:].float())
        self._rows = self._rows.index_copy(0, slots, rows[-take:])
        self._log_q = self._log_q.index_copy(0, slots, log_q[-take:].float())
        self._ptr = (self._ptr + take) % self.bank_size
        self._filled = min(self._filled + take, self.bank_size)

    @torch.no_grad()
    def proposal_log_probs(self, inp: SamplerInput) -> torch.Tensor:
        """Each batch position and (after warm-up) each bank entry equally likely, by item."""
        batch = inp.queries.shape[0]
        rows = inp.pos_items  # (P,)
        if self._bank_active():
            rows = torch.cat([rows, self._rows[: self._filled]])
        probs = torch.full((batch, rows.numel()), 1.0 / rows.numel(), device=inp.queries.device)
        return candidates_to_known(rows, probs, inp.known_items)  # (B, N)

    def state_dict(self) -> dict[str, Any]:
        """Bank embeddings, rows and log q (oldest first), plus the step counter."""
        order = (torch.arange(self._filled, device=self.device) + self._ptr - self._filled) % self.bank_size
        emb = self._emb[order] if self._emb is not None else torch.zeros(0, 0)
        return {
            "step": np.asarray(self.step, dtype=np.int64),
            "bank_emb": emb.cpu().numpy().copy(),
            "bank_rows": self._rows[order].cpu().numpy().copy(),
            "bank_log_q": self._log_q[order].cpu().numpy().copy(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the bank (its newest entries if the saved bank is larger than M) and the step."""
        expected = {"step", "bank_emb", "bank_rows", "bank_log_q"}
        if set(state) != expected:
            raise ValueError(f"cbns state needs keys {sorted(expected)}, got {sorted(state)}")
        rows = torch.as_tensor(np.asarray(state["bank_rows"], dtype=np.int64))
        emb = torch.as_tensor(np.asarray(state["bank_emb"], dtype=np.float32))
        log_q = torch.as_tensor(np.asarray(state["bank_log_q"], dtype=np.float32))
        if not (rows.shape[0] == log_q.shape[0] == (emb.shape[0] if rows.shape[0] else 0)):
            raise ValueError("cbns state arrays disagree in length")
        n = min(rows.shape[0], self.bank_size)
        self.step = int(np.asarray(state["step"]))
        self._rows.fill_(-1)
        self._log_q.zero_()
        self._emb = None
        if n:
            self._emb = torch.zeros(self.bank_size, emb.shape[1], device=self.device)
            self._emb[:n] = emb[-n:].to(self.device)
            self._rows[:n] = rows[-n:].to(self.device)
            self._log_q[:n] = log_q[-n:].to(self.device)
        self._filled = n
        self._ptr = n % self.bank_size
