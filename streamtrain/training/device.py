"""Where training runs and in which precision: device resolution and the autocast policy."""

from __future__ import annotations

import contextlib
from contextlib import AbstractContextManager

import torch

from streamtrain.errors import StreamtrainError

__all__ = ["DeviceError", "autocast_context", "resolve_device", "uses_bf16"]


class DeviceError(StreamtrainError):
    """The configured device is not available (e.g. ``run.device = "cuda"`` on a CPU-only host)."""


def resolve_device(name: str | torch.device | None = "auto") -> torch.device:
    """``"auto"``/None → CUDA when present, else CPU; ``"cuda"`` without CUDA raises DeviceError.
    Called once when the trainer is built."""
    if isinstance(name, torch.device):
        device = name
    elif name in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise DeviceError(f"device {str(device)!r} requested but CUDA is not available; set run.device=auto or cpu")
    return device


def uses_bf16(device: torch.device, mixed_precision: str) -> bool:
    """bf16 autocast: on CUDA unless ``"off"``; on CPU only when asked for explicitly (``"bf16"``),
    because CPU bf16 matmuls are slower than fp32 on most hosts."""
    if mixed_precision == "off":
        return False
    if device.type == "cuda":
        return mixed_precision in ("auto", "bf16") and torch.cuda.is_bf16_supported()
    return mixed_precision == "bf16"


def autocast_context(device: torch.device, mixed_precision: str) -> AbstractContextManager[object]:
    """The autocast context for the forward/loss of one training step."""
    if uses_bf16(device, mixed_precision):
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()
