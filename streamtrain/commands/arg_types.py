"""argparse ``type=`` validators shared by the subcommands: a bad value is a usage error (exit 2)."""

from __future__ import annotations

import argparse
from pathlib import Path

__all__ = ["add_checkpoint_options", "non_negative_int", "positive", "positive_int"]


def positive(text: str) -> float:
    value = float(text)
    if not value > 0:  # also refuses nan
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {text}")
    return value


def non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
    return value


def add_checkpoint_options(parser: argparse.ArgumentParser) -> None:
    """``--checkpoint`` and ``--checkpoint-id``, shared by ``eval`` and ``export``."""
    parser.add_argument("--checkpoint", type=Path, default=None, metavar="PATH",
                        help="a ckpt-<id>.pt file, or a run directory; default <checkpoint.dir>/<run.name>. In a run "
                        "directory the checkpoint Redis names as committed is used (the newest file only when "
                        "Redis has no state for the run, with a warning)")
    parser.add_argument("--checkpoint-id", type=non_negative_int, default=None, metavar="ID",
                        help="use this checkpoint of the run instead of the committed one (ids: the ckpt-<id> files)")
