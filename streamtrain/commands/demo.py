"""``streamtrain demo``: the README's main job (see :mod:`streamtrain.demo.runner` for the steps)."""

from __future__ import annotations

import argparse
import json
import signal
import sys
from pathlib import Path
from typing import Any

from streamtrain.commands.arg_types import positive, positive_int
from streamtrain.config import Config

__all__ = ["register"]


def register(subparsers: argparse._SubParsersAction) -> None:
    from streamtrain.demo.settings import DEFAULT_EPOCHS, DEFAULT_USERS  # light: `--help` stays fast

    p = subparsers.add_parser(
        "demo",
        help="replay Gowalla into a fresh topic, train with XIR until drained, report (needs the local stack)",
        description="Replay a seeded sample of Gowalla users (all their train+valid events, --epochs passes, each "
        "in a seeded shuffle) into a new topic, train it with the worker "
        "(sampler xir, until the topic is drained), then report progressive and offline Recall@20/NDCG@20 and "
        "where to look at the metrics; writes runs/<run>/{report.json,steps.csv,demo.png,export/}. Needs "
        "Kafka, Redis and Prometheus (scripts/local-stack start; scripts/demo does it). Any config key can be "
        "changed with --set (e.g. --set trainer.batch_size=2048).",
    )
    size = p.add_mutually_exclusive_group()
    size.add_argument("--users", type=positive_int, default=DEFAULT_USERS,
                      help=f"users sampled (seeded), each with all its events (default {DEFAULT_USERS:,})")
    size.add_argument("--full", action="store_true", help="every user: all 810,128 train+valid events per pass")
    p.add_argument("--epochs", type=positive_int, default=DEFAULT_EPOCHS,
                   help=f"passes over the sampled events, each in its own seeded shuffle (default {DEFAULT_EPOCHS})")
    p.add_argument("--data", type=Path, default=None,
                   help="Gowalla folder with train/valid/test .txt or .txt.gz (default: the copy shipped in "
                        "streamtrain/data/gowalla)")
    p.add_argument("--seed", type=int, default=0, help="shuffle seed (default 0)")
    p.add_argument("--run", default=None, help="run name (default demo-<UTC time>-<random>)")
    p.add_argument("--partitions", type=positive_int, default=1, help="partitions of the demo topic (default 1)")
    p.add_argument("--idle-exit", type=positive, default=5.0, metavar="SECONDS",
                   help="the worker stops this long after the last event (default 5)")
    p.add_argument("--max-seconds", type=positive, default=None, help="stop training after this long anyway")
    p.add_argument("--eval-users", type=positive_int, default=None, help="offline-evaluate the first N test users")
    p.add_argument("--out", type=Path, default=Path("runs"), help="where <run>/ and checkpoints/ go (default runs)")
    p.add_argument("--keep-topic", action="store_true", help="keep the demo topic (deleted at the end by default)")
    p.add_argument("--json-out", type=Path, default=None, metavar="FILE", help="also write the report JSON here")
    p.add_argument("--json", action="store_true", help="print the report as JSON instead of text")
    p.set_defaults(handler=_run)


def _run(args: argparse.Namespace, config: Config) -> int:
    from streamtrain.demo.runner import DemoOptions, run_demo
    from streamtrain.demo.report import format_report

    from streamtrain.data.gowalla import DEFAULT_GOWALLA_DIR

    options = DemoOptions(
        data_dir=args.data or DEFAULT_GOWALLA_DIR, users=None if args.full else args.users, epochs=args.epochs,
        seed=args.seed, run=args.run,
        partitions=args.partitions, idle_exit_s=args.idle_exit, max_seconds=args.max_seconds,
        out_root=args.out, eval_users=args.eval_users, keep_topic=args.keep_topic,
    )

    def on_term(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt  # the runner stops the worker cleanly, then the CLI exits 130

    signal.signal(signal.SIGTERM, on_term)
    report = run_demo(config, options)
    if args.json_out is not None:
        args.json_out.parent.mkdir(parents=True, exist_ok=True)
        args.json_out.write_text(json.dumps(report, indent=2) + "\n")
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        format_report(report, sys.stdout)
    return 0
