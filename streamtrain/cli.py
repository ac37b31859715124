"""The ``streamtrain`` command line: global config options plus one module per subcommand.

Each module in :mod:`streamtrain.commands` exposes ``register(subparsers)``; it adds its parser
and sets ``handler(args, config) -> int``. Heavy imports (torch, kafka) happen inside handlers so
``streamtrain --help`` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from typing import Sequence

from streamtrain import __version__
from streamtrain.config import Config, load_config
from streamtrain.errors import ConfigError, StreamtrainError
from streamtrain.log_limit import limit_client_logs

__all__ = ["main", "build_parser", "quiet_library_logs"]

COMMAND_MODULES = (
    "streamtrain.commands.config_cmd",
    "streamtrain.commands.consume",
    "streamtrain.commands.replay",
    "streamtrain.commands.eval_cmd",
    "streamtrain.commands.export",
    "streamtrain.commands.recommend",
    "streamtrain.commands.demo",
)

EXIT_CONFIG_ERROR = 2


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="streamtrain",
        description="Streaming online training of two-tower retrievers from Kafka (XIR sampled softmax).",
    )
    parser.add_argument("--version", action="version", version=f"streamtrain {__version__}")
    parser.add_argument("-c", "--config", help="TOML or YAML config file (default: $STREAMTRAIN_CONFIG)")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="override one config key; repeatable; wins over the file and STREAMTRAIN_* env vars",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def quiet_library_logs(config: Config) -> None:
    """kafka-python logs every connection and rebalance at INFO, faiss every CPU-feature probe; keep them
    for ``run.log_level=DEBUG`` only, so the worker's own status lines stay readable (warnings and
    errors still show)."""
    level = logging.DEBUG if config.run.log_level == "DEBUG" else logging.WARNING
    for name in ("kafka", "faiss"):
        logging.getLogger(name).setLevel(level)
    # kafka-python warns whenever one of its I/O tasks waited > 100 ms for the GIL ("blocking the event
    # loop"): in the worker the training thread holds the GIL for a step at a time, so this fires on
    # every busy start and says nothing actionable; real consumer trouble shows as poll failures,
    # lag and rebalances in the worker's own logs and metrics.
    if config.run.log_level != "DEBUG":
        logging.getLogger("kafka.net.selector").setLevel(logging.ERROR)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        config = load_config(args.config, overrides=args.overrides)
    except ConfigError as exc:
        print(f"streamtrain: {exc}", file=sys.stderr)
        return EXIT_CONFIG_ERROR
    logging.basicConfig(
        level=config.run.log_level,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    quiet_library_logs(config)
    limit_client_logs(config.run.log_repeat_interval_s)
    try:
        return int(args.handler(args, config) or 0)
    except ConfigError as exc:
        print(f"streamtrain: {exc}", file=sys.stderr)
        return EXIT_CONFIG_ERROR
    except StreamtrainError as exc:
        print(f"streamtrain: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
