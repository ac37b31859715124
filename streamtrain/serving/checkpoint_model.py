"""A worker checkpoint file, loaded for reading: the two-tower model and its id vocabularies.

Used by ``streamtrain eval`` and ``streamtrain export``. The file is the Trainer's ``file_state``
(see :mod:`streamtrain.state.checkpoint`, step 2): model weights, optimizer state, vocabularies,
step. Only the model and the vocabularies are read; nothing is trained or written.

The architecture comes from the tensors themselves (table capacities and ``D`` from the embedding
tables, MLP widths from the head's Linear layers, H from the history buffer). Settings that cannot
be read from tensors: ``model.normalize`` (changes the ranking), ``model.temperature`` (scales
scores only), ``model.user_features`` and ``model.history_decay`` (how queries are built). The file
stores them (``model_settings``) and they win; files written before normalize/temperature were
stored take those from the configuration passed in, and files without a history are id-only.

Which file (:func:`choose_checkpoint`): an explicit ``.pt`` file; else, in the run directory
(``<checkpoint.dir>/<run>``; given ``<checkpoint.dir>`` the run is ``run.name``), the checkpoint
Redis names as committed for that run (:mod:`streamtrain.state.committed`), never merely the newest
file (after a crash a newer, uncommitted file can exist); or an older one picked by id. Only when
Redis has no state for the run, or cannot be reached, is the newest file used, with a warning.
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
from streamtrain.vocab.vocabulary import IdVocabulary, VocabularyStateError
from streamtrain.training.state_tree import torch_tree_to_numpy
from streamtrain.state.committed import (
    CommittedCheckpoint,
    CommittedLookup,
    checkpoint_file_for_id,
    checkpoint_ids,
    redis_committed_lookup,
)
from streamtrain.errors import StateStoreError

__all__ = [
    "CheckpointChoice", "CheckpointLoadError", "LoadedCheckpoint", "checkpoint_from_state", "choose_checkpoint",
    "hidden_dims_of", "load_checkpoint", "resolve_checkpoint",
]

log = logging.getLogger(__name__)

_ID_IN_NAME = re.compile(r"^ckpt-(\d+)(?:[-.][A-Za-z0-9_.-]+)?\.pt$")
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
    committed: CommittedCheckpoint | None = None  # set when this is the checkpoint Redis names as committed

    @property
    def vocabs(self) -> dict[str, IdVocabulary]:
        """``{"user": ..., "item": ...}`` as :func:`streamtrain.evaluation.progressive.offline_evaluate` takes them."""
        return {"user": self.user_vocab, "item": self.item_vocab}

    def describe(self) -> dict[str, Any]:
        """Where the model came from, for reports and the export manifest: file, run, checkpoint id, step,
        and, when it is the committed one, the event count and next offsets Redis stored with it."""
        committed = self.committed is not None and self.committed.checkpoint_id == self.checkpoint_id
        return {
            "path": str(self.path), "run": self.run, "checkpoint_id": self.checkpoint_id, "step": self.step,
            "committed": committed,
            "events": self.committed.events if committed else None,
            "offsets": dict(self.committed.offsets) if committed else None,
        }


@dataclass(frozen=True)
class CheckpointChoice:
    """The file chosen and why; ``committed`` when Redis named it (it carries offsets and events)."""

    path: Path
    reason: str
    committed: CommittedCheckpoint | None = None


def _run_dir(path: Path | None, config: Config) -> tuple[Path, list[Path]]:
    """The run directory meant by ``path`` (None: ``<checkpoint.dir>/<run.name>``) and the places tried."""
    target = Path(path) if path is not None else Path(config.checkpoint.dir) / config.run.name
    nested = target / config.run.name
    if checkpoint_ids(target) or not checkpoint_ids(nested):
        return target, [target, nested]
    return nested, [target, nested]


def choose_checkpoint(
    path: Path | None,
    config: Config,
    *,
    checkpoint_id: int | None = None,
    committed: CommittedLookup | None = None,
) -> CheckpointChoice:
    """Pick the checkpoint file ``eval``/``export``/the demo read (rules in the module docstring).

    ``checkpoint_id`` picks that checkpoint of the run instead of the committed one. ``committed``
    looks up a run's committed checkpoint (default: the configured Redis). Raises
    CheckpointLoadError naming the places searched and the ids found.
    """
    if path is not None and Path(path).is_file():
        if checkpoint_id is not None:
            raise CheckpointLoadError(f"--checkpoint-id picks a file in a run directory; {path} is a file already")
        return CheckpointChoice(Path(path), "file given")
    run_dir, searched = _run_dir(path, config)
    ids = checkpoint_ids(run_dir)
    if not ids:
        raise CheckpointLoadError(
            f"no checkpoint file (ckpt-<id>.pt) in {', '.join(map(str, searched))}; pass --checkpoint with a run "
            "directory (<checkpoint.dir>/<run>) or a .pt file, or set run.name to the run that trained"
        )
    lookup = committed or redis_committed_lookup(config)
    try:
        record = lookup(run_dir.name)
        unknown = None if record is not None else f"Redis has no committed state for run {run_dir.name!r}"
    except StateStoreError as exc:
        record, unknown = None, f"cannot ask Redis which checkpoint is committed ({exc})"
    if checkpoint_id is not None:
        found = checkpoint_file_for_id(run_dir, checkpoint_id)
        if found is None:
            raise CheckpointLoadError(f"no checkpoint {checkpoint_id} in {run_dir}; it holds ids {ids}")
        return CheckpointChoice(found, f"checkpoint {checkpoint_id} by id", record)
    if record is not None:
        chosen = run_dir / record.file_name
        if not chosen.is_file():
            raise CheckpointLoadError(
                f"Redis names checkpoint {record.checkpoint_id} ({record.file_name}) as committed for run "
                f"{run_dir.name!r}, but {chosen} is missing (files here: ids {ids}); pick one with --checkpoint-id"
            )
        return CheckpointChoice(chosen, f"checkpoint {record.checkpoint_id}, committed in Redis", record)
    newest = checkpoint_file_for_id(run_dir, ids[-1])
    assert newest is not None
    log.warning("%s: using the newest file %s, which may be an uncommitted orphan", unknown, newest.name)
    return CheckpointChoice(newest, f"newest file ({unknown})")


def resolve_checkpoint(
    path: Path | None,
    config: Config,
    *,
    checkpoint_id: int | None = None,
    committed: CommittedLookup | None = None,
) -> Path:
    """The file :func:`choose_checkpoint` picks."""
    return choose_checkpoint(path, config, checkpoint_id=checkpoint_id, committed=committed).path


def hidden_dims_of(model_state: dict[str, torch.Tensor]) -> list[int]:
    """MLP widths from the user head's Linear weights: (h0, D), (h1, h0), ..., (D, h_last)."""
    layers = sorted((int(m.group(1)), w) for k, w in model_state.items() if (m := _HEAD_WEIGHT.match(k)))
    return [int(w.shape[0]) for _, w in layers[:-1]]


