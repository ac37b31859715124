"""The finite-loss guard, decided on the device: a non-finite loss never reaches the parameters.

The host used to read the loss and skip the optimizer steps when it was NaN/inf: one device→host
sync per step. Now the flag ``isfinite(loss)`` stays on the device and masks the updates
themselves (on CUDA; on CPU, where reading a flag costs nothing and nothing is in flight, a false
flag just skips the step, with the same result): the row-sparse optimizer selects old or new rows with it
(:meth:`~streamtrain.model.sparse_optim.RowSparseOptimizer.step`), and :func:`guarded_step` runs a
dense ``torch.optim`` optimizer and puts back, with ``torch.where``, the parameters and the state
it had before when the flag is false. The host learns the outcome one step later, with the rest
of the step's statistics (:mod:`streamtrain.training.readback`).
"""

from __future__ import annotations

import torch

__all__ = ["finite_flag", "guarded_step"]


def finite_flag(loss: torch.Tensor) -> torch.Tensor:
    """() bool on the loss's device: True when the loss is finite (the update may be applied)."""
    return torch.isfinite(loss.detach().float()).reshape(())


@torch.no_grad()
def guarded_step(optimizer: torch.optim.Optimizer, apply: torch.Tensor, *, masked: bool | None = None) -> None:
    """``optimizer.step()`` whose effect is kept only where ``apply`` (() bool, device) is True.

    ``masked`` (default: True on CUDA) restores with ``torch.where`` as below; on CPU, where reading
    the flag costs nothing, a False flag just skips the step (the same parameters, no copies).

    Parameters and every state tensor that lives on the parameter's device are restored bit-exactly
    when ``apply`` is False; state created by this step (Adam's lazy state) goes back to zeros, its
    value before any step. A state scalar kept on the host while the parameter is on CUDA (Adagrad's
    step counter, which only drives ``lr_decay``, 0 here) cannot see the flag without a sync and
    counts the skipped step. Dense parameters are the MLP heads: small, so the copies are cheap.
    """
    if not (masked if masked is not None else apply.device.type != "cpu"):
        if bool(apply):
            optimizer.step()
        return
    saved = []
    for group in optimizer.param_groups:
        for p in group["params"]:
            if p.grad is None:
                continue
            state = optimizer.state.get(p, {})
            before = {k: v.clone() for k, v in state.items() if torch.is_tensor(v) and v.device == p.device}
            saved.append((p, p.detach().clone(), before))
    optimizer.step()
    for p, old, before in saved:
        p.copy_(torch.where(apply, p, old))
        for key, value in optimizer.state[p].items():
            if not torch.is_tensor(value) or value.device != p.device:
                continue
            previous = before.get(key)
            value.copy_(torch.where(apply, value, previous if previous is not None else torch.zeros_like(value)))
