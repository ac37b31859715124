"""Start-up: decide between a fresh start, a resume and a restore, and load the state into the engine.

Rules (see also :mod:`streamtrain.state.checkpoint`):

* ``--fresh``: delete the run's Redis keys and checkpoint files; every partition starts at its beginning.
* ``--restore CHECKPOINT`` (an id or a file): :mod:`streamtrain.state.restore`; the file alone is
  the state, and it becomes the committed state in Redis before training starts.
* No Redis state and no checkpoint files for the run: a fresh start too (logged as such).
* Redis state: load the file Redis names and verify it is the one committed (checkpoint id, step,
  event count and sha256 digest); newer files were never committed and are ignored. Partitions
  resume at the stored next offsets.
* Checkpoint files but no Redis state (Redis lost its data), a file Redis names that is missing,
  corrupt or not the committed one: refuse to guess; :class:`ResumeError` names the kept files and
  the remedy (``--restore <id>`` to resume exactly from one of them, or ``--fresh``).
"""

from __future__ import annotations

import logging
import time

from streamtrain.state.files import CheckpointFiles, file_digest
from streamtrain.training.engine import TrainingEngine
from streamtrain.errors import ResumeError, StateStoreError
from streamtrain.state.restore import restore_from_file
from streamtrain.state.restore_point import ResumePoint, format_offsets, kept_files_hint, unpack
from streamtrain.state.redis_store import RedisStateStore, StoredState

__all__ = ["ResumePoint", "resume", "kept_files_hint"]

log = logging.getLogger(__name__)


def resume(
    engine: TrainingEngine,
    store: RedisStateStore,
    files: CheckpointFiles,
    *,
    fresh: bool,
    restore: str | None = None,
    record_ranges: bool = False,
) -> ResumePoint:
    """Load the run's committed state into ``engine``; called once, before consuming.

    Raises:
        ResumeError: the state is unreadable or inconsistent; nothing was trained.
    """
    start = time.perf_counter()
    files.remove_temporaries()
    if fresh and restore is not None:
        raise ResumeError("--fresh and --restore exclude each other: choose one")
    if restore is not None:
        return restore_from_file(engine, store, files, restore, record_ranges=record_ranges)
    try:
        if fresh:
            store.clear()
            files.remove_all()
            log.info("fresh start (--fresh): cleared %s:* and %s; every partition starts at its beginning",
                     store.namespace, files.dir)
            return ResumePoint(True, None, 1, 0)
        state = store.load()
        history = store.trained_ranges() if record_ranges and state is not None else []
    except StateStoreError as exc:
        raise ResumeError(f"cannot read the run's state from Redis: {exc}") from exc
    ids = files.ids()
    if state is None:
        if ids:
            raise ResumeError(
                f"Redis has no state under {store.namespace} but {kept_files_hint(files)} (did Redis lose its "
                f"data?); refusing to guess. Resume exactly from one of them with --restore {ids[-1]} (an id or "
                "a file path), or discard them with --fresh."
            )
        log.info("fresh start: no state for this run in Redis or %s; every partition starts at its beginning",
                 files.dir)
        return ResumePoint(True, None, 1, 0)
    _load_committed(engine, files, state)
    ignored = [i for i in ids if i > state.checkpoint_id]
    if ignored:
        log.info("ignoring checkpoint files %s: written but never committed to Redis", ignored)
    seconds = time.perf_counter() - start
    log.info(
        "resumed from checkpoint %d (%s): step %d, %d events, offsets %s, in %.2f s",
        state.checkpoint_id, state.file_name, state.step, state.events, format_offsets(state.offsets), seconds,
    )
    return ResumePoint(
        fresh=False,
        checkpoint_id=state.checkpoint_id,
        next_checkpoint_id=max([state.checkpoint_id, *ids]) + 1,
        events=state.events,
        offsets=dict(state.offsets),
        seconds=seconds,
        skipped=dict(state.skipped),
        trained_ranges=history,
        topic_ids=dict(state.topic_ids),
    )


def _load_committed(engine: TrainingEngine, files: CheckpointFiles, state: StoredState) -> None:
    """Load the file Redis committed, after checking it is that file; ResumeError otherwise."""
    path = files.dir / state.file_name
    older = [i for i in files.ids() if i < state.checkpoint_id]
    remedy = (f"resume from an older kept file with --restore {older[-1]} (ids {older[-5:]}), or use --fresh"
              if older else "restore the file or use --fresh")
    if not path.is_file():
        raise ResumeError(f"Redis names checkpoint {state.checkpoint_id} ({state.file_name}) but it is not in "
                          f"{files.dir}; {remedy}")
    if state.digest is not None:
        digest = file_digest(path)
        if digest != state.digest:
            raise ResumeError(f"{path} is not the file Redis committed for checkpoint {state.checkpoint_id}: "
                              f"digest {digest} != committed {state.digest} (overwritten or corrupt); {remedy}")
    try:
        file_state, point = unpack(files.read(path))
    except Exception as exc:  # truncated or not a torch file
        raise ResumeError(f"cannot read checkpoint {state.checkpoint_id} from {path}: {exc}; {remedy}") from exc
    if point is None:
        if state.digest is not None:
            raise ResumeError(f"{path} has no restore point although Redis committed a digest for it; {remedy}")
        log.warning("%s predates restore points: loading it unverified (the next checkpoint writes a full one)", path)
    else:
        got = (point.checkpoint_id, point.step, point.events)
        want = (state.checkpoint_id, state.step, state.events)
        if got != want:
            raise ResumeError(
                f"{path} holds checkpoint {got[0]} at step {got[1]} with {got[2]} events, but Redis committed "
                f"checkpoint {want[0]} at step {want[1]} with {want[2]} events; refusing to mix them. {remedy}"
            )
    try:
        engine.load_file_state(file_state)
        engine.load_shared_state(state.shared)
    except Exception as exc:  # a config that does not fit the saved model
        raise ResumeError(f"cannot load checkpoint {state.checkpoint_id} from {path}: {exc}") from exc