def load_checkpoint(path: Path | CheckpointChoice, config: Config) -> LoadedCheckpoint:
    """Read one checkpoint file on the CPU; called once per command.

    Raises:
        CheckpointLoadError: unreadable file, not a Trainer checkpoint, or inconsistent vocabularies.
    """
    choice = path if isinstance(path, CheckpointChoice) else CheckpointChoice(Path(path), "file given")
    path = choice.path
    try:
        # weights_only: the worker writes tensors, lists and numbers only, so no code can run on load.
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise CheckpointLoadError(f"{path} does not exist") from None
    except Exception as exc:  # a truncated file, or not a torch file at all
        raise CheckpointLoadError(f"cannot read {path} as a checkpoint: {exc}") from exc
    match = _ID_IN_NAME.match(path.name)
    checkpoint_id = int(match.group(1)) if match else None
    return checkpoint_from_state(state, config, path=path, run=path.parent.name, checkpoint_id=checkpoint_id,
                                 committed=choice.committed)


def checkpoint_from_state(
    state: Any,
    config: Config,
    *,
    path: Path,
    run: str,
    checkpoint_id: int | None,
    committed: CommittedCheckpoint | None = None,
) -> LoadedCheckpoint:
    """A model + vocabularies from a Trainer ``file_state`` (a loaded file, or a worker snapshot's copy).

    Raises:
        CheckpointLoadError: not a Trainer checkpoint, or inconsistent vocabularies.
    """
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
    # Checkpoints from before the history tower have no history buffer: they are id-only models.
    history = weights.setdefault("history.items", torch.full((int(user_table.shape[0]), 1), -1, dtype=torch.int32))
    # ... and those from before issue 16 have no context table: the 1-row placeholder of an "item" encoder.
    weights.setdefault("encoder.context.weight", torch.zeros(1, int(user_table.shape[1])))
    model = TwoTowerModel(
        user_capacity=int(user_table.shape[0]),
        item_capacity=int(item_table.shape[0]),
        dim=int(user_table.shape[1]),
        hidden_dims=hidden_dims_of(weights),
        normalize=normalize,
        temperature=temperature,
        init_std=mc.init_std,
        user_features=saved_settings.get("user_features", "id"),
        history_length=int(history.shape[1]),
        history_decay=float(saved_settings.get("history_decay", 1.0)),
        # Checkpoints from before issue 16 pooled the item tower's outputs with a decayed mean.
        history_input=saved_settings.get("history_input", "item"),
        history_pooling=saved_settings.get("history_pooling", "mean"),
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
    return LoadedCheckpoint(
        path=path,
        checkpoint_id=checkpoint_id,
        run=run,
        step=int(state.get("step", 0)),
        model=model,
        user_vocab=vocabs["user"],
        item_vocab=vocabs["item"],
        committed=committed,
    )
