"""Conversions between nested state dicts and the two places they are persisted.

- Redis holds flat ``name -> ndarray`` maps (:func:`flatten_state` / :func:`unflatten_state`):
  nested keys are joined with ``.``, tensors become CPU numpy arrays, scalars 0-d arrays.
- The checkpoint file is read with ``torch.load(weights_only=True)``, which refuses numpy
  arrays, so numpy leaves travel as tensors (:func:`numpy_tree_to_torch` and back).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

__all__ = ["flatten_state", "numpy_tree_to_torch", "torch_tree_to_numpy", "unflatten_state"]


def _to_numpy(value: Any, name: str) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().numpy().copy()
    if isinstance(value, np.ndarray):
        return value.copy()
    if isinstance(value, (bool, int, float, np.generic)):
        return np.asarray(value)
    raise TypeError(f"state entry {name!r} has type {type(value).__name__}; expected a tensor, array or scalar")


def flatten_state(prefix: str, state: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """``{"a": {"b": t}}`` with prefix ``p`` → ``{"p.a.b": ndarray}``; called when saving to Redis."""
    out: dict[str, np.ndarray] = {}
    for key, value in state.items():
        if "." in key:
            raise ValueError(f"state key {key!r} under {prefix!r} must not contain '.'")
        name = f"{prefix}.{key}"
        if isinstance(value, Mapping):
            out.update(flatten_state(name, value))
        else:
            out[name] = _to_numpy(value, name)
    return out


def unflatten_state(prefix: str, flat: Mapping[str, np.ndarray]) -> dict[str, Any]:
    """Inverse of :func:`flatten_state` for the entries under ``prefix.`` (others are ignored)."""
    out: dict[str, Any] = {}
    head = prefix + "."
    for name, value in flat.items():
        if not name.startswith(head):
            continue
        *parents, leaf = name[len(head) :].split(".")
        node = out
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return out


def numpy_tree_to_torch(tree: Any) -> Any:
    """Numeric numpy arrays → tensors, recursively through dicts (lists of str stay lists);
    ``bytes`` → uint8 tensors (``weights_only`` loading refuses an empty ``bytes``), which come
    back as uint8 arrays."""
    if isinstance(tree, dict):
        return {k: numpy_tree_to_torch(v) for k, v in tree.items()}
    if isinstance(tree, bytes):
        return torch.frombuffer(bytearray(tree), dtype=torch.uint8) if tree else torch.zeros(0, dtype=torch.uint8)
    if isinstance(tree, np.ndarray) and tree.dtype != object:
        return torch.from_numpy(tree.copy())
    return tree


def torch_tree_to_numpy(tree: Any) -> Any:
    """Tensors → numpy arrays, recursively through dicts; the inverse of :func:`numpy_tree_to_torch`."""
    if isinstance(tree, dict):
        return {k: torch_tree_to_numpy(v) for k, v in tree.items()}
    if isinstance(tree, torch.Tensor):
        return tree.detach().cpu().numpy()
    return tree
