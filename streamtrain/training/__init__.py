"""Training: the Trainer that turns micro-batches into steps, and device/precision policy."""

from streamtrain.training.device import DeviceError, autocast_context, resolve_device
from streamtrain.training.trainer import StepStats, Trainer, TrainingError

__all__ = ["DeviceError", "StepStats", "Trainer", "TrainingError", "autocast_context", "resolve_device"]
