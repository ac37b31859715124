"""``streamtrain consume --restore CHECKPOINT``: resume exactly from one kept checkpoint file.

For when Redis lost the run's data, or the newest file is corrupt: every checkpoint file is a
self-contained restore point (:mod:`streamtrain.state.restore_point`). The chosen file's model,
shared state and offsets are loaded, and the same state is committed to Redis at once (fenced
against the id Redis held, so a worker that commits meanwhile makes the restore fail instead of
interleaving). Training then goes on from the file's offsets; the log says, per partition, how far
that rewound the committed position (those offsets are trained again, on the restored model, so
each offset still counts exactly once in the run's history).

``CHECKPOINT`` is an id (``7`` picks ``ckpt-000000000007-*.pt`` in the run's directory) or a path.
A file outside the run's directory (a backup) is copied in first, so Redis names a file the next
resume finds.
"""

from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path

from streamtrain.state.files import CheckpointFiles, file_digest
from streamtrain.training.engine import TrainingEngine
from streamtrain.errors import ResumeError, StateStoreError
from streamtrain.state.restore_point import ResumePoint, format_offsets, kept_files_hint, unpack
from streamtrain.state.redis_store import RedisStateStore, StoredState

__all__ = ["restore_from_file", "resolve_restore_target"]

log = logging.getLogger(__name__)


def resolve_restore_target(files: CheckpointFiles, target: str, committed: StoredState | None) -> Path:
    """The file meant by ``--restore``: an id of a kept file, or a path. ResumeError when none or ambiguous."""
    if target.isdigit():
        found = files.find(int(target))
        if not found:
            raise ResumeError(f"--restore {target}: no checkpoint {target}; {kept_files_hint(files)}")
        if len(found) > 1:
            named = [f for f in found if committed is not None and f.path.name == committed.file_name]
            if not named:
                raise ResumeError(f"--restore {target}: two writers left files for this id "
                                  f"({', '.join(f.path.name for f in found)}); pass the file's path")
            found = named
        return found[0].path
    path = Path(target)
    if not path.is_file():
        raise ResumeError(f"--restore {target}: not a checkpoint id nor an existing file; {kept_files_hint(files)}")
    return path


def restore_from_file(
    engine: TrainingEngine, store: RedisStateStore, files: CheckpointFiles, target: str, *, record_ranges: bool
) -> ResumePoint:
    """Load the restore point ``target`` into ``engine`` and commit it to Redis; see the module docstring."""
    start = time.perf_counter()
    try:
        committed = store.load()
    except StateStoreError as exc:
        raise ResumeError(f"cannot read the run's state from Redis: {exc}") from exc
    path = resolve_restore_target(files, target, committed)
    try:
        file_state, point = unpack(files.read(path))
    except Exception as exc:
        raise ResumeError(f"--restore {target}: cannot read {path} ({exc}); pick an older file. "
                          f"{kept_files_hint(files)}") from exc
    if point is None:
        raise ResumeError(f"--restore {target}: {path} was written before checkpoint files held offsets and "
                          "shared state; it cannot restart the run by itself")
    try:
        engine.load_file_state(file_state)
        engine.load_shared_state(point.shared)
    except Exception as exc:
        raise ResumeError(f"--restore {target}: cannot load {path} into this configuration: {exc}") from exc

    if path.resolve().parent != files.dir.resolve():
        files.dir.mkdir(parents=True, exist_ok=True)
        copy = files.dir / files.name(point.checkpoint_id)
        shutil.copyfile(path, copy)
        log.info("copied %s to %s so Redis can name it", path, copy)
        path = copy
    ranges = point.trained_ranges if record_ranges else None
    if record_ranges and ranges is None:
        ranges = []
    store.topic_ids = dict(point.topic_ids)  # the restored offsets are of the topic the file names
    try:
        store.commit(
            checkpoint_id=point.checkpoint_id,
            previous_ids=[committed.checkpoint_id if committed is not None else None],
            file_name=path.name,
            offsets=point.offsets,
            shared=point.shared,
            events=point.events,
            step=point.step,
            trained_ranges=ranges,
            digest=file_digest(path),
            writer=point.writer,
            skipped=point.skipped,
        )
    except StateStoreError as exc:
        raise ResumeError(f"--restore {target}: cannot commit the restored state to Redis: {exc}") from exc

    if committed is None:
        log.warning("restore: Redis had no state for the run; starting from %s alone", path.name)
    else:
        log.warning("restore: Redis held checkpoint %d (step %d, %d events); replaced by checkpoint %d",
                    committed.checkpoint_id, committed.step, committed.events, point.checkpoint_id)
        for key in sorted(set(committed.offsets) | set(point.offsets)):
            before, after = committed.offsets.get(key), point.offsets.get(key)
            if before != after:
                rewound = (before - after) if before is not None and after is not None and after >= 0 else None
                log.warning("restore: %s[%d] rewound from %s to %s%s", key[0], key[1], before, after,
                            f" ({rewound} offsets to train again)" if rewound is not None else "")
    ids = [f.checkpoint_id for f in files.entries()]
    seconds = time.perf_counter() - start
    log.info(
        "restored checkpoint %d from %s: step %d, %d events, offsets %s, in %.2f s",
        point.checkpoint_id, path, point.step, point.events, format_offsets(point.offsets), seconds,
    )
    return ResumePoint(
        fresh=False,
        checkpoint_id=point.checkpoint_id,
        next_checkpoint_id=max([point.checkpoint_id, *ids, committed.checkpoint_id if committed else 0]) + 1,
        events=point.events,
        offsets=dict(point.offsets),
        seconds=seconds,
        skipped=dict(point.skipped),
        trained_ranges=list(ranges or []),
        topic_ids=dict(point.topic_ids),
    )
