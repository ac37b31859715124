"""Start-up: decide between a fresh start and a resume, and load the committed state into the engine.

Rules (see also :mod:`streamtrain.worker.checkpoint`):

* ``--fresh``: delete the run's Redis keys and checkpoint files; every partition starts at its beginning.
* No Redis state and no checkpoint files for the run: a fresh start too (logged as such).
* Redis state: load the file whose id Redis names (newer files were never committed and are ignored),
  then the shared state; partitions resume at the stored next offsets.
* Checkpoint files but no Redis state (Redis lost its data), or Redis naming a missing file: refuse to
  guess; :class:`ResumeError` tells the operator to use ``--fresh``.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

from streamtrain.worker.batcher import PartitionKey
from streamtrain.worker.checkpoint_files import CheckpointFiles
from streamtrain.worker.engine import TrainingEngine
from streamtrain.worker.errors import ResumeError, StateStoreError
from streamtrain.worker.state_store import EARLIEST, RedisStateStore

__all__ = ["ResumePoint", "resume"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ResumePoint:
    """Where the worker starts."""

    fresh: bool
    checkpoint_id: int | None
    next_checkpoint_id: int
    events: int
    offsets: dict[PartitionKey, int] = field(default_factory=dict)
    seconds: float = 0.0


def resume(engine: TrainingEngine, store: RedisStateStore, files: CheckpointFiles, *, fresh: bool) -> ResumePoint:
    """Load the run's committed state into ``engine``; called once, before consuming.

    Raises:
        ResumeError: the state is unreadable or inconsistent; nothing was trained.
    """
    start = time.perf_counter()
    files.remove_temporaries()
    try:
        if fresh:
            store.clear()
            files.remove_all()
            log.info("fresh start (--fresh): cleared %s:* and %s; every partition starts at its beginning",
                     store.namespace, files.dir)
            return ResumePoint(True, None, 1, 0)
        state = store.load()
    except StateStoreError as exc:
        raise ResumeError(f"cannot read the run's state from Redis: {exc}") from exc
    ids = files.ids()
    if state is None:
        if ids:
            raise ResumeError(
                f"Redis has no state under {store.namespace} but {len(ids)} checkpoint files exist in {files.dir} "
                "(did Redis lose its data?); refusing to guess where to resume. Use --fresh to discard them."
            )
        log.info("fresh start: no state for this run in Redis or %s; every partition starts at its beginning",
                 files.dir)
        return ResumePoint(True, None, 1, 0)
    if state.checkpoint_id not in ids:
        raise ResumeError(
            f"Redis names checkpoint {state.checkpoint_id} ({state.file_name}) but it is not in {files.dir}; "
            "restore the file or use --fresh"
        )
    ignored = [i for i in ids if i > state.checkpoint_id]
    if ignored:
        log.info("ignoring checkpoint files %s: written but never committed to Redis", ignored)
    try:
        engine.load_file_state(files.read(state.checkpoint_id))
        engine.load_shared_state(state.shared)
    except Exception as exc:  # corrupt file or a config that does not fit the saved model
        raise ResumeError(f"cannot load checkpoint {state.checkpoint_id} from {files.dir}: {exc}") from exc
    seconds = time.perf_counter() - start
    log.info(
        "resumed from checkpoint %d (%s): step %d, %d events, offsets %s, in %.2f s",
        state.checkpoint_id, state.file_name, state.step, state.events,
        {f"{t}[{p}]": ("earliest" if o == EARLIEST else o) for (t, p), o in sorted(state.offsets.items())},
        seconds,
    )
    return ResumePoint(
        fresh=False,
        checkpoint_id=state.checkpoint_id,
        next_checkpoint_id=max([state.checkpoint_id, *ids]) + 1,
        events=state.events,
        offsets=dict(state.offsets),
        seconds=seconds,
    )
