"""Phase 2 of docs/distributed.md: the split training step (W ranks share one step's compute).

Every rank holds the same global batch (ranks' micro-batches concatenated in rank order) and keeps
running what must stay identical on it (vocabulary admission, frequency estimator, popularity
counts, user histories, XIR's cache update). What scales with W is the tower math: rank r computes
queries and positive item embeddings for *its own* events only (rows [lo, hi) of the global batch).

* Positive item embeddings are all-gathered **with autograd** (:class:`_GatherRows`): in-batch,
  logQ, MNS, CBNS, BIR and XIR negatives come from all P = Σ b_r positives; the backward sums every
  rank's gradient for a rank's rows (an all-reduce, which gloo and NCCL both have; gloo has no
  reduce-scatter). Ranks may hold different counts (an idle rank holds 0): padded to the largest.
* Each rank's loss is its queries' share of the global mean (Σ_local w·l / Σ_global w), so the
  gradients summed over ranks are the W = 1 gradient of the global mean.
* Gradients: table gradients are sparse (rows touched). The union of the touched rows is gathered,
  each rank scatters its row totals into a dense (U, D) buffer, one all-reduce sums them, and the
  result becomes every rank's gradient: every replica applies the identical row-sparse update.
  Dense parameters (MLP heads) and the loss travel in one flat all-reduce.
* Random streams: per-query draws (BIR, XIR resampling) use a per-rank generator; XIR's cache
  update sums the per-column draw counts over ranks and keeps the sampler's shared generator.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from streamtrain.distributed.context import DistContext

__all__ = ["SplitExchange", "gather_rows"]


class _GatherRows(torch.autograd.Function):
    """(b_r, D) per rank -> (Σ b_r, D) in rank order on every rank; backward: the summed gradient of
    this rank's rows."""

    @staticmethod
    def forward(ctx, local: torch.Tensor, sizes: list[int], rank: int) -> torch.Tensor:  # type: ignore[override]
        width = max(sizes)
        padded = local.new_zeros((width, *local.shape[1:]))  # (max b, D)
        padded[: local.shape[0]] = local
        parts = [torch.empty_like(padded) for _ in sizes]
        dist.all_gather(parts, padded.contiguous())
        ctx.lo, ctx.hi = sum(sizes[:rank]), sum(sizes[: rank + 1])
        return torch.cat([p[:n] for p, n in zip(parts, sizes)])  # (P, D)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # type: ignore[override]
        total = grad.contiguous().clone()  # (P, D) this rank's loss w.r.t. every rank's rows
        dist.all_reduce(total)
        return total[ctx.lo : ctx.hi], None, None


def gather_rows(local: torch.Tensor, sizes: list[int], rank: int) -> torch.Tensor:
    """(P, D) every rank's ``local`` rows (b_r, D), concatenated in rank order, gradient-carrying."""
    return _GatherRows.apply(local, sizes, rank)


class SplitExchange:
    """The collectives of one split step for one rank (gloo on CPU, NCCL on CUDA)."""

    def __init__(self, ctx: DistContext, seed: int, device: torch.device) -> None:
        from streamtrain.sampling.rng import make_generator

        self.ctx = ctx
        self.rank, self.world_size = ctx.rank, ctx.world_size
        self.seed = seed
        # The rank's own stream for its queries' draws; everything shared keeps the run's seed.
        self.draw_generator = make_generator(self.draw_seed(0), device)
        self.bytes_last_step = 0  # payload this rank sent into collectives during the last step

    def draw_seed(self, step: int) -> int:
        """Seed of the per-rank draw stream after a resume at ``step`` (deterministic per rank)."""
        return (self.seed * 1_000_003 + 7919 * (self.rank + 1) + step) % (2**63)

    def reseed(self, step: int, device: torch.device) -> None:
        from streamtrain.sampling.rng import make_generator

        self.draw_generator = make_generator(self.draw_seed(step), device)

    def _count(self, t: torch.Tensor) -> None:
        self.bytes_last_step += t.numel() * t.element_size()

    def sum(self, t: torch.Tensor) -> torch.Tensor:
        """``t`` summed over ranks (a copy; e.g. XIR's per-column draw counts)."""
        out = t.contiguous().clone()
        self._count(out)
        dist.all_reduce(out)
        return out

    def gather(self, local: torch.Tensor, sizes: list[int]) -> torch.Tensor:
        """:func:`gather_rows` for this rank, counted (forward and backward move the same bytes)."""
        self.bytes_last_step += 2 * max(sizes) * local[:1].numel() * local.element_size()
        return gather_rows(local, sizes, self.rank)

    def reduce_dense(self, loss: torch.Tensor, params: list[torch.nn.Parameter]) -> torch.Tensor:
        """One flat all-reduce: the loss share (→ the global loss, returned), a has-gradient flag per
        parameter and the dense gradients (summed in place; a parameter no rank touched keeps None)."""
        flags = [torch.ones(1, device=loss.device) if p.grad is not None else torch.zeros(1, device=loss.device)
                 for p in params]
        grads = [(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1).float() for p in params]
        flat = torch.cat([loss.detach().float().reshape(1), *flags, *grads])
        self._count(flat)
        dist.all_reduce(flat)
        at = 1 + len(params)
        touched = flat[1:at].tolist()  # one read (a host sync on CUDA) instead of one per parameter
        for i, p in enumerate(params):
            n = p.numel()
            if touched[i] > 0:
                p.grad = flat[at : at + n].view_as(p).to(p.dtype).clone()
            at += n
        return flat[0]

    def reduce_sparse(self, params: list[torch.nn.Parameter]) -> None:
        """Every rank's sparse table gradient → the same summed gradient on every rank, over the
        union of the rows any rank touched (sorted), so every replica applies the same update."""
        for p in params:
            grad = p.grad
            if grad is not None and grad.is_sparse:
                grad = grad.coalesce()
                rows, vals = grad.indices()[0], grad.values()  # (n,), (n, D)
            else:
                rows = torch.zeros(0, dtype=torch.long, device=p.device)
                vals = torch.zeros(0, p.shape[1], dtype=p.dtype, device=p.device)
            count = torch.tensor([rows.numel()], device=p.device)
            counts = torch.empty(self.world_size, dtype=count.dtype, device=p.device)
            dist.all_gather_into_tensor(counts, count)
            sizes = counts.tolist()  # the padded gather below needs them on the host (one sync on CUDA)
            width = max(sizes)
            if width == 0:
                p.grad = None
                continue
            padded = torch.full((width,), -1, dtype=torch.long, device=p.device)
            padded[: rows.numel()] = rows
            parts = [torch.empty_like(padded) for _ in sizes]
            self._count(padded)
            dist.all_gather(parts, padded)
            union = torch.unique(torch.cat([q[:n] for q, n in zip(parts, sizes)]))  # (U,) sorted
            dense = torch.zeros(union.numel(), p.shape[1], dtype=torch.float32, device=p.device)  # (U, D)
            dense.index_copy_(0, torch.searchsorted(union, rows), vals.float())
            self._count(dense)
            dist.all_reduce(dense)
            p.grad = torch.sparse_coo_tensor(union.unsqueeze(0), dense.to(p.dtype), p.shape, check_invariants=False)
