"""Decode throughput: Kafka message values -> EventBatch, several strategies side by side.

Run:  python3 bench/bench_decode.py [--events 200000] [--repeat 3] [--seed 0]

Builds realistic encoded events (integer and string ids, Zipf-distributed items, mostly
"click" with some weighted "purchase", 10% with a small context), plus a variant where 1% of
messages are bad (broken JSON, tombstones, missing fields, wrong types, unknown versions) and
one where every message has an extra property the schema does not know.
Each strategy decodes the whole set in chunks of 1024 and 8192 messages on one core; the
table shows the best of --repeat interleaved runs, timed by process CPU time (and wall
clock). All strategies must produce the same result; the script checks that before timing.

Strategies:
  msgspec/batch         decode_batch (the consumers' decoder): one typed msgspec parse of the
                        whole batch with a random marker between messages; per-message
                        decode_values for whatever it does not accept outright
  orjson/message+fast   decode_values: orjson.loads per message, inline fast path (the old path)
  orjson/message+spec   orjson.loads per message, normalize_event for every message
  orjson/join+fallback  one orjson.loads of b'[' + b','.join(chunk) + b']', per-message
                        fallback when that fails or the element count differs. NOT safe:
                        a malformed message can merge with its neighbour (see decoder.py)
  json/message+fast     the shipped loop with the stdlib json parser
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import orjson

from streamtrain.events import (
    DecodeResult,
    EventBatch,
    decode_batch,
    decode_values,
    encode_event,
)
from streamtrain.events.batch import object_array
from streamtrain.events.decoder import DEFAULT_MAX_BYTES, _decode
from streamtrain.events.reasons import Rejection, RejectReason
from streamtrain.events.schema import Invalid, normalize_event

Strategy = Callable[[Sequence[bytes | None]], DecodeResult]


def make_events(n: int, rng: np.random.Generator) -> list[bytes]:
    """n valid encoded events shaped like a recommender click stream."""
    users = rng.integers(0, 100_000, size=n)
    items = np.minimum(rng.zipf(1.3, size=n), 2_000_000)
    start = 1_700_000_000.0
    times = start + np.sort(rng.uniform(0, 86_400.0, size=n))
    kinds = rng.random(n)
    out = []
    for k in range(n):
        user: str | int = int(users[k]) if k % 4 else f"u{users[k]:07d}"
        item = int(items[k])
        if kinds[k] < 0.05:
            event_type, weight = "purchase", 5.0
        else:
            event_type, weight = "click", None
        context = None
        if kinds[k] > 0.9:
            context = {
                "device": "ios" if k % 2 else "android",
                "hour": int((times[k] // 3600) % 24),
            }
        out.append(
            encode_event(
                user, item, float(times[k]), event_type=event_type, weight=weight, context=context
            )
        )
    return out


_BAD = [
    b'{"schema_version":1,"user_id":"u1","item_id":',  # truncated
    None,  # tombstone
    b'{"schema_version":1,"item_id":7,"event_time":1.7e9}',  # missing user_id
    b'{"schema_version":1,"user_id":true,"item_id":7,"event_time":1.7e9}',  # wrong type
    b'{"schema_version":2,"user_id":1,"item_id":7,"event_time":1.7e9}',  # unknown version
    b'{"schema_version":1,"user_id":1,"item_id":7,"event_time":1.7e12}',  # milliseconds
    b"\xff\xfe not utf-8",
]


def with_bad(values: list[bytes], fraction: float, rng: np.random.Generator) -> list[bytes | None]:
    """A copy of values where a random `fraction` of positions hold bad messages."""
    out: list[bytes | None] = list(values)
    positions = rng.choice(len(out), size=int(len(out) * fraction), replace=False)
    for j, pos in enumerate(positions):
        out[pos] = _BAD[j % len(_BAD)]
    return out


def decode_spec_only(values: Sequence[bytes | None]) -> DecodeResult:
    """Reference loop: orjson per message, normalize_event for every message (no fast path)."""
    users: list[str] = []
    items: list[str] = []
    times: list[float] = []
    weights: list[float] = []
    types: list[str | None] = []
    contexts: list[Any] = []
    good: list[int] = []
    rejects: list[Rejection] = []
    for i, value in enumerate(values):
        if value is None:
            rejects.append(Rejection(i, RejectReason.NULL_VALUE, "tombstone"))
            continue
        if len(value) > DEFAULT_MAX_BYTES:
            rejects.append(Rejection(i, RejectReason.OVERSIZED, "oversized"))
            continue
        try:
            obj = orjson.loads(value)
        except orjson.JSONDecodeError:
            rejects.append(Rejection(i, RejectReason.NOT_JSON, "not json"))
            continue
        event = normalize_event(obj)
        if isinstance(event, Invalid):
            rejects.append(Rejection(i, event.reason, event.detail))
            continue
        users.append(event.user_id)
        items.append(event.item_id)
        times.append(event.event_time)
        weights.append(event.weight)
        types.append(event.event_type)
        contexts.append(event.context)
        good.append(i)
    has_context = any(c is not None for c in contexts)
    batch = EventBatch(
        user_ids=object_array(users),
        item_ids=object_array(items),
        event_time=np.array(times, dtype=np.float64),
        weight=np.array(weights, dtype=np.float32),
        event_type=object_array(types),
        context=[c or {} for c in contexts] if has_context else None,
    )
    return DecodeResult(batch, np.array(good, dtype=np.int64), rejects)


def decode_join(values: Sequence[bytes | None]) -> DecodeResult:
    """Parse the chunk as one JSON array; fall back to per-message parsing on any failure."""
    try:
        parsed = orjson.loads(b"[" + b",".join(values) + b"]")  # type: ignore[arg-type]
    except (orjson.JSONDecodeError, TypeError):
        parsed = None
    if parsed is not None and len(parsed) != len(values):
        parsed = None
    return _decode(values, DEFAULT_MAX_BYTES, orjson.loads, parsed)


def decode_stdlib(values: Sequence[bytes | None]) -> DecodeResult:
    return _decode(values, DEFAULT_MAX_BYTES, json.loads, None)


STRATEGIES: dict[str, Strategy] = {
    "msgspec/batch": decode_batch,
    "orjson/message+fast": decode_values,
    "orjson/message+spec": decode_spec_only,
    "orjson/join+fallback": decode_join,
    "json/message+fast": decode_stdlib,
}


def run_chunks(strategy: Strategy, values: list[Any], chunk: int) -> tuple[float, float]:
    """(CPU seconds, wall seconds) to decode all values chunk by chunk."""
    cpu, wall = time.process_time(), time.perf_counter()
    for lo in range(0, len(values), chunk):
        strategy(values[lo : lo + chunk])
    return time.process_time() - cpu, time.perf_counter() - wall


def same_result(a: DecodeResult, b: DecodeResult) -> bool:
    """Equal good events and equal reject positions (reason details may differ by strategy)."""
    if not np.array_equal(a.good_index, b.good_index):
        return False
    if [r.index for r in a.rejects] != [r.index for r in b.rejects]:
        return False
    x, y = a.batch, b.batch
    return (
        list(x.user_ids) == list(y.user_ids)
        and list(x.item_ids) == list(y.item_ids)
        and np.array_equal(x.event_time, y.event_time)
        and np.array_equal(x.weight, y.weight)
        and list(x.event_type) == list(y.event_type)
        and x.context == y.context
    )


def measure(events: int, repeat: int, seed: int = 0, chunks: Sequence[int] = (1024, 8192)) -> list[dict[str, Any]]:
    """One row per (dataset, chunk, strategy): CPU-time and wall-clock rates, best of ``repeat``.

    Raises RuntimeError when a strategy's result differs from decode_values (checked before timing)."""
    rng = np.random.default_rng(seed)
    clean = make_events(events, rng)
    # "+unknown": every message carries a property the schema does not know (ignored, but it sends
    # decode_batch down its per-message path: the worst case of the new decoder on good data).
    unknown = [v[:-1] + b',"producer":"svc-a"}' for v in clean]
    datasets: dict[str, list[Any]] = {"clean": clean, "1% bad": with_bad(clean, 0.01, rng), "+unknown": unknown}
    for name, values in datasets.items():
        reference = decode_values(values)
        for label, strategy in STRATEGIES.items():
            if not same_result(reference, strategy(values)):
                raise RuntimeError(f"MISMATCH: {label} disagrees with decode_values on {name}")
    rows = []
    for name, values in datasets.items():
        size = sum(len(v) for v in values if v is not None)
        for chunk in chunks:
            best = {label: (float("inf"), float("inf")) for label in STRATEGIES}
            for _ in range(repeat):
                for label, strategy in STRATEGIES.items():
                    cpu, wall = run_chunks(strategy, values, chunk)
                    best[label] = (min(best[label][0], cpu), min(best[label][1], wall))
            base = best["orjson/message+fast"][0]
            for label, (cpu, wall) in best.items():
                rows.append({
                    "dataset": name, "chunk": chunk, "strategy": label, "events_s": len(values) / cpu,
                    "mb_s": size / cpu / 1e6, "wall_events_s": len(values) / wall, "vs_default": base / cpu,
                    "bytes_per_message": size / len(values),
                })
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    if hasattr(os, "sched_setaffinity"):
        # One core, as the worker's decode step runs on one thread.
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
    print(
        f"machine: processor={platform.processor() or platform.machine()!r} "
        f"cpu_count={os.cpu_count()} python={platform.python_version()} "
        f"orjson={orjson.__version__} numpy={np.__version__}"
    )
    try:
        rows = measure(args.events, args.repeat, args.seed)
    except RuntimeError as exc:
        print(exc, file=sys.stderr)
        return 1
    print()
    print("events/s and MB/s use the process's CPU time (robust on a shared machine);")
    print("wall ev/s uses the wall clock. Best of --repeat, strategies interleaved.")
    header = ("dataset", "chunk", "strategy", "events/s", "MB/s", "wall ev/s", "vs default")
    print("{:<8} {:>6} {:<22} {:>10} {:>7} {:>10} {:>10}".format(*header))
    for r in rows:
        print(
            f"{r['dataset']:<8} {r['chunk']:>6} {r['strategy']:<22} {r['events_s']:>10,.0f} "
            f"{r['mb_s']:>7.1f} {r['wall_events_s']:>10,.0f} {r['vs_default']:>9.2f}x"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
