"""Starting a job's ranks together: rank 0 takes the lease and resumes, the others receive its state.

Rank 0 alone touches the run's stored state (lease, ``--fresh``, Redis, the checkpoint file). It
then broadcasts what it resumed (the :class:`~streamtrain.state.resume.ResumePoint` and, unless
the run is fresh, the engine's file and shared state), so every rank starts bit-identical without
reading the checkpoint volume (ranks on other nodes need not mount it). A failure on rank 0 is
broadcast too: every rank exits with its message instead of waiting for a collective timeout.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, TypeVar

from streamtrain.distributed.context import DistContext
from streamtrain.errors import WorkerError

__all__ = ["on_main", "share_resume"]

log = logging.getLogger(__name__)

T = TypeVar("T")


def on_main(ctx: DistContext, what: str, action: Callable[[], T]) -> T | None:
    """Run ``action`` on rank 0 and tell every rank whether it failed (other ranks get None)."""
    result: T | None = None
    failure: BaseException | None = None
    if ctx.is_main:
        try:
            result = action()
        except Exception as exc:
            failure = exc
    message = ctx.broadcast_object(None if failure is None else str(failure))
    if failure is not None:
        raise failure
    if message is not None:
        raise WorkerError(f"rank 0 could not {what}: {message}")
    return result


def share_resume(ctx: DistContext, engine: Any, start: Any) -> Any:
    """Rank 0's resume point on every rank, and its engine state loaded into the other ranks' engines."""
    if not ctx.distributed:
        return start
    state = None
    if ctx.is_main and not start.fresh:
        state = (engine.file_state(), engine.shared_state())
    start, state = ctx.broadcast_object((start, state))
    if not ctx.is_main and state is not None:
        engine.load_file_state(state[0])
        engine.load_shared_state(state[1])
    log.info("rank %d starts from checkpoint %s with %d events trained", ctx.rank, start.checkpoint_id, start.events)
    return start
