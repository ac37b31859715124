"""Proof that a code path never makes the host wait for the GPU: CUDA's sync debug mode as a context.

Inside :func:`no_host_sync`, any synchronising CUDA call (a blocking copy either way, ``.item()``,
``.tolist()`` of a device tensor, ``nonzero``, boolean-mask indexing, ``torch.unique``, a
tensor-valued Python ``if``) raises instead of waiting. Waiting on an *event* (how the trainer
reads the previous step's statistics, :mod:`streamtrain.training.readback`) is not one of them:
that wait is deliberate and one step behind. Used by the CUDA tests and ``bench/gpu-check``.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch

__all__ = ["no_host_sync"]


@contextmanager
def no_host_sync(device: torch.device | str) -> Iterator[bool]:
    """Make synchronising CUDA calls raise while inside; yields whether the check is active
    (False on CPU, where there is nothing to check and nothing changes)."""
    if torch.device(device).type != "cuda":
        yield False
        return
    previous = torch.cuda.get_sync_debug_mode()
    torch.cuda.set_sync_debug_mode("error")
    try:
        yield True
    finally:
        torch.cuda.set_sync_debug_mode(previous)
