"""What makes a checkpoint file a self-contained restore point, and how it is packed into the file.

The file holds the engine's ``file_state()`` (model, optimizer, vocabulary; opaque here) at the top
level, as before, so readers of the model (eval, export) need no change, plus one extra entry,
``restore_point``: the engine's ``shared_state()`` (frequency arrays, XIR cache, ...; the same
arrays the Redis transaction stores), the next offset per partition, the event count, the step, the
checkpoint id and writer, offsets skipped because retention overtook them, and (test mode) the
trained offset ranges. ``torch.load(weights_only=True)`` refuses numpy arrays, so the shared arrays
travel as ``.npy`` bytes (:func:`encode_array`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from streamtrain.events.records import PartitionKey
from streamtrain.state.files import CheckpointFiles
from streamtrain.state.redis_store import TrainedRange, decode_array, encode_array

__all__ = ["RESTORE_KEY", "RestorePoint", "ResumePoint", "pack", "unpack", "format_offsets", "kept_files_hint"]

RESTORE_KEY = "restore_point"
_FORMAT = 1


def _key(key: PartitionKey) -> str:
    return f"{key[0]}:{key[1]}"


def _parse(name: str) -> PartitionKey:
    topic, _, partition = name.rpartition(":")  # topic names cannot contain ':'
    return topic, int(partition)


def format_offsets(offsets: Mapping[PartitionKey, int]) -> str:
    """``t[0]@512, t[1]@earliest`` for log lines."""
    return ", ".join(f"{t}[{p}]@{'earliest' if o < 0 else o}" for (t, p), o in sorted(offsets.items())) or "none"


@dataclass
class RestorePoint:
    """Everything but the engine's file state that resuming from a file needs."""

    checkpoint_id: int
    writer: str
    step: int
    events: int
    offsets: dict[PartitionKey, int]
    shared: dict[str, np.ndarray]
    skipped: dict[PartitionKey, int] = field(default_factory=dict)
    trained_ranges: list[TrainedRange] | None = None  # None unless checkpoint.record_trained_ranges
    topic_ids: dict[str, str] = field(default_factory=dict)  # Kafka topic id per topic ({} in older files)


def pack(file_state: Mapping[str, Any], point: RestorePoint, encoded_shared: Mapping[str, bytes] | None = None) -> dict:
    """The dict ``torch.save`` writes: ``file_state`` plus the restore point.

    ``encoded_shared``: the shared arrays already encoded (the Redis step reuses the same bytes).
    """
    if RESTORE_KEY in file_state:
        raise ValueError(f"the engine's file_state() uses the reserved key {RESTORE_KEY!r}")
    shared = encoded_shared if encoded_shared is not None else {k: encode_array(v) for k, v in point.shared.items()}
    return {
        **file_state,
        RESTORE_KEY: {
            "format": _FORMAT,
            "checkpoint_id": point.checkpoint_id,
            "writer": point.writer,
            "step": point.step,
            "events": point.events,
            "offsets": {_key(k): int(v) for k, v in point.offsets.items()},
            "skipped": {_key(k): int(v) for k, v in point.skipped.items()},
            "shared": dict(shared),
            "trained_ranges": None if point.trained_ranges is None else [list(r) for r in point.trained_ranges],
            "topic_ids": dict(point.topic_ids),
        },
    }


def unpack(payload: Mapping[str, Any]) -> tuple[dict[str, Any], RestorePoint | None]:
    """Split a loaded file into the engine's file state and its restore point (None for an old file).

    Raises ValueError when the restore point is malformed.
    """
    file_state = {k: v for k, v in payload.items() if k != RESTORE_KEY}
    raw = payload.get(RESTORE_KEY)
    if raw is None:
        return file_state, None
    try:
        if raw["format"] != _FORMAT:
            raise ValueError(f"restore point format {raw['format']!r} is not {_FORMAT}")
        ranges = raw.get("trained_ranges")
        point = RestorePoint(
            checkpoint_id=int(raw["checkpoint_id"]),
            writer=str(raw["writer"]),
            step=int(raw["step"]),
            events=int(raw["events"]),
            offsets={_parse(k): int(v) for k, v in raw["offsets"].items()},
            shared={k: decode_array(v) for k, v in raw["shared"].items()},
            skipped={_parse(k): int(v) for k, v in raw.get("skipped", {}).items()},
            trained_ranges=None if ranges is None else [tuple(r) for r in ranges],  # type: ignore[misc]
            topic_ids={str(k): str(v) for k, v in raw.get("topic_ids", {}).items()},
        )
    except (KeyError, TypeError) as exc:
        raise ValueError(f"malformed restore point: {exc!r}") from exc
    return file_state, point


@dataclass(frozen=True)
class ResumePoint:
    """Where the worker starts."""

    fresh: bool
    checkpoint_id: int | None
    next_checkpoint_id: int
    events: int
    offsets: dict[PartitionKey, int] = field(default_factory=dict)
    seconds: float = 0.0
    skipped: dict[PartitionKey, int] = field(default_factory=dict)
    trained_ranges: list[TrainedRange] = field(default_factory=list)  # test mode: the committed history
    topic_ids: dict[str, str] = field(default_factory=dict)  # Kafka topic id per topic the offsets are of


def kept_files_hint(files: CheckpointFiles, limit: int = 5) -> str:
    """``ids 7, 8, 9 in DIR`` for error messages (newest last)."""
    ids = files.ids()
    if not ids:
        return f"no checkpoint files in {files.dir}"
    shown = ", ".join(map(str, ids[-limit:]))
    return f"checkpoint files kept in {files.dir}: ids {shown}{' (and older)' if len(ids) > limit else ''}"
