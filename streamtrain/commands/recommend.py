"""``streamtrain recommend``: top-k items for users from an export (see :mod:`streamtrain.serving.recommend`)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from streamtrain.config import Config

__all__ = ["register"]


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "recommend",
        help="top-k items for a user from an export (FAISS HNSW when the export has an index, or exact numpy)",
        description="Top k exported items for each --user by the model's score (inner product / temperature): "
        "with the export's FAISS index (HNSW: approximate, its measured recall@20 is in manifest.json) or exact "
        "with numpy (--backend numpy). Unknown users get the fallback embedding (marked in the output). --export "
        "may be a published folder (<export.dir>/<run>, written by `consume` with export.every_checkpoints): its "
        "latest version is read, or the version of --checkpoint-id.",
    )
    p.add_argument("--export", type=Path, required=True, metavar="DIR",
                   help="a `streamtrain export` directory, or a published folder holding v-<id>/ and latest")
    p.add_argument("--checkpoint-id", type=int, default=None, metavar="ID",
                   help="in a published folder, the version made from this checkpoint instead of latest")
    p.add_argument("--user", action="append", required=True, metavar="ID", help="user id; repeatable")
    p.add_argument("-k", type=int, default=20, help="how many items")
    p.add_argument("--exclude-seen", type=Path, nargs="*", default=[], metavar="FILE",
                   help="interaction files (Gowalla or JSONL); the user's items in them are not recommended")
    p.add_argument("--exclude-recent", action=argparse.BooleanOptionalAction, default=None,
                   help="leave the user's own last H items (at the export) out; default: trainer.exclude_history_items")
    p.add_argument("--backend", choices=("auto", "numpy", "faiss"), default="auto")
    p.add_argument("--json", action="store_true", help="print JSON (one object per user, in a list)")
    p.set_defaults(handler=_run)


def _run(args: argparse.Namespace, config: Config) -> int:
    from streamtrain.data.interactions import read_interactions
    from streamtrain.serving.export_format import read_export
    from streamtrain.serving.recommend import recommend

    if args.k < 1:
        print("streamtrain: -k must be >= 1", file=sys.stderr)
        return 2
    export = read_export(args.export, load_faiss=args.backend != "numpy", checkpoint_id=args.checkpoint_id)
    seen = read_interactions(args.exclude_seen).by_user() if args.exclude_seen else {}
    recent = config.trainer.exclude_history_items if args.exclude_recent is None else args.exclude_recent
    results = [recommend(export, u, args.k, exclude=seen.get(u, ()), backend=args.backend, exclude_recent=recent)
               for u in args.user]
    if args.json:
        print(json.dumps([r.to_dict() for r in results], indent=2))
        return 0
    source = export.manifest["source"]
    print(f"export {export.path} (checkpoint {source['checkpoint_id']}, step {source['step']})")
    for r in results:
        who = "" if r.known_user else " (unknown user: fallback embedding)"
        print(f"user {r.user_id}{who}: top {len(r.items)} of {len(export.item_ids):,} items, "
              f"{r.excluded} seen excluded, {r.backend}")
        for rank, (item, score) in enumerate(zip(r.items, r.scores), 1):
            print(f"  {rank:>4}  {item:<24} {score:9.4f}")
    return 0
