"""Continuous, versioned exports: the served embeddings follow training.

``streamtrain consume`` with ``export.every_checkpoints = N`` (> 0) publishes an export (format:
:mod:`streamtrain.serving.export_format`) after every N-th committed checkpoint::

    <export.dir>/<run>/
        v-000000000012/     one complete export per published checkpoint id
        v-000000000015/
        latest -> v-000000000015

Order, so that a reader never sees a half-written export:

1. the export is written to a hidden temporary directory and renamed to ``v-<id>`` when complete
   (:func:`~streamtrain.serving.export_format.write_export`);
2. the worker checks that Redis still names checkpoint ``<id>`` as committed (a second writer that
   fenced this one off must not be served);
3. ``latest`` is flipped atomically: a new symlink under a temporary name, then ``rename`` over the
   old one (``rename`` replaces a directory entry atomically, so a reader sees the old or the new
   target, never none);
4. versions beyond the newest ``export.keep`` are deleted, never the one ``latest`` names.

A reader resolves ``latest`` once and reads every file from that version
(:func:`~streamtrain.serving.export_format.resolve_export`); ``keep`` >= 2 leaves it time to finish
before its version is pruned.

The publish runs on the checkpoint thread right after a successful commit, from the snapshot that was
committed (no file is re-read); the next checkpoint waits for it, training does not. A failed
publish is logged and counted, never fatal: the previous ``latest`` stays served.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from streamtrain.serving.ann import IndexSpec
from streamtrain.serving.checkpoint_model import checkpoint_from_state
from streamtrain.serving.export_format import LATEST, write_export
from streamtrain.state.files import fsync_dir
from streamtrain.state.committed import CommittedCheckpoint

__all__ = ["ExportPublisher", "Published", "flip_latest", "version_name"]

log = logging.getLogger(__name__)


def version_name(checkpoint_id: int) -> str:
    return f"v-{checkpoint_id:012d}"


def flip_latest(root: Path, version: str) -> None:
    """Point ``root/latest`` at ``version`` atomically (symlink under a temporary name, then rename)."""
    temp = root / f".{LATEST}.{os.getpid()}.tmp"
    temp.unlink(missing_ok=True)
    os.symlink(version, temp)
    os.replace(temp, root / LATEST)
    fsync_dir(root)


@dataclass(frozen=True)
class Published:
    """One publish: the version written and what Redis named as committed when ``latest`` flipped."""

    checkpoint_id: int
    path: Path
    redis_checkpoint_id: int | None
    seconds: float


class ExportPublisher:
    """Publishes every ``every``-th committed checkpoint of one run under ``root``; keeps ``keep`` versions."""

    def __init__(
        self,
        root: Path,
        *,
        every: int,
        keep: int,
        config: Any,
        committed_id: Callable[[], int | None],
        checkpoint_file: Callable[[int], Path],
        index: IndexSpec = IndexSpec(),
        metrics: Any | None = None,
    ) -> None:
        if every < 1 or keep < 1:
            raise ValueError(f"need every >= 1 and keep >= 1, got {every}, {keep}")
        self.root = Path(root)
        self.every = every
        self.keep = keep
        self._config = config
        self._committed_id = committed_id
        self._index = index
        self._checkpoint_file = checkpoint_file
        self._metrics = metrics
        self._commits = 0
        self.history: deque[Published] = deque(maxlen=100)

    def on_commit(self, snap: Any) -> Published | None:
        """Called after each successful checkpoint with its snapshot; publishes every ``every``-th one.

        Never raises: a failed publish is logged (the previous ``latest`` stays) and returns None.
        """
        self._commits += 1
        if self._commits % self.every:
            return None
        try:
            return self.publish(snap.file_state, snap.checkpoint_id, CommittedCheckpoint(
                checkpoint_id=snap.checkpoint_id, file_name="", events=snap.events, step=snap.step,
                offsets={f"{t}:{p}": int(o) for (t, p), o in snap.offsets.items()},
            ))
        except Exception as exc:  # disk full, faiss failure...: serving keeps the previous version
            self._count("failed")
            log.warning("export of checkpoint %d failed; latest stays where it was: %s", snap.checkpoint_id, exc)
            return None

    def _count(self, outcome: str) -> None:
        if self._metrics is not None:
            self._metrics.exports.labels(outcome=outcome).inc()

    def publish(self, file_state: Any, checkpoint_id: int, committed: CommittedCheckpoint) -> Published | None:
        """Write version ``v-<checkpoint_id>``, flip ``latest`` to it if Redis still names that id, prune."""
        started = time.perf_counter()
        self.root.mkdir(parents=True, exist_ok=True)
        version = version_name(checkpoint_id)
        ckpt = checkpoint_from_state(file_state, self._config, path=self._checkpoint_file(checkpoint_id),
                                     run=self.root.name, checkpoint_id=checkpoint_id, committed=committed)
        write_export(ckpt, self.root / version, force=True, index=self._index)
        in_redis = self._committed_id()
        if in_redis != checkpoint_id:
            log.warning("not publishing checkpoint %d: Redis now names checkpoint %s as committed",
                        checkpoint_id, in_redis)
            shutil.rmtree(self.root / version, ignore_errors=True)
            self._count("skipped")
            return None
        flip_latest(self.root, version)
        self._prune(version)
        published = Published(checkpoint_id, self.root / version, in_redis, time.perf_counter() - started)
        self.history.append(published)
        self._count("ok")
        if self._metrics is not None:
            self._metrics.last_export_checkpoint_id.set(checkpoint_id)
        log.info("published export %s (checkpoint %d, %d events) in %.2f s", published.path, checkpoint_id,
                 committed.events, published.seconds)
        return published

    def _prune(self, current: str) -> None:
        versions = sorted(p.name for p in self.root.glob("v-*") if p.is_dir())
        for name in versions[: max(0, len(versions) - self.keep)]:
            if name != current:
                shutil.rmtree(self.root / name, ignore_errors=True)
