"""``streamtrain export``: a checkpoint → the serving format of :mod:`streamtrain.serving.export_format`."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from streamtrain.config import Config

__all__ = ["register"]


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "export",
        help="write a checkpoint's item/user embeddings, ids, user tower and manifest for serving",
        description="Export a checkpoint to DIR: item_embeddings.npy + item_ids.json, user_embeddings.npy + "
        "user_ids.json, user_fallback.npy, user_tower.pt + user_rows.npy, manifest.json, and items.faiss "
        "(IndexFlatIP) when faiss is importable. Format: the docstring of streamtrain/serving/export_format.py. "
        "everything comes from the checkpoint (files from before model_settings: normalize/temperature from -c/--set).",
    )
    p.add_argument("out", type=Path, metavar="DIR", help="export directory (created; must not exist or be empty)")
    p.add_argument("--checkpoint", type=Path, default=None, metavar="PATH",
                   help="a ckpt-<id>.pt file, or a run directory (newest file); default <checkpoint.dir>/<run.name>")
    p.add_argument("--force", action="store_true", help="replace DIR if it holds an export already")
    p.add_argument("--no-faiss", action="store_true", help="skip the FAISS index even when faiss is importable")
    p.add_argument("--json", action="store_true", help="print the manifest as JSON")
    p.set_defaults(handler=_run)


def _run(args: argparse.Namespace, config: Config) -> int:
    from streamtrain.serving.checkpoint_model import load_checkpoint, resolve_checkpoint
    from streamtrain.serving.export_format import write_export

    ckpt = load_checkpoint(resolve_checkpoint(args.checkpoint, config), config)
    manifest = write_export(ckpt, args.out, force=args.force, use_faiss=not args.no_faiss)
    if args.json:
        print(json.dumps(manifest, indent=2))
        return 0
    counts, model = manifest["counts"], manifest["model"]
    print(f"exported {ckpt.path} (step {ckpt.step}) to {args.out}")
    print(f"  {counts['items']:,} items and {counts['users']:,} users, D={model['dim']}, "
          f"temperature {model['temperature']:g}, normalized {str(model['normalize']).lower()}")
    print(f"  faiss index: {manifest['faiss']['file'] if manifest['faiss'] else 'none (faiss not importable)'}")
    return 0
