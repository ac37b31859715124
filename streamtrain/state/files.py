"""Checkpoint files: ``<checkpoint.dir>/<run>/ckpt-<id>-<writer>.pt``, written atomically, the newest ``keep`` kept.

A file is only a candidate: the checkpoint id, file name and digest committed in Redis say which one
is the run's state. Names are unique per writer (a random id per process: the PID is 1 in every
container) and per attempt (every attempt takes a new checkpoint id), so two workers that both plan
checkpoint n+1 write two different files and neither can replace a file the other committed. Temp
files carry a random suffix too and are ``flock``-ed while written, so a starting worker's clean-up
never deletes a file another live writer is still writing.

Files named ``ckpt-<id>.pt`` (written before writer ids existed) are still listed and read.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import logging
import os
import re
import secrets
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import torch

__all__ = ["CheckpointFile", "CheckpointFiles", "WrittenFile", "file_digest", "fsync_dir", "new_writer_id"]

log = logging.getLogger(__name__)

_NAME = re.compile(r"^ckpt-(\d{12})(?:-([0-9a-f]{4,32}))?\.pt$")
_CHUNK = 1 << 20


def new_writer_id() -> str:
    """A random id for one worker process (12 hex digits: collisions are out of the question)."""
    return secrets.token_hex(6)


def file_digest(path: Path) -> str:
    """``sha256:<hex>`` of a file's bytes (what Redis stores next to the committed file name)."""
    h = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            h.update(chunk)
    return f"sha256:{h.hexdigest()}"


def fsync_dir(path: Path) -> None:
    """Make a rename inside ``path`` durable (the directory entry, not just the file)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class _HashingWriter:
    """A write-only file wrapper that hashes what passes through (one pass: no re-read of a 1.5 GB file)."""

    def __init__(self, handle: BinaryIO) -> None:
        self._handle = handle
        self.hash = hashlib.sha256()

    def write(self, data: Any) -> int:
        self.hash.update(data)
        return self._handle.write(data)

    def flush(self) -> None:
        self._handle.flush()


@dataclass(frozen=True)
class CheckpointFile:
    """One file found on disk."""

    checkpoint_id: int
    writer: str | None  # None for a legacy ckpt-<id>.pt
    path: Path


class WrittenFile(type(Path())):  # type: ignore[misc]
    """The path of a file :meth:`CheckpointFiles.write` produced, carrying its ``digest`` (``sha256:<hex>``).

    A Path, so callers that only want the path (eval/export tests, benchmarks) use it as before.
    """

    digest: str = ""

    @property
    def path(self) -> Path:
        return Path(self)


class CheckpointFiles:
    """The checkpoint files of one run, as seen by one writer."""

    def __init__(self, root: Path, run: str, keep: int, writer: str | None = None) -> None:
        if keep < 1:
            raise ValueError(f"keep must be >= 1, got {keep}")
        self.dir = Path(root) / run
        self.keep = keep
        self.writer = writer or new_writer_id()

    def name(self, checkpoint_id: int) -> str:
        """This writer's file name for a checkpoint id (zero-padded, so names sort like ids)."""
        return f"ckpt-{checkpoint_id:012d}-{self.writer}.pt"

    def path(self, checkpoint_id: int) -> Path:
        return self.dir / self.name(checkpoint_id)

    def entries(self) -> list[CheckpointFile]:
        """Every checkpoint file of the run (any writer), oldest id first."""
        if not self.dir.is_dir():
            return []
        found = []
        for p in self.dir.iterdir():
            m = _NAME.match(p.name)
            if m:
                found.append(CheckpointFile(int(m.group(1)), m.group(2), p))
        return sorted(found, key=lambda f: (f.checkpoint_id, f.path.name))

    def ids(self) -> list[int]:
        """Checkpoint ids present on disk, ascending (an id written by two writers appears once)."""
        return sorted({f.checkpoint_id for f in self.entries()})

    def find(self, checkpoint_id: int) -> list[CheckpointFile]:
        """The files of one checkpoint id (more than one only when two writers raced)."""
        return [f for f in self.entries() if f.checkpoint_id == checkpoint_id]

    def newest(self) -> CheckpointFile | None:
        entries = self.entries()
        return entries[-1] if entries else None

    def write(self, checkpoint_id: int, state: dict[str, Any]) -> WrittenFile:
        """Write ``state`` as this writer's file for ``checkpoint_id``: temp file, fsync, rename, fsync dir.

        A failure of any kind (a full disk makes ``torch.save`` raise RuntimeError, not OSError) removes
        the temp file at once and re-raises. The final name never exists before (ids and writer are
        unique), so no existing file is ever replaced.
        """
        self.dir.mkdir(parents=True, exist_ok=True)
        final = self.path(checkpoint_id)
        if final.exists():
            raise FileExistsError(errno.EEXIST, "checkpoint file exists already; refusing to replace it", str(final))
        temp = self.dir / f".{final.name}.{secrets.token_hex(4)}.tmp"
        try:
            with open(temp, "xb") as handle:
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)  # tells remove_temporaries "in use"
                writer = _HashingWriter(handle)
                torch.save(state, writer)
                handle.flush()
                os.fsync(handle.fileno())
                os.replace(temp, final)
            fsync_dir(self.dir)
        except BaseException:
            temp.unlink(missing_ok=True)
            raise
        written = WrittenFile(final)
        written.digest = f"sha256:{writer.hash.hexdigest()}"
        return written

    def read(self, path: Path | int) -> dict[str, Any]:
        """Load a checkpoint file (a path, or this writer's file of an id) on the CPU."""
        target = self.path(path) if isinstance(path, int) else Path(path)
        # weights_only: the file holds tensors, bytes, lists and numbers only, so no code can run on load.
        return torch.load(target, map_location="cpu", weights_only=True)

    def remove(self, path: Path) -> None:
        """Delete one file this writer wrote and never committed (a fenced attempt)."""
        path.unlink(missing_ok=True)

    def prune(self, protect: Path | None = None) -> list[Path]:
        """Delete all but the newest ``keep`` files; never ``protect`` (the file just committed).

        The committed file is protected explicitly because another (fenced) writer may have left
        files with higher ids. Returns the deleted paths.
        """
        entries = self.entries()
        doomed = [f.path for f in entries[: max(0, len(entries) - self.keep)] if f.path != protect]
        for path in doomed:
            path.unlink(missing_ok=True)
        return doomed

    def remove_temporaries(self) -> int:
        """Delete half-written files left by crashed writers; skips files a live writer holds locked."""
        removed = 0
        if not self.dir.is_dir():
            return removed
        for p in self.dir.glob(".ckpt-*.tmp"):
            try:
                with open(p, "rb") as handle:
                    fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                    p.unlink(missing_ok=True)
                    removed += 1
            except BlockingIOError:
                log.info("leaving %s: another writer is writing it", p.name)
            except FileNotFoundError:
                pass
        return removed

    def remove_all(self) -> None:
        """Delete every checkpoint of the run (``--fresh``)."""
        if self.dir.is_dir():
            shutil.rmtree(self.dir)
            log.info("removed old checkpoints in %s", self.dir)
