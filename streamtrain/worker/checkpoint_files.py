"""Checkpoint files: ``<checkpoint.dir>/<run>/ckpt-<id>.pt``, written atomically, the newest ``keep`` kept.

A file is only a candidate: the checkpoint id committed in Redis says which one is the run's
state. A file newer than that id was written by a checkpoint whose Redis step never happened and
is ignored (and eventually pruned).
"""

from __future__ import annotations

import logging
import os
import re
import shutil
from pathlib import Path
from typing import Any

import torch

__all__ = ["CheckpointFiles"]

log = logging.getLogger(__name__)

_NAME = re.compile(r"^ckpt-(\d{12})\.pt$")


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class CheckpointFiles:
    """The checkpoint files of one run."""

    def __init__(self, root: Path, run: str, keep: int) -> None:
        if keep < 1:
            raise ValueError(f"keep must be >= 1, got {keep}")
        self.dir = Path(root) / run
        self.keep = keep

    @staticmethod
    def name(checkpoint_id: int) -> str:
        """The file name of a checkpoint id (zero-padded, so names sort like ids)."""
        return f"ckpt-{checkpoint_id:012d}.pt"

    def path(self, checkpoint_id: int) -> Path:
        return self.dir / self.name(checkpoint_id)

    def ids(self) -> list[int]:
        """Checkpoint ids present on disk, ascending."""
        if not self.dir.is_dir():
            return []
        found = (_NAME.match(p.name) for p in self.dir.iterdir())
        return sorted(int(m.group(1)) for m in found if m)

    def write(self, checkpoint_id: int, state: dict[str, Any]) -> Path:
        """Write ``state`` as checkpoint ``checkpoint_id``: temp file, fsync, rename, fsync the directory.

        A crash at any point leaves either no file or the complete file (plus maybe a ``.tmp``
        that :meth:`remove_temporaries` deletes at the next start). Raises OSError on disk failures.
        """
        self.dir.mkdir(parents=True, exist_ok=True)
        final = self.path(checkpoint_id)
        temp = final.with_name(f".{final.name}.{os.getpid()}.tmp")
        with open(temp, "wb") as handle:
            torch.save(state, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp, final)
        _fsync_dir(self.dir)
        return final

    def read(self, checkpoint_id: int) -> dict[str, Any]:
        """Load checkpoint ``checkpoint_id`` on the CPU; FileNotFoundError when it is gone."""
        # weights_only: the file holds tensors, lists and numbers only, so no code can run on load.
        return torch.load(self.path(checkpoint_id), map_location="cpu", weights_only=True)

    def prune(self) -> list[int]:
        """Delete all but the newest ``keep`` files; called right after a successful commit.

        Safe then because the committed id is the newest file. Returns the deleted ids.
        """
        ids = self.ids()
        doomed = ids[: max(0, len(ids) - self.keep)]
        for checkpoint_id in doomed:
            self.path(checkpoint_id).unlink(missing_ok=True)
        return doomed

    def remove_temporaries(self) -> None:
        """Delete half-written files left by a crash; called once at start."""
        if self.dir.is_dir():
            for p in self.dir.glob(".ckpt-*.tmp"):
                p.unlink(missing_ok=True)

    def remove_all(self) -> None:
        """Delete every checkpoint of the run (``--fresh``)."""
        if self.dir.is_dir():
            shutil.rmtree(self.dir)
            log.info("removed old checkpoints in %s", self.dir)
