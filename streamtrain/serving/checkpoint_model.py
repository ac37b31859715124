"""A worker checkpoint file, loaded for reading: the two-tower model and its id vocabularies.

Used by ``streamtrain eval`` and ``streamtrain export``. The file is the Trainer's ``file_state``
(see :mod:`streamtrain.worker.checkpoint`, step 2): model weights, optimizer state, vocabularies,
step. Only the model and the vocabularies are read; nothing is trained or written.

The architecture comes from the tensors themselves (table capacities and ``D`` from the embedding
tables, MLP widths from the head's Linear layers). Two settings cannot be read from tensors:
``model.normalize`` (changes the ranking) and ``model.temperature`` (scales scores only). The file
stores both (``model_settings``) and they win; files written before that take them from the
configuration passed in (the same ``-c`` / ``--set`` the worker ran with).

Which file: an explicit ``.pt`` file, or the newest ``ckpt-<id>.pt`` in a run directory
(``<checkpoint.dir>/<run>``; given ``<checkpoint.dir>`` the run is ``run.name``). After a clean stop
the newest file is the committed one; after a crash a newer, uncommitted file can exist (the
worker's resume ignores it, Redis names the committed id) — pass the file explicitly then.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from streamtrain.config import Config
from streamtrain.errors import StreamtrainError
from streamtrain.model.two_tower import TwoTowerModel
from streamtrain.model.vocabulary import IdVocabulary, VocabularyStateError
from streamtrain.training.state import torch_tree_to_numpy
from streamtrain.worker.checkpoint_files import CheckpointFiles

__all__ = ["CheckpointLoadError", "LoadedCheckpoint", "hidden_dims_of", "load_checkpoint", "resolve_checkpoint"]

log = logging.getLogger(__name__)

_ID_IN_NAME = re.compile(r"^ckpt-(\d+)(?:-[0-9a-f]+)?\.pt$")  # ckpt-<id>-<writer>.pt (or the old ckpt-<id>.pt)
_HEAD_WEIGHT = re.compile(r"^user\.head\.(\d+)\.weight$")


class CheckpointLoadError(StreamtrainError):
    """No checkpoint at the given place, or the file is not a streamtrain checkpoint; the message says which."""


@dataclass
class LoadedCheckpoint:
    """A checkpoint ready for scoring: the model on the CPU in eval mode, and both vocabularies."""

    path: Path
    checkpoint_id: int | None  # from the file name; None for a file not named ckpt-<id>.pt
    run: str  # the run directory's name
    step: int
    model: TwoTowerModel
    user_vocab: IdVocabulary
    item_vocab: IdVocabulary

    @property
    def vocabs(self) -> dict[str, IdVocabulary]:
        """``{"user": ..., "item": ...}`` as :func:`streamtrain.evaluation.offline_evaluate` takes them."""
        return {"user": self.user_vocab, "item": self.item_vocab}

    def describe(self) -> dict[str, Any]:
        """Where the model came from, for reports and the export manifest."""
        return {"path": str(self.path), "run": self.run, "checkpoint_id": self.checkpoint_id, "step": self.step}


def _newest(directory: Path) -> Path | None:
    newest = CheckpointFiles(directory.parent, directory.name, keep=1).newest()
    return newest.path if newest is not None else None


def resolve_checkpoint(path: Path | None, config: Config) -> Path:
    """The checkpoint file meant by ``path`` (a file, a run directory, or ``checkpoint.dir``).

    ``None`` means ``<checkpoint.dir>/<run.name>`` of the configuration. Raises CheckpointLoadError
    naming the places searched.
    """
    run_dir = Path(config.checkpoint.dir) / config.run.name
    target = Path(path) if path is not None else run_dir
    if target.is_file():
        return target
    searched = [target]
    if target.is_dir():
        newest = _newest(target)
        if newest is not None:
            return newest
        nested = target / config.run.name
        searched.append(nested)
        if nested.is_dir() and (newest := _newest(nested)) is not None:
            return newest
    raise CheckpointLoadError(
        f"no checkpoint file (ckpt-<id>.pt) in {', '.join(map(str, searched))}; pass --checkpoint with a run "
        "directory (<checkpoint.dir>/<run>) or a .pt file, or set run.name to the run that trained"
    )


def hidden_dims_of(model_state: dict[str, torch.Tensor]) -> list[int]:
    """MLP widths from the user head's Linear weights: (h0, D), (h1, h0), ..., (D, h_last)."""
    layers = sorted((int(m.group(1)), w) for k, w in model_state.items() if (m := _HEAD_WEIGHT.match(k)))
    return [int(w.shape[0]) for _, w in layers[:-1]]


def load_checkpoint(path: Path, config: Config) -> LoadedCheckpoint:
    """Read one checkpoint file on the CPU; called once per command.

    Raises:
        CheckpointLoadError: unreadable file, not a Trainer checkpoint, or inconsistent vocabularies.
    """
    path = Path(path)
    try:
        # weights_only: the worker writes tensors, lists and numbers only, so no code can run on load.
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise CheckpointLoadError(f"{path} does not exist") from None
    except Exception as exc:  # a truncated file, or not a torch file at all
        raise CheckpointLoadError(f"cannot read {path} as a checkpoint: {exc}") from exc
    if not isinstance(state, dict) or "model" not in state or "vocab" not in state:
        raise CheckpointLoadError(f"{path} is not a streamtrain checkpoint (no 'model' and 'vocab' entries)")
    weights: dict[str, torch.Tensor] = state["model"]
    try:
        user_table, item_table = weights["user.embedding.weight"], weights["item.embedding.weight"]
    except KeyError as exc:
        raise CheckpointLoadError(f"{path}: the model has no {exc.args[0]} tensor") from None
    mc = config.model
    saved_settings = state.get("model_settings") or {}
    normalize = bool(saved_settings.get("normalize", mc.normalize))
    temperature = float(saved_settings.get("temperature", mc.temperature))
    if (normalize, temperature) != (mc.normalize, mc.temperature) and saved_settings:
        log.info("%s: using the checkpoint's normalize=%s, temperature=%g (the config says %s, %g)",
                 path, normalize, temperature, mc.normalize, mc.temperature)
    model = TwoTowerModel(
        user_capacity=int(user_table.shape[0]),
        item_capacity=int(item_table.shape[0]),
        dim=int(user_table.shape[1]),
        hidden_dims=hidden_dims_of(weights),
        normalize=normalize,
        temperature=temperature,
        init_std=mc.init_std,
    )
    try:
        model.load_state_dict(weights)
        vocabs = {}
        for tower in ("user", "item"):
            saved = torch_tree_to_numpy(state["vocab"][tower])
            vocab = IdVocabulary(int(saved["capacity"]))
            vocab.load_state_dict(saved)
            vocabs[tower] = vocab
    except (RuntimeError, KeyError, VocabularyStateError) as exc:
        raise CheckpointLoadError(f"{path}: inconsistent checkpoint: {exc}") from exc
    model.eval()
    match = _ID_IN_NAME.match(path.name)
    return LoadedCheckpoint(
        path=path,
        checkpoint_id=int(match.group(1)) if match else None,
        run=path.parent.name,
        step=int(state.get("step", 0)),
        model=model,
        user_vocab=vocabs["user"],
        item_vocab=vocabs["item"],
    )
