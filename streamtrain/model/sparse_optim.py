"""Row-wise optimizers for embedding tables: each step touches only the rows that got a gradient.

Why not ``torch.optim.SparseAdam``: it keeps one step counter per *table*, so a row that appears
for the first time at global step 100 000 gets Adam's bias correction of step 100 000 with zeroed
moments: its first update is ~3x larger than a plain Adam step (lazy-Adam effect). Streaming ids
arrive all the time and rows are reused after eviction, so every row here carries its own step
count (bias correction per row) and :meth:`RowSparseOptimizer.reset_rows` zeroes a reused row's
state exactly. The step costs O(touched rows · D): sort the touched indices and sum duplicate
rows, ``index_select`` the state rows, update, ``index_copy_`` back — nothing scans the table, so
the cost does not grow with capacity (bench/bench_train_scaling.py measures it). Duplicates are
summed by sorting, not ``coalesce()``, whose data-dependent output size would make the host wait
for the device on CUDA. Speed is on par with ``torch.optim.SparseAdam`` (measured on a shared
2-core CPU, 3072 touched rows of 64: both 3-8 ms per step, at 100k and 1M rows alike).

Used with ``nn.Embedding(sparse=True)``, whose backward yields a sparse COO gradient.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Literal

import torch

__all__ = ["ALGORITHMS", "RowSparseOptimizer"]

Algorithm = Literal["adam", "adagrad", "rowwise_adagrad", "sgd"]
ALGORITHMS: tuple[str, ...] = ("adam", "adagrad", "rowwise_adagrad", "sgd")


def _row_totals(grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Touched rows and each row's summed gradient from an uncoalesced sparse COO gradient.

    Returns (rows (nnz,), g (nnz, D)): rows may repeat, and every copy of a row carries that
    row's *total* gradient, so the update computed per entry is identical across copies and
    ``index_copy_`` writes the same value whichever copy wins. All sizes are nnz, known without
    reading anything back: unlike ``coalesce()`` (whose output size is data-dependent) this never
    makes the host wait for the device.
    """
    idx = grad._indices()[0]  # (nnz,)
    vals = grad._values()  # (nnz, D)
    order = torch.argsort(idx)  # (nnz,)
    rows = idx[order]  # (nnz,) sorted
    new = torch.ones_like(rows, dtype=torch.bool)
    new[1:] = rows[1:] != rows[:-1]
    segment = torch.cumsum(new, 0) - 1  # (nnz,) run id of each entry
    totals = torch.zeros_like(vals).index_add_(0, segment, vals[order])  # (nnz, D), first runs used
    return rows, totals.index_select(0, segment)  # (nnz,), (nnz, D)


