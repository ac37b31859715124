"""Single-pass streaming quality: does the model beat counting on a time-ordered stream?

Protocol (issue 9): each stream is cut into micro-batches in its order and seen once; every batch is
scored before the model trains on it (test-then-train, ``progressive_eval_fraction=1``, every event
of the batch a query), and so are the two popularity baselines of ``streamtrain.evaluation.popularity``
on the same positives ("most popular so far", "most popular recently") and the item-to-item
co-visitation baseline of ``streamtrain.evaluation.covisit`` (H and decay the model's; M =
``--covisit-neighbours``, 1000 by default: exact on these catalogues; run once per stream and reused by
the variants with the same H, decay, M and exclusion). The table
reports the second half of the stream (rolling windows reset at the midpoint, window = the whole
half): the model's Recall@20 and NDCG@20, each baseline's, model / best popularity baseline (>= 1.5
is the target) and model / covisit (>= 1.1 is issue 16's target); "covisit ms" is the baseline's
host time per evaluated step (scoring and counting), beside the model's step.

Streams: the synthetic stream (``streamtrain.data.synthetic``) at two Zipf skews; MovieLens
ml-latest-small ``ratings.csv`` in timestamp order, read in place (``--movielens``; research-only
licence, never copied into the repo); Gowalla ``train.txt`` as a seeded shuffle (``--gowalla``).
A missing dataset is skipped with a message.

Variants are config overrides, one ``--variant`` per variant, each a space-separated list of
``--set``-style ``section.key=value`` (default: the samplers inbatch_logq, xir, inbatch)::

    python bench/stream_quality.py --quick                     # < 1 minute, prints only
    python bench/stream_quality.py                             # writes bench/results/stream-quality.json
    python bench/stream_quality.py --variant "sampler.name=xir model.user_tower=history" --set model.normalize=false
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/report.py when run as a script

from report import Table, machine_info, machine_line, render  # noqa: E402

from streamtrain.config import load_config  # noqa: E402
from streamtrain.data.gowalla import DEFAULT_GOWALLA_DIR, read_user_items  # noqa: E402
from streamtrain.data.synthetic import SyntheticSpec, generate_stream, oracle_recall, stream_stats  # noqa: E402
from streamtrain.events.batch import EventBatch, object_array  # noqa: E402
from streamtrain.evaluation.covisit import COVISIT  # noqa: E402
from streamtrain.evaluation.popularity import BASELINES  # noqa: E402
from streamtrain.replay import read_log  # noqa: E402
from streamtrain.replay.records import FieldMap  # noqa: E402
from streamtrain.training.trainer import Trainer  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
DEFAULT_VARIANTS = ["sampler.name=inbatch_logq", "sampler.name=xir", "sampler.name=inbatch"]
ALL_STREAMS = ["synthetic-zipf0.8", "synthetic-zipf1.2", "synthetic-seq", "movielens", "gowalla"]
# The sequential synthetic stream (issue 16): Zipf 0.8 plus ground-truth item-to-item transitions.
SEQ_SKEW, SEQ_TRANSITION = 0.8, 5.0
DEFAULT_OUT = REPO / "bench/results/stream-quality.json"
K = 20
# Neighbours per item row for the covisit column: enough to be exact on these catalogues (ml-latest-small:
# M 200 gives Recall@20 0.1001, M 1000 0.1071 = issue 16's number; the worker's default is 200).
COVISIT_NEIGHBOURS = 1000


@dataclasses.dataclass
class Stream:
    """A time-ordered event stream: ids as str columns, plus what it is."""

    name: str
    users: np.ndarray  # (n,) object str
    items: np.ndarray  # (n,) object str
    times: np.ndarray  # (n,) float64
    note: str
    # Synthetic streams only: Recall@20 over the second half of the Bayes-optimal ranking (the
    # generator's true logits) and of true popularity (data.synthetic.oracle_recall).
    ceiling: dict[str, float] | None = None

    def batches(self, batch_size: int) -> list[EventBatch]:
        # A last batch of one event is dropped: in-batch negatives need two.
        return [EventBatch.from_ids(self.users[i : i + batch_size], self.items[i : i + batch_size],
                                    self.times[i : i + batch_size])
                for i in range(0, len(self.users) - 1, batch_size)]


def _str_ids(values: Sequence[Any] | np.ndarray) -> np.ndarray:
    return object_array(np.asarray(values).astype(str).tolist())


# --------------------------------------------------------------------------- the streams
def synthetic_stream(skew: float, events: int, seed: int, transition: float = 0.0) -> Stream:
    spec = SyntheticSpec(num_events=events, zipf_skew=skew, seed=seed, transition_strength=transition)
    s = generate_stream(spec)
    name = f"synthetic-zipf{skew:g}" if not transition else "synthetic-seq"
    seq = f", Zipf {skew:g}, {spec.transition_fanout} successors per item at +{transition:g}" if transition else ""
    return Stream(name, _str_ids(s.users), _str_ids(s.items), s.times,
                  f"{spec.num_users} users, {spec.num_items} items, sessions of ~{spec.session_events:g}, drift {spec.drift}{seq}",
                  ceiling=oracle_recall(s, K, start=len(s) // 2))


def movielens_stream(root: Path, events: int | None) -> Stream | None:
    path = root / "ratings.csv"
    if not path.is_file():
        print(f"# movielens: {path} not found, skipped (pass --movielens DIR)", flush=True)
        return None
    fields = FieldMap({"user_id": "userId", "item_id": "movieId", "event_time": "timestamp"})
    log, report = read_log([path], fields=fields)
    order = log.order("time", seed=0)[:events]  # stable: ties keep file order
    users, items = np.asarray(log.users, dtype=object), np.asarray(log.items, dtype=object)
    times = np.frombuffer(log.times, dtype=np.float64)
    return Stream("movielens", users[order], items[order], times[order], f"{path}, timestamp order, {report.bad_total} bad rows")


def gowalla_stream(root: Path, events: int | None, seed: int) -> Stream | None:
    path = root / "train.txt"
    if not path.is_file():
        print(f"# gowalla: {path} not found, skipped (pass --gowalla DIR)", flush=True)
        return None
    users, items = read_user_items(path)
    order = np.random.default_rng(seed).permutation(len(users))[:events]
    return Stream("gowalla", _str_ids(users[order]), _str_ids(items[order]), np.arange(len(order), dtype=np.float64),
                  f"{path}, seeded shuffle")


# --------------------------------------------------------------------------- one run
def run_variant(
    stream: Stream, batch_size: int, overrides: Sequence[str], seed: int, device: str,
    covisit_cache: dict[tuple[Any, ...], dict[str, Any]] | None = None, covisit_neighbours: int = COVISIT_NEIGHBOURS,
) -> dict[str, Any]:
    """One single pass of ``stream`` with the config ``overrides``; second-half progressive metrics.

    ``covisit_cache``: the covisit baseline does not depend on the model, so a variant whose
    baseline settings were run already reuses that result and runs without it (faster)."""
    batches = stream.batches(batch_size)
    half = len(batches) // 2
    base = [
        f"run.seed={seed}", f"run.device={device}",
        f"model.user_capacity={len(set(stream.users.tolist())) + 1}",  # + the fallback row
        f"model.item_capacity={len(set(stream.items.tolist())) + 1}",
        f"trainer.batch_size={batch_size}", "trainer.progressive_eval_fraction=1.0",
        f"trainer.progressive_eval_max_queries={batch_size}",
        f"trainer.progressive_eval_window={max(1, len(batches) - half)}",
        f"trainer.covisit_neighbours={covisit_neighbours}",
    ]
    config = load_config(overrides=[*base, *overrides], environ={})
    mc, tc = config.model, config.trainer
    key = (mc.history_length, mc.history_decay, tc.covisit_neighbours, tc.exclude_history_items)
    cached = None if covisit_cache is None else covisit_cache.get(key)
    if cached is not None:
        config = load_config(overrides=[*base, *overrides, "trainer.covisit_neighbours=0"], environ={})
    trainer = Trainer(config)
    covisit_s = _time_covisit(trainer)
    step_s: list[float] = []
    losses: list[float] = []
    started = time.perf_counter()
    for i, batch in enumerate(batches):
        if i == half:  # from here on, the rolling windows average the second half exactly
            trainer.state.progressive.load_state_dict({"history": []})
            trainer.state.popularity.reset_rolling()
            if trainer.state.covisit is not None:
                trainer.state.covisit.reset_rolling()
        stats = trainer.train_step(batch)
        step_s.append(stats.duration_s)
        losses.append(stats.loss)
    rankers = {"model": trainer.state.progressive.averages(), **trainer.state.popularity.averages()}
    nan = {f"recall@{K}": math.nan, f"ndcg@{K}": math.nan}
    rankers[COVISIT] = (cached or {}).get("averages", nan) if trainer.state.covisit is None else trainer.state.covisit.averages()
    if cached is not None:
        covisit_s = cached["seconds"]
    elif covisit_cache is not None and trainer.state.covisit is not None:
        covisit_cache[key] = {"averages": rankers[COVISIT], "seconds": covisit_s}
    best = max(rankers[name][f"recall@{K}"] for name in BASELINES)
    covisit = rankers[COVISIT][f"recall@{K}"]
    return {
        "variant": " ".join(overrides) or "(defaults)",
        "overrides": list(overrides),
        "steps": len(batches),
        **{name: {f"recall@{K}": v[f"recall@{K}"], f"ndcg@{K}": v[f"ndcg@{K}"]} for name, v in rankers.items()},
        "model_over_best_baseline": rankers["model"][f"recall@{K}"] / best if best > 0 else math.nan,
        "model_over_covisit": rankers["model"][f"recall@{K}"] / covisit if covisit > 0 else math.nan,
        "step_ms": 1e3 * statistics.median(step_s) if step_s else math.nan,
        # The step's duration_s includes the baseline's host work (it runs inside submit_step).
        "covisit_ms": 1e3 * statistics.median(covisit_s) if covisit_s else math.nan,
        "train_s": time.perf_counter() - started,
        "final_loss": float(np.mean(losses[-20:])) if losses else math.nan,
    }


def _time_covisit(trainer: Trainer) -> list[float]:
    """Wrap the trainer's covisit baseline so each evaluated step's host time (score + count) is recorded."""
    times: list[float] = []
    cv = trainer.state.covisit
    if cv is None:
        return times
    step = cv.step

    def timed(*args: Any) -> Any:
        start = time.perf_counter()
        out = step(*args)
        if out is not None:
            times.append(time.perf_counter() - start)
        return out

    cv.step = timed  # type: ignore[method-assign]
    return times


def _table(name: str, stream: Stream, stats: dict[str, float], rows: list[dict[str, Any]], batch_size: int) -> Table:
    table = Table(
        f"{name}: single pass, test-then-train, second half, B = {batch_size}",
        ["variant", f"model R@{K}", f"model N@{K}", f"pop all R@{K}", f"pop recent R@{K}", f"pop all N@{K}",
         f"pop recent N@{K}", f"covisit R@{K}", f"covisit N@{K}", "model / best pop", "model / covisit", "step ms",
         "covisit ms"],
    )
    for r in rows:
        table.add(r["variant"], f"{r['model'][f'recall@{K}']:.4f}", f"{r['model'][f'ndcg@{K}']:.4f}",
                  f"{r['popular_all'][f'recall@{K}']:.4f}", f"{r['popular_recent'][f'recall@{K}']:.4f}",
                  f"{r['popular_all'][f'ndcg@{K}']:.4f}", f"{r['popular_recent'][f'ndcg@{K}']:.4f}",
                  f"{r[COVISIT][f'recall@{K}']:.4f}", f"{r[COVISIT][f'ndcg@{K}']:.4f}",
                  f"{r['model_over_best_baseline']:.2f}x", f"{r['model_over_covisit']:.2f}x", f"{r['step_ms']:.1f}",
                  f"{r['covisit_ms']:.1f}")
    table.notes.append(
        f"{stream.note}; {stats['events']:.0f} events, {stats['users']:.0f} users, {stats['items']:.0f} items; "
        f"a user's share of events in their first micro-batch {stats['first_batch_share']:.2f}, "
        f"median micro-batches per user {stats['median_batches_per_user']:.0f}, "
        f"top 1% items hold {stats['top1pct_item_share']:.2f} of events"
    )
    if stream.ceiling:
        c = stream.ceiling
        table.notes.append(
            f"ceiling from the generator's ground truth (second half): Bayes-optimal ranking R@{K} "
            f"{c['oracle']:.4f}, true popularity R@{K} {c['true_popularity']:.4f}; so no model exceeds "
            f"{c['oracle'] / max(r['popular_recent'][f'recall@{K}'] for r in rows):.2f}x the recent-popularity baseline here"
        )
    return table


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--streams", nargs="+", default=ALL_STREAMS, choices=ALL_STREAMS)
    parser.add_argument("--variant", action="append", dest="variants", metavar="'KEY=VALUE [KEY=VALUE ...]'",
                        help=f"config overrides of one variant (repeat; default: {' | '.join(DEFAULT_VARIANTS)})")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override for every variant")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--synthetic-events", type=int, default=100_000)
    parser.add_argument("--max-events", type=int, default=None, help="cut MovieLens and Gowalla to this many events")
    parser.add_argument("--movielens", type=Path, default=REPO.parent / "shared/data/ml-latest-small")
    default_gowalla = REPO / "data/gowalla" if (REPO / "data/gowalla/train.txt").is_file() else DEFAULT_GOWALLA_DIR
    parser.add_argument("--gowalla", type=Path, default=default_gowalla)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--covisit-neighbours", type=int, default=COVISIT_NEIGHBOURS,
                        help="trainer.covisit_neighbours of the covisit column (run once per stream and reused)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="smoke run (< 1 minute): 8k events per stream; writes no JSON unless --out")
    parser.add_argument("--out", type=Path, default=None, help=f"JSON results (default {DEFAULT_OUT.relative_to(REPO)})")
    args = parser.parse_args(argv)
    variants = [v.split() for v in (args.variants or DEFAULT_VARIANTS)]
    if args.quick:
        args.synthetic_events = min(args.synthetic_events, 8_000)
        args.max_events = min(args.max_events or 8_000, 8_000)
    out = args.out or (None if args.quick else DEFAULT_OUT)

    info = machine_info()
    print(f"# {machine_line(info)}; torch {info['torch']}, {info['torch threads']} threads, commit {info['commit']}", flush=True)
    results: dict[str, Any] = {"machine": info, "args": {k: str(v) for k, v in vars(args).items()}, "k": K, "streams": {}}
    tables = []
    for name in args.streams:
        if name == "synthetic-seq":
            stream: Stream | None = synthetic_stream(SEQ_SKEW, args.synthetic_events, args.seed, SEQ_TRANSITION)
        elif name.startswith("synthetic-zipf"):
            stream = synthetic_stream(float(name.removeprefix("synthetic-zipf")), args.synthetic_events, args.seed)
        elif name == "movielens":
            stream = movielens_stream(args.movielens, args.max_events)
        else:
            stream = gowalla_stream(args.gowalla, args.max_events, args.seed)
        if stream is None:
            continue
        stats = stream_stats(stream.users, stream.items, args.batch_size)
        rows = []
        covisit_cache: dict[tuple[Any, ...], dict[str, Any]] = {}
        for overrides in variants:
            row = run_variant(stream, args.batch_size, [*args.set, *overrides], args.seed, args.device, covisit_cache,
                              args.covisit_neighbours)
            rows.append(row)
            print(f"# {name} [{row['variant']}]: model R@{K} {row['model'][f'recall@{K}']:.4f}, popular all "
                  f"{row['popular_all'][f'recall@{K}']:.4f} / recent {row['popular_recent'][f'recall@{K}']:.4f}, "
                  f"covisit {row[COVISIT][f'recall@{K}']:.4f} "
                  f"({row['train_s']:.0f} s)", flush=True)
        results["streams"][name] = {"note": stream.note, "stats": stats, "rows": rows, "ceiling": stream.ceiling}
        tables.append(_table(name, stream, stats, rows, args.batch_size))
        if out:  # after every stream, so a run cut short keeps what it finished
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(json.dumps(results, indent=2) + "\n")
    print()
    for table in tables:
        print(render(table))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
