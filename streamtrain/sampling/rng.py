"""Seeded ``torch.Generator`` helpers shared by the samplers: build, fork, save and restore.

Every sampler draws through its own generator so that the same seed gives the same draws and the
generator state can be persisted (as a ``uint8`` numpy array) with the rest of the sampler state.
"""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["fork_generator", "generator_state", "make_generator", "set_generator_state"]


def make_generator(seed: int, device: torch.device | str) -> torch.Generator:
    """A generator on ``device`` seeded with ``seed``; called once when a sampler is built."""
    gen = torch.Generator(device=torch.device(device))
    gen.manual_seed(int(seed) & 0xFFFF_FFFF_FFFF_FFFF)
    return gen


def fork_generator(gen: torch.Generator) -> torch.Generator:
    """A copy of ``gen`` in the same state, so a side computation (the bias probe, a call with
    ``update_state=False``) draws like the next step would without advancing ``gen``."""
    copy = torch.Generator(device=gen.device)
    copy.set_state(gen.get_state())
    return copy


def generator_state(gen: torch.Generator) -> np.ndarray:
    """The generator state as a ``uint8`` array (a copy), for ``state_dict``."""
    return gen.get_state().numpy().copy()


def set_generator_state(gen: torch.Generator, state: np.ndarray | torch.Tensor) -> None:
    """Restore what :func:`generator_state` returned; raises ``ValueError`` on a malformed state."""
    tensor = torch.as_tensor(np.asarray(state, dtype=np.uint8)).clone()
    try:
        gen.set_state(tensor)
    except RuntimeError as exc:
        raise ValueError(f"saved generator state does not fit a {gen.device} generator: {exc}") from exc
