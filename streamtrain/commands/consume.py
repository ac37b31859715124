"""``streamtrain consume``: the long-running worker that trains from Kafka (see :mod:`streamtrain.worker`)."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import time
from typing import Any

from streamtrain.config import Config

__all__ = ["register"]

log = logging.getLogger(__name__)

EXIT_STOP_TIMEOUT = 3
_STOP_BOUND_S = 30.0


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "consume",
        help="train continuously from the Kafka topic (resumes the run's checkpoint)",
        description="Consume kafka.topic in micro-batches and train; checkpoint to checkpoint.dir + Redis; "
        "serve /metrics, /healthz and /readyz on metrics.host:metrics.port. SIGTERM/SIGINT: finish the "
        "current step, checkpoint, exit 0.",
    )
    parser.add_argument(
        "--fresh",
        "--from-beginning",
        dest="fresh",
        action="store_true",
        help="discard this run's Redis state and checkpoint files; start every partition at its beginning",
    )
    parser.add_argument(
        "--restore",
        metavar="CHECKPOINT",
        default=None,
        help="resume exactly from one kept checkpoint file (an id or a path) instead of the one Redis names: "
        "after Redis lost its data, or when the newest file is corrupt; logs what it rewinds",
    )
    parser.add_argument("--max-steps", type=int, default=None, help="exit (with a checkpoint) at this many total steps")
    parser.add_argument(
        "--idle-exit",
        type=float,
        default=None,
        metavar="SECONDS",
        help="exit (with a checkpoint) after this long without events",
    )
    parser.set_defaults(handler=_consume)


def _engine_factory(config: Config) -> Any:
    from streamtrain.training.trainer import Trainer

    return Trainer(config)


def _consume(args: argparse.Namespace, config: Config) -> int:
    t0 = time.perf_counter()
    if args.max_steps is not None and args.max_steps < 1:
        print("streamtrain: --max-steps must be >= 1", file=sys.stderr)
        return 2
    from streamtrain.distributed.context import init_context

    d = config.distributed
    # torchrun's ranks join one process group here; a plain process is W = 1 of the same code.
    ctx = init_context(d.backend, config.run.device, d.collective_timeout_s)
    try:
        return _run(args, config, ctx, t0)
    finally:
        ctx.close()


def _run(args: argparse.Namespace, config: Config, ctx: Any, t0: float) -> int:
    from streamtrain.worker.build import build_worker

    parts = build_worker(
        config,
        ctx=ctx,
        engine_factory=_engine_factory,
        fresh=args.fresh,
        restore=args.restore,
        max_steps=args.max_steps,
        idle_exit_s=args.idle_exit,
    )
    worker = parts.worker
    stop_requested_at: list[float] = []

    def on_signal(signum: int, _frame: Any) -> None:
        stop_requested_at.append(time.monotonic())
        worker.request_stop(signal.Signals(signum).name)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    worker.start()
    log.info("worker started in %.2f s (run %s, topic %s)", time.perf_counter() - t0, config.run.name,
             config.kafka.topic)
    # Join in slices so signal handlers run on this (main) thread promptly.
    while not worker.join(0.2):
        if stop_requested_at and time.monotonic() - stop_requested_at[0] > _STOP_BOUND_S:
            log.error("worker did not stop within %.0f s of the signal; exiting anyway", _STOP_BOUND_S)
            return EXIT_STOP_TIMEOUT
    worker.source.stop()
    parts.close()
    if worker.fatal is not None:
        print(f"streamtrain: error: {worker.fatal}", file=sys.stderr)
        return 1
    if worker.source.fatal is not None:
        print(f"streamtrain: error: {worker.source.fatal}", file=sys.stderr)
        return 1
    if worker.exit_error is not None:
        print(f"streamtrain: error: {worker.exit_error}", file=sys.stderr)
        return 1
    log.info("stopped (%s) after %d events, step %d", worker.stop_reason, worker.progress.events, worker.engine.step)
    return 0
