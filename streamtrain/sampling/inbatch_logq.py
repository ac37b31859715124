"""``inbatch_logq``: in-batch negatives with the logQ correction (Yi et al., RecSys 2019)."""

from __future__ import annotations

from streamtrain.sampling.base import register
from streamtrain.sampling.inbatch import InBatchSampler

__all__ = ["InBatchLogQSampler"]


@register
class InBatchLogQSampler(InBatchSampler):
    """In-batch negatives with every score corrected by the item's streaming log-frequency::

        s'(u, j) = s(u, j) − log p̂_j          (positive included)
        L_b = log Σ_{k ∈ batch} exp(s'(u_b, i_k)) − s'(u_b, i_b),   duplicates of i_b masked

    ``p̂`` comes from ``inp.log_q`` (the streaming estimator of Yi et al. 2019, Algorithms 2-3).
    Dividing by the sampling probability turns the in-batch sum into an importance-sampling
    estimate of the full softmax normaliser. Reference: Yi et al., "Sampling-Bias-Corrected
    Neural Modeling for Large Corpus Item Recommendations", RecSys 2019.
    """

    name = "inbatch_logq"
    uses_log_q = True