class RowSparseOptimizer:
    """Adam / Adagrad / row-wise Adagrad / SGD over the touched rows of 2-D embedding parameters with
    sparse grads.

    ``rowwise_adagrad`` keeps *one* accumulator per row, the running sum of the row gradient's mean
    square, and steps ``w -= lr * g / sqrt(sum)`` (the embedding optimiser of FBGEMM/TorchRec,
    "exact row-wise Adagrad"): 4 bytes of state per row against Adam's 8·D + 4, and a row's step
    shrinks as 1/sqrt(its updates), so a young row moves fast and a row that has seen many events
    settles; Adam's steps stay ~lr whatever a row has seen (BENCHMARKS.md "Issue 16, third round").
    """

    def __init__(
        self,
        params: Iterable[torch.nn.Parameter],
        *,
        algorithm: Algorithm = "adam",
        lr: float = 0.01,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
    ) -> None:
        if algorithm not in ALGORITHMS:
            raise ValueError(f"unknown row-sparse algorithm {algorithm!r}")
        self.params = list(params)
        self.algorithm = algorithm
        self.lr = lr
        self.betas = betas
        self.eps = eps
        self.state: list[dict[str, torch.Tensor]] = [self._fresh_state(p) for p in self.params]

    def _fresh_state(self, p: torch.Tensor) -> dict[str, torch.Tensor]:
        if p.dim() != 2:
            raise ValueError(f"row-sparse optimizer expects 2-D tables, got shape {tuple(p.shape)}")
        rows = p.shape[0]
        if self.algorithm == "adam":
            return {
                "exp_avg": torch.zeros_like(p, memory_format=torch.contiguous_format),  # (R, D)
                "exp_avg_sq": torch.zeros_like(p, memory_format=torch.contiguous_format),  # (R, D)
                "step": torch.zeros(rows, dtype=torch.float32, device=p.device),  # (R,) per-row steps
            }
        if self.algorithm == "adagrad":
            return {"sum_sq": torch.zeros_like(p, memory_format=torch.contiguous_format)}  # (R, D)
        if self.algorithm == "rowwise_adagrad":
            return {"row_sum_sq": torch.zeros(rows, dtype=torch.float32, device=p.device)}  # (R,)
        return {}

    def zero_grad(self) -> None:
        """Drop gradients (set to None); called before each backward."""
        for p in self.params:
            p.grad = None

    @torch.no_grad()
    def step(self, apply: torch.Tensor | None = None, *, masked: bool | None = None) -> None:
        """Apply one update to the rows that received a gradient; called once per training step.

        ``apply`` (() bool on the table's device, optional): when it is False the touched rows and
        their state stay unchanged (bit-exact). On CUDA the update is *masked* (``masked`` defaults
        to True there): written back through one ``where`` per state tensor, so the host never reads
        the flag. On CPU reading it is free (nothing runs asynchronously), so by default a False flag
        simply skips the step, with the same result and no masking cost; ``masked=True`` forces the
        device path (tests).
        """
        if apply is not None and not (masked if masked is not None else apply.device.type != "cpu"):
            if not bool(apply):
                return
            apply = None
        for p, state in zip(self.params, self.state):
            if p.grad is None:
                continue
            grad = p.grad
            if grad.is_sparse:
                rows, g = _row_totals(grad)  # (n,), (n, D)
            else:  # dense grad (not produced by our tables): scans the table, only for completeness
                rows = grad.abs().sum(1).nonzero().squeeze(1)  # (n,)
                g = grad.index_select(0, rows)  # (n, D)
            if rows.numel() == 0:
                continue
            g = g.to(p.dtype)
            w = p.index_select(0, rows)  # (n, D)
            new: dict[str, torch.Tensor] = {}  # state name -> (n, ...) updated rows
            if self.algorithm == "adam":
                b1, b2 = self.betas
                m_old = state["exp_avg"].index_select(0, rows)  # (n, D)
                v_old = state["exp_avg_sq"].index_select(0, rows)  # (n, D)
                t_old = state["step"].index_select(0, rows)  # (n,)
                m = (m_old if apply is None else m_old.clone()).mul_(b1).add_(g, alpha=1 - b1)  # (n, D)
                v = (v_old if apply is None else v_old.clone()).mul_(b2).addcmul_(g, g, value=1 - b2)  # (n, D)
                t = t_old + 1  # (n,)
                bc1 = 1 - torch.pow(b1, t)  # (n,)
                bc2 = 1 - torch.pow(b2, t)  # (n,)
                # Same operation order as torch.optim.Adam, so both agree to float rounding.
                denom = (v.sqrt() / bc2.sqrt().unsqueeze(1)).add_(self.eps)  # (n, D)
                w_new = w.addcdiv(m, denom * (bc1 / self.lr).unsqueeze(1), value=-1.0)
                new = {"exp_avg": m, "exp_avg_sq": v, "step": t}
                old = {"exp_avg": m_old, "exp_avg_sq": v_old, "step": t_old}
            elif self.algorithm == "adagrad":
                s_old = state["sum_sq"].index_select(0, rows)  # (n, D)
                s = s_old.addcmul(g, g)  # (n, D)
                w_new = w.addcdiv(g, s.sqrt().add_(1e-10), value=-self.lr)
                new, old = {"sum_sq": s}, {"sum_sq": s_old}
            elif self.algorithm == "rowwise_adagrad":
                r_old = state["row_sum_sq"].index_select(0, rows)  # (n,)
                r = r_old + g.float().square().mean(1)  # (n,)
                w_new = w.addcdiv(g, (r.sqrt() + 1e-10).unsqueeze(1).to(w.dtype), value=-self.lr)
                new, old = {"row_sum_sq": r}, {"row_sum_sq": r_old}
            else:
                w_new = w.add(g, alpha=-self.lr)
                old = {}
            if apply is not None:
                w_new = torch.where(apply, w_new, w)
                new = {k: torch.where(apply, v, old[k]) for k, v in new.items()}
            for key, value in new.items():
                state[key].index_copy_(0, rows, value)
            p.index_copy_(0, rows, w_new)

    @torch.no_grad()
    def reset_rows(self, param: torch.nn.Parameter, rows: torch.Tensor) -> None:
        """Zero the optimizer state of ``rows`` (n,) of ``param``; called when a row gets a new id."""
        for p, state in zip(self.params, self.state):
            if p is param:
                for value in state.values():
                    value.index_fill_(0, rows, 0)
                return
        raise KeyError("parameter is not managed by this optimizer")

    def state_dict(self) -> dict[str, Any]:
        """Tensors by parameter position; saved in the checkpoint file."""
        return {
            "algorithm": self.algorithm,
            "lr": self.lr,
            # References, not copies (like nn.Module.state_dict): a 10M-row table is not duplicated.
            "state": [{k: v.detach() for k, v in s.items()} for s in self.state],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`; called once at resume."""
        if state["algorithm"] != self.algorithm or len(state["state"]) != len(self.params):
            raise ValueError(
                f"optimizer state is for {state['algorithm']!r} over {len(state['state'])} tables, "
                f"this optimizer is {self.algorithm!r} over {len(self.params)}"
            )
        for own, saved in zip(self.state, state["state"]):
            if set(own) != set(saved):
                raise ValueError(f"optimizer state keys {sorted(saved)} != {sorted(own)}")
            for key, value in saved.items():
                own[key].copy_(value)
