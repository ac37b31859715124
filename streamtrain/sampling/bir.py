"""``bir``: in-batch importance resampling (Chen et al., NeurIPS 2022)."""

from __future__ import annotations

from typing import Any

import torch

from streamtrain.sampling.base import SamplerInput, SamplerOutput, register
from streamtrain.sampling.proposal import candidates_to_known
from streamtrain.sampling.resampling import RESAMPLERS, Draws
from streamtrain.sampling.seeded import SeededSampler
from streamtrain.sampling.softmax_loss import hits, loss_separate_positive, reduce_loss, scores

__all__ = ["BatchImportanceResampler", "positive_logits", "resampled_negatives", "resampling_probs"]


def positive_logits(logits: torch.Tensor, cols: torch.Tensor | None) -> torch.Tensor:
    """(B,) the positives' scores from the (B, P) in-batch score matrix: the diagonal, or column
    ``cols[b]`` of row b in the split step."""
    if cols is None:
        return logits.diagonal()
    return logits.gather(1, cols.unsqueeze(1)).squeeze(1)


def resampled_negatives(
    logits: torch.Tensor,
    log_q: torch.Tensor,
    hit: torch.Tensor,
    num_samples: int,
    generator: torch.Generator,
    *,
    method: str = "multinomial",
) -> tuple[torch.Tensor, Draws, torch.Tensor]:
    """Draw ``num_samples`` per query ∝ exp(s − log p̂) (hits excluded) and return the negative
    logits s(u, j) of the draws, the draws and the per-row ESS (B,).

    ``logits`` (B, n) = s(u, j), the plain scores (with grad); ``log_q`` (n,) the candidates' log p̂,
    used for the draw only. The negatives carry the scores' gradient; feed them to
    ``loss_separate_positive`` so that

        log( exp(s(u,i⁺)) + Σ_j n_uj · exp(s(u,j)) ) − s(u,i⁺)

    is the BIR term. Multinomial (the default): (B, R), one column per draw, a column drawn n times
    appears n times (−inf for a dead row). Systematic: (B, n) logits s + log n, −inf where nothing was
    drawn. ``method`` names the resampler in :data:`~streamtrain.sampling.resampling.RESAMPLERS`.
    """
    with torch.no_grad():
        corrected = logits.detach().float() - log_q.float().unsqueeze(0)  # (B, n) s − log p̂, scratch
        draws, ess = RESAMPLERS[method](corrected, hit, num_samples, generator, owned=True)
    if draws.index is not None and draws.alive is not None:
        negatives = logits.gather(1, draws.index)  # (B, R)
        return negatives.masked_fill_(~draws.alive, float("-inf")), draws, ess  # a dead row has no negatives
    with torch.no_grad():
        counts = draws.counts()  # (B, n)
        # log n, −inf where n = 0 (clamping first keeps log off its slow path for 0)
        offsets = counts.clamp_min(1.0).log_().masked_fill_(counts == 0, float("-inf"))
    return logits + offsets, draws, ess


@torch.no_grad()
def resampling_probs(corrected: torch.Tensor, hit: torch.Tensor) -> torch.Tensor:
    """(B, n) w(j|u) = softmax over the non-hit columns of ``corrected``; all-zero for dead rows."""
    return torch.softmax(corrected.masked_fill(hit, float("-inf")), dim=1).nan_to_num_(0.0)


@register
class BatchImportanceResampler(SeededSampler):
    """For each query, R draws with replacement from the batch's positives with

        w(j | u) = exp(s(u,j) − log p̂_j) / Σ_{k ∈ batch} exp(s(u,k) − log p̂_k)

    (accidental hits get weight 0), then, with n_uj how often j was drawn,

        L_BIR = log( exp(s(u,i⁺)) + Σ_j n_uj · exp(s(u,j)) ) − s(u,i⁺)

    i.e. ``logsumexp([s(u,i⁺), s(u, R_u)]) − s(u,i⁺)`` over the R drawn scores, gathered from the
    (B, B) score matrix (no dense count or log-count matrix is built). The resampled items approximate draws from the model's own softmax, so the gradient estimate is
    asymptotically unbiased. Weights are computed under ``no_grad``; the loss uses the scores of
    the drawn items from the (B, B) score matrix that carries the gradient.
    Reference: Chen et al., "Learning Recommenders for Implicit Feedback with Importance
    Resampling" / "Cache-Augmented Inbatch Importance Resampling", NeurIPS 2022.

    ``resampling="systematic"`` swaps the i.i.d. draws for systematic resampling (same expected
    counts, lower variance, several times cheaper on CPU; not what the paper does; see
    resampling.py). Stats: ``ess``, the mean over queries of (Σw)²/Σw² (1 = one item takes all the mass, B = flat).
    """

    name = "bir"

    def __init__(
        self, num_samples: int, *, resampling: str = "multinomial", seed: int = 0, device: torch.device | str = "cpu"
    ) -> None:
        if num_samples < 1 or resampling not in RESAMPLERS:
            raise ValueError(
                f"need num_samples >= 1 and resampling in {sorted(RESAMPLERS)}, got {num_samples}, {resampling!r}"
            )
        super().__init__(seed=seed, device=device)
        self.num_samples = num_samples
        self.resampling = resampling
        self._last_draws: Draws | None = None

    @classmethod
    def from_config(
        cls, config: Any, *, batch_size: int, seed: int, device: torch.device | str
    ) -> BatchImportanceResampler:
        """Build from a :class:`~streamtrain.config.SamplerConfig`; R = ``bir.num_samples`` or B."""
        resampling = config.bir.resampling
        return cls(config.bir.num_samples or batch_size, resampling=resampling, seed=seed, device=device)

    def loss(self, inp: SamplerInput, *, update_state: bool = True) -> SamplerOutput:
        """Resample, then the BIR loss; advances the generator only when ``update_state``."""
        log_q = inp.log_q(inp.pos_items).detach().float()  # (B,)
        logits = scores(inp.queries, inp.pos_emb, inp.temperature)  # (B, P) s(u, j), grad
        hit = hits(inp.query_items(), inp.pos_items)  # (B, P), own column included
        gen = self._generator(update_state) if inp.draw_generator is None else inp.draw_generator
        negatives, draws, ess = resampled_negatives(logits, log_q, hit, self.num_samples, gen, method=self.resampling)
        self._last_draws = draws
        positives = positive_logits(logits, inp.positive_cols)  # (B,) s(u_b, i⁺_b)
        loss = reduce_loss(loss_separate_positive(positives, negatives), inp.weights)
        return SamplerOutput(loss=loss, stats={"ess": ess.mean()})

    @property
    def last_counts(self) -> torch.Tensor | None:
        """(B, B) draws per batch position of the last call (built on demand; tests, debugging)."""
        return None if self._last_draws is None else self._last_draws.counts()

    @torch.no_grad()
    def proposal_log_probs(self, inp: SamplerInput) -> torch.Tensor:
        """w(·|u) on the realised batch, summed per item (support: the batch's items)."""
        corrected = scores(inp.queries, inp.pos_emb, inp.temperature, inp.log_q(inp.pos_items))
        probs = resampling_probs(corrected, hits(inp.query_items(), inp.pos_items))  # (B, P)
        return candidates_to_known(inp.pos_items, probs, inp.known_items)
