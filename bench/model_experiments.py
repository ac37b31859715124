"""Model experiments against the co-visitation baseline on the single-pass streams (issue 16).

Runs ``bench/stream_quality.py``'s protocol (one pass, test-then-train, second half, Recall@20) for
each ``--variant`` and the dense co-visitation reference (``bench/covisit_dense.py``) on the same
events, and prints model / covisit and model / best popularity per variant::

    python bench/model_experiments.py --streams movielens --variant "" --variant "model.user_features=id"
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from covisit_dense import stream_covisit  # noqa: E402
from stream_quality import (  # noqa: E402
    REPO, SEQ_SKEW, SEQ_TRANSITION, K, gowalla_stream, movielens_stream, run_variant, synthetic_stream,
)


def load(name: str, args: argparse.Namespace):
    if name == "synthetic-seq":
        return synthetic_stream(SEQ_SKEW, args.synthetic_events, args.seed, SEQ_TRANSITION)
    if name.startswith("synthetic-zipf"):
        return synthetic_stream(float(name.removeprefix("synthetic-zipf")), args.synthetic_events, args.seed)
    if name == "movielens":
        return movielens_stream(args.movielens, args.max_events)
    return gowalla_stream(args.gowalla, args.max_events, args.seed)


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--streams", nargs="+", default=["movielens"])
    p.add_argument("--variant", action="append", default=None)
    p.add_argument("--set", action="append", default=[])
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--synthetic-events", type=int, default=100_000)
    p.add_argument("--max-events", type=int, default=None)
    p.add_argument("--movielens", type=Path, default=REPO.parent / "shared/data/ml-latest-small")
    p.add_argument("--gowalla", type=Path, default=REPO / "data/gowalla")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=None)
    p.add_argument("--device", default="cpu", help="run.device of every variant (cpu, cuda, auto)")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    rows = []
    for name in args.streams:
        stream = load(name, args)
        cache = Path(f"/tmp/covisit-{name}-{args.batch_size}-{args.max_events}-{args.synthetic_events}.json")
        if cache.is_file():
            cov = json.loads(cache.read_text())
        else:
            t = time.perf_counter()
            cov = stream_covisit(stream.users, stream.items, args.batch_size, k=K)
            cov["seconds"] = time.perf_counter() - t
            cache.write_text(json.dumps(cov))
        print(f"# {name}: covisit R@{K} {cov[f'recall@{K}']:.4f} ({cov.get('seconds', 0):.0f} s)"
              + (f", Bayes ceiling {stream.ceiling['oracle']:.4f}" if stream.ceiling else ""), flush=True)
        for v in args.variant or [""]:
            r = run_variant(stream, args.batch_size, [*args.set, *v.split()], args.seed, args.device)
            pop = max(r["popular_all"][f"recall@{K}"], r["popular_recent"][f"recall@{K}"])
            m = r["model"][f"recall@{K}"]
            row = {"stream": name, "variant": v or "(defaults)", "model": m, "pop": pop, "covisit": cov[f"recall@{K}"],
                   "x_covisit": m / cov[f"recall@{K}"], "x_pop": m / pop, "step_ms": r["step_ms"],
                   "events_per_s": args.batch_size / (r["step_ms"] / 1e3)}
            rows.append(row)
            print(f"{name:12s} {row['variant']:60s} R@20 {m:.4f}  x_cov {row['x_covisit']:.2f}  x_pop {row['x_pop']:.2f}"
                  f"  step {r['step_ms']:.1f} ms", flush=True)
    if args.out:
        args.out.write_text(json.dumps(rows, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
