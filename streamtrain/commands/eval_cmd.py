"""``streamtrain eval``: Recall@K / NDCG@K of a checkpoint on a held-out file (:mod:`streamtrain.serving.checkpoint_eval`)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, TextIO

from streamtrain.commands.arg_types import add_checkpoint_options
from streamtrain.config import Config

__all__ = ["register", "print_report"]

_DESCRIPTION = (
    "Full-ranking Recall@K and NDCG@K of a checkpoint on held-out interactions: every item with a row is a "
    "candidate; the items each user trained on are excluded when the training file(s) are given with --exclude "
    "(the checkpoint itself does not record them). Raw ids map through the checkpoint's vocabulary; test users "
    "it does not know are scored with the fallback embedding and test items it does not know count as misses, "
    "and both are counted in the report. Files: Gowalla 'user item item ...' or JSONL events (any format "
    "`streamtrain replay` reads). model.normalize/model.temperature come from the checkpoint (older files: the config). "
    "The checkpoint is the one Redis names as committed for the run, or --checkpoint-id."
)


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("eval", help="Recall@K / NDCG@K of a checkpoint on a held-out file",
                              description=_DESCRIPTION)
    add_checkpoint_options(p)
    p.add_argument("--test", type=Path, nargs="+", required=True, metavar="FILE", help="held-out interactions")
    p.add_argument("--exclude", type=Path, nargs="*", default=[], metavar="FILE",
                   help="training interactions whose items are removed from each user's ranking")
    p.add_argument("--format", default=None, help="input format for every file (default: detected per file)")
    p.add_argument("-k", type=int, nargs="+", default=[10, 20, 50], metavar="K", help="cut-offs")
    p.add_argument("--max-users", type=int, default=None, metavar="N", help="evaluate only the first N test users")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(handler=_run)


def _run(args: argparse.Namespace, config: Config) -> int:
    from streamtrain.serving.checkpoint_eval import evaluate_checkpoint
    from streamtrain.data.interactions import read_interactions
    from streamtrain.serving.checkpoint_model import choose_checkpoint, load_checkpoint

    if min(args.k) < 1 or (args.max_users is not None and args.max_users < 1):
        print("streamtrain: -k and --max-users must be >= 1", file=sys.stderr)
        return 2
    ckpt = load_checkpoint(choose_checkpoint(args.checkpoint, config, checkpoint_id=args.checkpoint_id), config)
    test = read_interactions(args.test, args.format)
    exclude = read_interactions(args.exclude, args.format) if args.exclude else None
    report = evaluate_checkpoint(ckpt, test, exclude, k_list=sorted(set(args.k)), max_users=args.max_users)
    if args.json:
        print(json.dumps(report.to_dict(), indent=2))
    else:
        print_report(report.to_dict(), sys.stdout)
    return 0


def print_report(r: dict[str, Any], out: TextIO) -> None:
    """The text form of an evaluation report (also used by ``streamtrain demo``)."""
    c = r["checkpoint"]
    state = "committed" if c.get("committed") else "not the committed one"
    print(f"checkpoint  {c['path']} (run {c['run']}, checkpoint {c['checkpoint_id']}, step {c['step']}, {state})",
          file=out)
    print(f"test        {', '.join(r['test_files'])}: {r['test_users']:,} users, "
          f"{r['test_interactions']:,} interactions", file=out)
    if r["exclude_files"]:
        print(f"excluded    items each user has in {', '.join(r['exclude_files'])} "
              f"({r['excluded_pairs']:,} pairs)", file=out)
    else:
        print("excluded    nothing (no --exclude: trained items stay in the ranking)", file=out)
    print(f"candidates  {r['candidate_items']:,} items (full ranking)", file=out)
    print(f"unseen      {r['unknown_users']:,} test users without a row (scored with the fallback embedding); "
          f"{r['unknown_item_interactions']:,} test interactions on {r['unknown_items']:,} items without a row "
          "(misses)", file=out)
    if r["bad_lines"]:
        print(f"bad lines   {r['bad_lines']:,} skipped", file=out)
    ks = r["k_list"]
    print("", file=out)
    print("        " + "".join(f"{'@' + str(k):>9}" for k in ks), file=out)
    for metric, name in (("recall", "Recall"), ("ndcg", "NDCG")):
        print(f"{name:<8}" + "".join(f"{r['metrics'][f'{metric}@{k}']:>9.4f}" for k in ks), file=out)
    print(f"\n({r['seconds']:.1f} s)", file=out)
