"""Which checkpoint is the run's: the one Redis names as committed, or an older one picked by id.

The worker writes a checkpoint file *before* the Redis transaction that commits it
(:mod:`streamtrain.state.checkpoint`), so the newest file on disk can be an orphan of a commit
that never happened. Readers outside the worker (``eval``, ``export``, ``recommend``, the demo)
therefore ask Redis, as the worker's own resume does: ``<redis.key_prefix>:<run>:meta`` holds the
committed checkpoint id and its file name, ``...:offsets`` the next offset per partition.

Everything that decides "which checkpoint is committed" outside the worker lives here, so a change to
how files are named touches one module.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis

from streamtrain.errors import StateStoreError
from streamtrain.state.redis_store import redis_client

__all__ = ["CommittedCheckpoint", "CommittedLookup", "checkpoint_file_for_id", "committed_checkpoint",
           "redis_committed_lookup"]

log = logging.getLogger(__name__)

# ckpt-<12-digit id>.pt, possibly with a writer suffix before .pt (ckpt-<id>-<writer>.pt).
_ID_IN_NAME = re.compile(r"^ckpt-(\d{12})(?:[-.][A-Za-z0-9_.-]+)?\.pt$")


@dataclass(frozen=True)
class CommittedCheckpoint:
    """What the run's last successful checkpoint transaction stored."""

    checkpoint_id: int
    file_name: str
    events: int
    step: int
    offsets: dict[str, int] = field(default_factory=dict)  # "<topic>:<partition>" -> next offset to train

    def describe(self) -> dict[str, Any]:
        return {"checkpoint_id": self.checkpoint_id, "events": self.events, "offsets": dict(self.offsets),
                "committed_step": self.step}


CommittedLookup = Callable[[str], "CommittedCheckpoint | None"]
"""run name -> its committed checkpoint (None: no state); raises StateStoreError when it cannot tell."""


def committed_checkpoint(client: redis.Redis, key_prefix: str, run: str) -> CommittedCheckpoint | None:
    """The checkpoint Redis names as committed for ``run``; None when the run has no state there.

    Reads the two small hashes only (not the shared-state arrays). Raises StateStoreError when Redis
    cannot be read or the stored meta is malformed.
    """
    namespace = f"{key_prefix}:{run}"
    try:
        with client.pipeline(transaction=True) as pipe:
            pipe.hgetall(f"{namespace}:meta").hgetall(f"{namespace}:offsets")
            meta, offsets = pipe.execute()
    except redis.RedisError as exc:
        raise StateStoreError("read", str(exc)) from exc
    if not meta:
        return None
    try:
        m = {k.decode(): v.decode() for k, v in meta.items()}
        return CommittedCheckpoint(
            checkpoint_id=int(m["checkpoint_id"]),
            file_name=m["file"],
            events=int(m["events"]),
            step=int(m["step"]),
            offsets={k.decode(): int(v) for k, v in offsets.items()},
        )
    except (KeyError, ValueError) as exc:
        raise StateStoreError("read", f"{namespace}:meta is malformed: {exc}") from exc


def redis_committed_lookup(config: Any) -> CommittedLookup:
    """A lookup against the configured Redis (``redis.url``, ``redis.password``, ``redis.key_prefix``)."""

    def lookup(run: str) -> CommittedCheckpoint | None:
        client = redis_client(config)
        try:
            return committed_checkpoint(client, config.redis.key_prefix, run)
        finally:
            client.close()

    return lookup


def checkpoint_file_for_id(run_dir: Path, checkpoint_id: int) -> Path | None:
    """The file of checkpoint ``checkpoint_id`` in ``run_dir``; None when there is none."""
    if not run_dir.is_dir():
        return None
    for path in sorted(run_dir.iterdir()):
        match = _ID_IN_NAME.match(path.name)
        if match and int(match.group(1)) == checkpoint_id:
            return path
    return None


def checkpoint_ids(run_dir: Path) -> list[int]:
    """Checkpoint ids with a file in ``run_dir``, ascending (for messages and the newest-file fallback)."""
    if not run_dir.is_dir():
        return []
    return sorted({int(m.group(1)) for p in run_dir.iterdir() if (m := _ID_IN_NAME.match(p.name))})
