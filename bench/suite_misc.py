"""``decode``, ``checkpoint``, ``replay`` and ``vocab`` suites of ``bench/run``: thin table wrappers
over the measure() functions of bench_decode.py, bench_checkpoint.py, bench_replay.py and
bench_vocabulary.py."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from report import Table, fmt_rate, fmt_ratio

from streamtrain.data.gowalla import gowalla_file

__all__ = ["decode_tables", "checkpoint_tables", "replay_tables", "vocab_tables", "one_core"]

GOWALLA = Path(os.environ.get("STREAMTRAIN_BENCH_GOWALLA", gowalla_file(None, "train")))


@contextlib.contextmanager
def one_core() -> Iterator[None]:
    """Pin this process to one core for the block (decode and ingest numbers are per core)."""
    if not hasattr(os, "sched_setaffinity"):
        yield
        return
    saved = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {min(saved)})
    try:
        yield
    finally:
        os.sched_setaffinity(0, saved)


def decode_tables(opts: Any) -> list[Table]:
    from bench_decode import measure

    with one_core():
        rows = measure(opts.decode_events, opts.decode_repeat)
    table = Table(
        f"decode: message values -> EventBatch, one core ({opts.decode_events:,} messages, best of "
        f"{opts.decode_repeat})",
        ["dataset", "chunk", "strategy", "events/s (CPU)", "MB/s", "events/s (wall)", "x old"],
    )
    for r in rows:
        table.add(r["dataset"], r["chunk"], r["strategy"], fmt_rate(r["events_s"]), f"{r['mb_s']:.1f}",
                  fmt_rate(r["wall_events_s"]), fmt_ratio(r["vs_default"]))
    table.notes.append(f"mean {rows[0]['bytes_per_message']:.0f} B/message; every strategy's output checked equal "
                       "to decode_values before timing; x old = against orjson/message+fast (decode_values, the "
                       "decoder before decode_batch); join+fallback is unsafe (see bench_decode.py)")
    return [table]


def checkpoint_tables(opts: Any) -> list[Table]:
    from bench_checkpoint import measure

    cap = opts.checkpoint_capacity
    result = measure(cap, opts.dim, steps=5, repeats=opts.checkpoint_repeats)
    table = Table(
        f"checkpoint: {cap:,} users x {cap:,} items x {opts.dim} dims, {result['optimizer']}, file {result['size_mb']:,.0f} MB",
        ["repeat", "pause s", "commit s"],
    )
    for i, (pause, commit) in enumerate(result["rows"], 1):
        table.add(i, f"{pause:.3f}", f"{commit:.3f}")
    table.notes.append(f"trainer build {result['build_s']:.2f} s; resume (build {result['rebuild_s']:.2f} s + load) "
                       f"{result['resume_s']:.2f} s; repeat 1 allocates the snapshot buffers")
    return [table]


def replay_tables(opts: Any) -> list[Table]:
    from bench_replay import NEW_DEFAULT, OLD_DEFAULT, measure

    from streamtrain.localstack import StackAddresses

    result = measure(opts.replay_events, opts.replay_repeat, 3, GOWALLA, StackAddresses.from_env().kafka_bootstrap)
    table = Table(
        f"replay: Gowalla events produced to the local broker ({result['events']:,} events, 3 partitions, "
        f"best of {opts.replay_repeat}); old = kafka-python per event, new = librdkafka per chunk",
        ["path", "events/s", "CPU us/event", "x old default"],
    )
    old = result["rows"][OLD_DEFAULT][0]
    for name, (rate, cpu) in result["rows"].items():
        table.add(name, fmt_rate(rate), f"{cpu:.1f}", fmt_ratio(rate / old))
    table.notes.append(f"CPU us/event: this process (sending thread + client I/O threads), not the broker's; "
                       f"'gz file -> topic' is the whole run on all {result['input_events']:,} events of the file "
                       f"(read + shuffle + produce; reading alone took {result['read_s']:.1f} s); "
                       f"{NEW_DEFAULT} is what streamtrain replay and the demo use")
    return [table]


def vocab_tables(opts: Any) -> list[Table]:
    from bench_vocabulary import LEGACY_COMMIT, measure

    n = opts.vocab_ids
    old, new = measure(n, [4096, 16384], opts.vocab_seconds)
    table = Table(
        f"vocab: id vocabulary filled with {n:,} ids, one core each (old = OrderedDict of strings at "
        f"{LEGACY_COMMIT}, new = vectorised keys)",
        ["measure", "B", "old", "new", "new/old"],
    )
    table.add("fill (admissions/s)", 100_000, fmt_rate(old["fill_ids_s"]), fmt_rate(new["fill_ids_s"]),
              fmt_ratio(new["fill_ids_s"] / old["fill_ids_s"]))
    for o, c in zip(old["cells"], new["cells"]):
        b = c["batch"]
        table.add("string id lookups/s", b, fmt_rate(o["id_lookups_s"]), fmt_rate(c["id_lookups_s"]),
                  fmt_ratio(c["id_lookups_s"] / o["id_lookups_s"]))
        table.add("key lookups/s (keys from the source)", b, "-", fmt_rate(c["key_lookups_s"]),
                  fmt_ratio(c["key_lookups_s"] / o["id_lookups_s"]))
        table.add("hash ids -> keys/s", b, "-", fmt_rate(c["hash_ids_s"]), "-")
    table.add("bytes per id (RSS)", "-", f"{old['bytes_per_id']:.0f}", f"{new['bytes_per_id']:.0f}",
              fmt_ratio(new["bytes_per_id"] / old["bytes_per_id"]))
    table.notes.append(f"new vocabulary's own arrays: {new['accounted_bytes_per_id']:.0f} B/id; lookups with "
                       "admit=True and event times, ids uniform over all N (cache-unfriendly); target >= 5M key "
                       "lookups/s per core at 10M ids")
    return [table]
