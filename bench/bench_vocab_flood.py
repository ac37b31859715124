"""A flood of new ids into a vocabulary, then normal traffic: resident memory and who gets rows.

    PYTHONPATH=$PWD python bench/bench_vocab_flood.py                     # prints a table
    PYTHONPATH=$PWD python bench/bench_vocab_flood.py --flood 1000000 --capacity 100000

A bot sends ``--flood`` events, each with a new id (1M by default), into a table of ``--capacity`` rows;
then ``--normal`` events of ``--regulars`` new regular ids (each seen many times) follow. Each setting runs
in its own child process so resident memory is clean: RSS before the flood, the highest RSS during it
(sampled after each batch), and after the normal traffic. Settings, side by side:

- ``lru`` (the default, ``model.eviction_after_s=0``): at capacity the least recently seen row is reused;
- ``lru+admit2 sketch`` / ``exact``: the same, with ``model.admission_threshold=2`` (one-off ids get no row),
  sightings counted in the count-min sketch (the default counter) or exactly per id;
- ``frozen`` (``eviction_after_s=None``, the old default): a full table keeps its ids for good.

``fallback share`` is the share of the regulars' sightings after their first that found no row (the
first sighting of a new id can miss by design with a threshold of 2).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

import numpy as np

SETTINGS = {"lru": (1, 0.0, None), "lru+admit2 sketch": (2, 0.0, "sketch"), "lru+admit2 exact": (2, 0.0, "exact"),
            "frozen": (1, None, None)}
BATCH = 1024


def _rss_bytes() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def measure(setting: str, flood: int, capacity: int, normal: int, regulars: int) -> dict[str, float | str]:
    from streamtrain.vocab.vocabulary import IdVocabulary

    threshold, ttl, counter = SETTINGS[setting]
    sketch = 2 * capacity if counter == "sketch" else None
    vocab = IdVocabulary(capacity, admission_threshold=threshold, eviction_after_s=ttl, admission_sketch_width=sketch)
    before, peak, t, started = _rss_bytes(), 0, 0.0, time.perf_counter()
    for start in range(0, flood, BATCH):
        ids = np.arange(start, min(flood, start + BATCH)).astype(str)
        vocab.lookup(ids, event_time=np.full(len(ids), t))
        t += 0.01
        if (start // BATCH) % 16 == 0:
            peak = max(peak, _rss_bytes())
    flood_s = time.perf_counter() - started
    flood_admitted = vocab.stats()["admissions_total"]
    peak = max(peak, _rss_bytes())
    rng = np.random.default_rng(0)
    seen: set[int] = set()
    misses = later = 0
    for start in range(0, normal, BATCH):
        picks = rng.integers(0, regulars, size=min(BATCH, normal - start))
        rows = vocab.lookup(np.char.add("regular-", picks.astype(str)), event_time=np.full(len(picks), t)).rows
        t += 0.01
        for pick, row in zip(picks.tolist(), rows.tolist(), strict=True):
            if pick in seen:
                later += 1
                misses += row == 0
            seen.add(pick)
    after = _rss_bytes()
    s = vocab.stats()
    return {"setting": setting, "rss_before_mb": before / 2**20, "rss_peak_flood_mb": peak / 2**20,
            "rss_after_mb": after / 2**20, "vocab_mb": vocab.memory_bytes() / 2**20, "flood_s": flood_s,
            "evictions": s["evictions_total"], "flood_admitted": flood_admitted / flood,
            "fallback_share": misses / max(later, 1), "regulars_with_row": sum(f"regular-{i}" in vocab for i in range(regulars)) / regulars}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--flood", type=int, default=1_000_000)
    parser.add_argument("--capacity", type=int, default=100_000)
    parser.add_argument("--normal", type=int, default=200_000)
    parser.add_argument("--regulars", type=int, default=5_000)
    parser.add_argument("--child", choices=sorted(SETTINGS))  # internal: one setting in this process
    args = parser.parse_args()
    sizes = (args.flood, args.capacity, args.normal, args.regulars)
    if args.child:
        print(json.dumps(measure(args.child, *sizes)))
        return
    rows = []
    for setting in SETTINGS:
        out = subprocess.run([sys.executable, __file__, "--child", setting, "--flood", str(args.flood), "--capacity",
                              str(args.capacity), "--normal", str(args.normal), "--regulars", str(args.regulars)],
                             capture_output=True, text=True, check=True)
        rows.append(json.loads(out.stdout))
        if args.child is None:
            print(json.dumps(rows[-1]), file=sys.stderr)
    print(f"flood {args.flood:,} new ids into {args.capacity:,} rows, then {args.normal:,} events of "
          f"{args.regulars:,} new regular ids")
    header = ("setting", "RSS before MB", "peak in flood MB", "after MB", "vocab MB", "flood s", "evictions",
              "flood ids admitted", "fallback share", "regulars with row")
    print(" | ".join(header))
    for r in rows:
        print(" | ".join([str(r["setting"]), f"{r['rss_before_mb']:.0f}", f"{r['rss_peak_flood_mb']:.0f}",
                          f"{r['rss_after_mb']:.0f}", f"{r['vocab_mb']:.1f}", f"{r['flood_s']:.1f}",
                          f"{r['evictions']:,}", f"{r['flood_admitted']:.3f}", f"{r['fallback_share']:.3f}",
                          f"{r['regulars_with_row']:.3f}"]))


if __name__ == "__main__":
    main()
