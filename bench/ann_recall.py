"""Recall@20 of the export's FAISS HNSW index against exact search, on a real export.

    python bench/ann_recall.py runs/<run>/export [--queries 2000] [--ef 32 64 128 256]

Queries are the export's own user embeddings (a seeded sample), the candidates its item embeddings;
exact search is numpy (``users @ items.T``). For each efSearch it prints recall@20, the HNSW and the
exact per-query latency on this machine, and the build time of the index with the export's M and
efConstruction (``export.hnsw_*``). A published folder (``<export.dir>/<run>``) is followed to ``latest``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from streamtrain.serving.ann import IndexSpec, build_index, recall_against_exact  # noqa: E402
from streamtrain.serving.export_format import read_export  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("export", type=Path)
    parser.add_argument("--queries", type=int, default=2000)
    parser.add_argument("--ef", type=int, nargs="+", default=[32, 64, 128, 256])
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    export = read_export(args.export, load_faiss=False)
    items = np.ascontiguousarray(export.item_embeddings, dtype=np.float32)
    users = np.asarray(export.user_embeddings, dtype=np.float32)
    rng = np.random.default_rng(args.seed)
    queries = users[rng.permutation(len(users))[: args.queries]]
    params = (export.manifest.get("faiss") or {}).get("params") or {}
    spec = IndexSpec("hnsw", params.get("M", 32), params.get("efConstruction", 80), 128)
    started = time.perf_counter()
    index, _ = build_index(items, spec)
    build_s = time.perf_counter() - started
    print(f"# export {export.path}: {len(items):,} items, {len(users):,} users, D={items.shape[1]}; "
          f"HNSW M={spec.m}, efConstruction={spec.ef_construction}, built in {build_s:.2f} s; "
          f"{len(queries):,} user queries")
    print("| efSearch | recall@20 vs exact | HNSW ms/query | exact (numpy) ms/query |")
    print("|---:|---:|---:|---:|")
    for ef in args.ef:
        index.hnsw.efSearch = ef
        r = recall_against_exact(index, items, queries, 20)
        print(f"| {ef} | {r['recall']:.4f} | {r['index_ms_per_query']:.3f} | {r['exact_ms_per_query']:.3f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
