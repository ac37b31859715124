"""``streamtrain export``: a checkpoint → the serving format of :mod:`streamtrain.serving.export_format`."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from streamtrain.commands.arg_types import add_checkpoint_options
from streamtrain.config import Config

__all__ = ["register"]


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "export",
        help="write a checkpoint's item/user embeddings, ids, user tower and manifest for serving",
        description="Export a checkpoint to DIR: item_embeddings.npy + item_ids.json, user_embeddings.npy + "
        "user_ids.json, user_fallback.npy, user_tower.pt + user_rows.npy, manifest.json, and items.faiss "
        "(export.index: HNSW by default, its recall@20 against exact search in the manifest). Format: the "
        "docstring of streamtrain/serving/export_format.py. The checkpoint is the one Redis names as committed for "
        "the run (--checkpoint-id picks an older one); the manifest records its id, event count and offsets. "
        "Everything comes from the checkpoint (files from before model_settings: normalize/temperature from -c/--set).",
    )
    p.add_argument("out", type=Path, metavar="DIR", help="export directory (created; must not exist or be empty)")
    add_checkpoint_options(p)
    p.add_argument("--force", action="store_true", help="replace DIR if it holds an export already")
    p.add_argument("--no-faiss", action="store_true", help="no FAISS index (same as --set export.index=none)")
    p.add_argument("--json", action="store_true", help="print the manifest as JSON")
    p.set_defaults(handler=_run)


def _run(args: argparse.Namespace, config: Config) -> int:
    from streamtrain.serving.ann import IndexSpec
    from streamtrain.serving.checkpoint_model import choose_checkpoint, load_checkpoint
    from streamtrain.serving.export_format import write_export

    choice = choose_checkpoint(args.checkpoint, config, checkpoint_id=args.checkpoint_id)
    ckpt = load_checkpoint(choice, config)
    manifest = write_export(ckpt, args.out, force=args.force, use_faiss=not args.no_faiss,
                            index=IndexSpec.from_config(config.export))
    if args.json:
        print(json.dumps(manifest, indent=2))
        return 0
    counts, model = manifest["counts"], manifest["model"]
    source = manifest["source"]
    print(f"exported {ckpt.path} ({choice.reason}; step {ckpt.step}) to {args.out}")
    if source["committed"]:
        print(f"  trained on {source['events']:,} events; next offsets {source['offsets']}")
    print(f"  {counts['items']:,} items and {counts['users']:,} users, D={model['dim']}, "
          f"temperature {model['temperature']:g}, normalized {str(model['normalize']).lower()}")
    index = manifest["faiss"]
    if index:
        recall = index["recall_at_20"]
        print(f"  faiss index: {index['file']} ({index['index']}, built in {index['build_seconds']:.1f} s; "
              f"recall@20 vs exact {recall['recall']:.4f} over {recall['queries']:,} users)")
    else:
        print("  faiss index: none")
    return 0
