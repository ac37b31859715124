"""A Trainer restarted from another's checkpoint, the way the worker does it: the file state through bytes
(``torch.load(weights_only=True)``, as from a checkpoint file; an in-process state dict would share the
dense optimizer's tensors) and a copy of the shared state (as read back from Redis)."""
from __future__ import annotations

import io

import torch

from streamtrain.training.trainer import Trainer


def restart_into(original: Trainer, resumed: Trainer) -> Trainer:
    """Load ``original``'s checkpoint into ``resumed`` (built from the same config); returns ``resumed``."""
    buffer = io.BytesIO()
    torch.save(original.file_state(), buffer)
    buffer.seek(0)
    resumed.load_file_state(torch.load(buffer, weights_only=True))
    resumed.load_shared_state({k: v.copy() for k, v in original.shared_state().items()})
    return resumed
