"""``streamtrain replay``: produce historical interaction logs to the input topic.

Reads JSONL, CSV, Parquet, MovieLens and Gowalla files (see :mod:`streamtrain.replay.readers`),
orders them by event time (or a seeded shuffle when there are no times), and sends them keyed
by user id, as fast as possible, at ``--rate`` events/s or at ``--speedup`` × event time.
Progress goes to stderr, the summary to stdout. Exit status: 0 done, 1 delivery failures or
a producer error, 130 stopped by Ctrl-C/SIGTERM (the summary names the ``--start-at`` to resume).
"""

from __future__ import annotations

import argparse
import json
import math
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any, TextIO

from streamtrain.commands.arg_types import non_negative_int, positive
from streamtrain.config import Config
from streamtrain.replay import (
    COMPRESSIONS,
    FORMATS,
    TIME_UNITS,
    BatchSink,
    DeliveryFailure,
    Order,
    Pacer,
    ProduceError,
    ProducerSettings,
    ProduceStats,
    Progress,
    RatePacer,
    ReadOptions,
    ReadReport,
    SpeedupPacer,
    kafka_producer,
    parse_field_map,
    produce_chunks,
    read_log,
)
from streamtrain.replay.encoding import Encoded

__all__ = ["register"]

EXIT_STOPPED = 130
_DESCRIPTION = (
    "Produce historical interaction logs to the input topic, keyed by user id. Formats: JSONL, CSV/TSV, "
    "Parquet (needs pyarrow), MovieLens user::item::rating::timestamp, Gowalla 'user item item ...'. Events "
    "are sent in event-time order, or in a seeded shuffle with synthesised times when the input has none. "
    "Bad lines are counted and shown in the summary, never fatal. Progress goes to stderr, the summary to "
    "stdout. Exit status: 0 done, 1 delivery failures or a producer error, 130 stopped by Ctrl-C/SIGTERM "
    "(the summary prints the --start-at that resumes)."
)


class _DefaultsHelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows ``(default: X)`` only where it says something: not for None (the help text names what
    None stands for, e.g. ``run.seed``), flags, or help that already states its default."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if action.default is None or isinstance(action.default, bool) or "default" in text:
            return text
        return super()._get_help_string(action) or text


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "replay",
        help="produce historical interaction logs (JSONL, CSV, Parquet, MovieLens, Gowalla) to Kafka",
        description=_DESCRIPTION,
        formatter_class=_DefaultsHelpFormatter,
    )
    p.add_argument("paths", nargs="+", type=Path, metavar="FILE", help="input files, read in this order")
    inp = p.add_argument_group("input")
    inp.add_argument("--format", choices=("auto", *FORMATS), default="auto",
                     help="auto: by extension (.jsonl .csv .tsv .parquet .dat .data), else by the first line "
                          "(tab-separated 4 fields: movielens, e.g. MovieLens 100k u.data)")
    inp.add_argument("--map", action="append", default=[], metavar="FIELD=SOURCE[,...]",
                     help="event field <- source field, e.g. user_id=uid,item_id=movie,event_time=ts,weight=rating")
    inp.add_argument("--delimiter", help="CSV delimiter (default: tab for .tsv, comma otherwise)")
    inp.add_argument("--time-unit", choices=tuple(TIME_UNITS), default="s", help="unit of numeric event times")
    order = p.add_argument_group("order")
    order.add_argument("--order", choices=("auto", "time", "shuffle", "file"), default="auto",
                       help="auto: by event time, or a seeded shuffle when the input has no times")
    order.add_argument("--seed", type=int, default=None, help="shuffle seed (default: run.seed)")
    order.add_argument("--time-origin", type=float, default=None,
                       help="first synthesised time, s since the epoch (default: now - events x step; "
                            "pass the value from the summary when resuming)")
    order.add_argument("--time-step", type=positive, default=1.0, help="seconds between synthesised times")
    order.add_argument("--start-at", type=non_negative_int, default=0, metavar="N",
                       help="skip the first N events of the ordered stream")
    order.add_argument("--limit", type=non_negative_int, default=None, metavar="N", help="send at most N events")
    pace = p.add_argument_group("pace (default: as fast as possible)").add_mutually_exclusive_group()
    pace.add_argument("--rate", type=positive, metavar="EVENTS_PER_S", help="a fixed send rate")
    pace.add_argument("--speedup", type=positive, metavar="FACTOR", help="event time compressed by FACTOR")
    out = p.add_argument_group("output")
    out.add_argument("--topic", help="destination topic (default: kafka.topic)")
    out.add_argument("--bootstrap-servers", metavar="HOST:PORT[,...]", help="default: kafka.bootstrap_servers")
    out.add_argument("--linger-ms", type=non_negative_int, default=ProducerSettings.linger_ms,
                     help="producer linger.ms")
    out.add_argument("--batch-bytes", type=non_negative_int, default=ProducerSettings.batch_bytes,
                     help="producer batch.size (bytes per partition batch)")
    out.add_argument("--compression", choices=COMPRESSIONS, default=ProducerSettings.compression,
                     help="producer compression.type")
    out.add_argument("--dry-run", action="store_true", help="read, order and encode, but send nothing")
    out.add_argument("--progress", choices=("auto", "tqdm", "line", "none"), default="auto",
                     help="auto: tqdm on a terminal when installed, else a line every few seconds")
    out.add_argument("--summary-format", choices=("text", "json"), default="text")
    p.set_defaults(handler=_run)


class _NullSink:
    """--dry-run: accepts everything, sends nothing."""

    def send_batch(self, topic: str, encoded: Encoded) -> None:
        return None

    def failures(self) -> list[DeliveryFailure]:
        return []

    def flush(self, timeout: float | None = None) -> None:
        return None


class _LineProgress:
    """One stderr line per report; used when tqdm is absent or stderr is not a terminal."""

    interval_s = 5.0

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream

    def __call__(self, p: Progress) -> None:
        # total is None (or 0) when the length is unknown: no share, no eta, "?" as the total.
        share = f" ({p.sent / p.total:.1%})" if p.total else ""
        eta = ""
        if p.total and p.events_per_s > 0:
            eta = f", eta {(p.total - p.sent) / p.events_per_s:.0f}s"
        total = f"{p.total:,}" if p.total else "?"
        print(f"replay: {p.sent:,}/{total} events{share}, {p.events_per_s:,.0f} events/s, "
              f"{p.elapsed_s:.1f}s{eta}", file=self._stream, flush=True)

    def close(self) -> None:
        return None


class _TqdmProgress:
    interval_s = 0.25

    def __init__(self, stream: TextIO, total: int) -> None:
        from tqdm import tqdm

        self._bar = tqdm(total=total, unit="ev", unit_scale=True, file=stream, desc="replay", dynamic_ncols=True)
        self._last = 0

    def __call__(self, p: Progress) -> None:
        self._bar.update(p.sent - self._last)
        self._last = p.sent

    def close(self) -> None:
        self._bar.close()


def _progress(mode: str, total: int, stream: TextIO) -> Any:
    if mode == "none":
        return None
    if mode in ("auto", "tqdm"):
        try:
            import tqdm  # noqa: F401
        except ImportError:
            if mode == "tqdm":
                print("replay: tqdm is not installed (pip install tqdm); printing progress lines", file=stream)
        else:
            if mode == "tqdm" or stream.isatty():
                return _TqdmProgress(stream, total)
    return _LineProgress(stream)


def _summary(args: argparse.Namespace, report: ReadReport, events: int, order: str, origin: float | None,
             topic: str, stats: ProduceStats) -> dict[str, Any]:
    return {
        "files": [{"path": path, "format": fmt} for path, fmt in report.files],
        "rows_read": report.rows,
        "events_read": events,
        "bad_lines": report.bad_total,
        "bad_lines_by_reason": {str(k): v for k, v in sorted(report.bad.items())},
        "bad_line_examples": [f"{b.where}: {b.reason}: {b.detail}" for b in report.examples],
        "order": order,
        "seed": args.seed,
        "time_origin": origin,
        "time_step": args.time_step if origin is not None else None,
        "topic": None if args.dry_run else topic,
        "start_at": stats.start_at,
        "sent": stats.sent,
        "produced": stats.produced,
        "delivery_failures": stats.delivery_failures,
        "first_failure": stats.first_failure,
        "failed_positions": list(stats.failed_range) if stats.failed_range else None,
        "skipped_invalid": stats.skipped_invalid,
        "skipped_oversized": stats.skipped_oversized,
        "elapsed_s": round(stats.elapsed_s, 3),
        "events_per_s": round(stats.events_per_s, 1),
        "stopped": stats.stopped,
        "resume_at": stats.resume_at,
    }


def _print_text(s: dict[str, Any], out: TextIO) -> None:
    formats = sorted({f["format"] for f in s["files"]})
    print("replay summary", file=out)
    print(f"  input:     {len(s['files'])} file(s) ({', '.join(formats)}), {s['rows_read']:,} rows, "
          f"{s['events_read']:,} events, {s['bad_lines']:,} bad lines skipped", file=out)
    if s["bad_lines"]:
        reasons = ", ".join(f"{k}={v:,}" for k, v in s["bad_lines_by_reason"].items())
        print(f"  bad lines: {reasons}; first ones:", file=out)
        for example in s["bad_line_examples"]:
            print(f"    {example}", file=out)
    times = "" if s["time_origin"] is None else (
        f", synthesised times from --time-origin {s['time_origin']} step {s['time_step']}s")
    print(f"  order:     {s['order']} (seed {s['seed']}){times}", file=out)
    target = "(dry run, nothing sent)" if s["topic"] is None else f"to topic {s['topic']!r}"
    skipped = s["skipped_invalid"] + s["skipped_oversized"]
    print(f"  produced:  {s['produced']:,} events {target}, from stream position {s['start_at']:,} "
          f"({s['delivery_failures']:,} delivery failures, {skipped:,} skipped)", file=out)
    if s["first_failure"]:
        where = "" if not s["failed_positions"] else (
            f" (stream positions {s['failed_positions'][0]}..{s['failed_positions'][1]} did not arrive)")
        print(f"  failure:   {s['first_failure']}{where}", file=out)
    print(f"  elapsed:   {s['elapsed_s']:.2f}s, {s['events_per_s']:,.0f} events/s", file=out)
    state = "stopped early; " if s["stopped"] else ""
    print(f"  resume:    {state}next run continues with --start-at {s['resume_at']}", file=out)


def _run(args: argparse.Namespace, config: Config) -> int:
    err = sys.stderr
    kafka = config.kafka
    if args.bootstrap_servers:
        kafka = kafka.model_copy(update={"bootstrap_servers": [s.strip() for s in args.bootstrap_servers.split(",")]})
    topic = args.topic or kafka.topic
    args.seed = config.run.seed if args.seed is None else args.seed
    fields = parse_field_map(args.map)
    began = time.monotonic()
    log, report = read_log(
        args.paths,
        fmt=None if args.format == "auto" else args.format,
        fields=fields,
        options=ReadOptions(delimiter=args.delimiter),
        time_scale=TIME_UNITS[args.time_unit],
    )
    order: Order = args.order if args.order != "auto" else ("time" if log.timed else "shuffle")
    positions = log.order(order, args.seed)
    origin: float | None = None
    if not log.timed:
        origin = args.time_origin if args.time_origin is not None else float(
            math.floor(time.time() - len(log) * args.time_step))
    print(f"replay: read {len(log):,} events ({report.bad_total:,} bad lines) from {len(args.paths)} file(s) "
          f"in {time.monotonic() - began:.1f}s; order: {order}", file=err)
    total = max(0, min(len(log), args.start_at + (args.limit if args.limit is not None else len(log))) - args.start_at)
    chunks = log.chunks(positions, start_at=args.start_at, limit=args.limit,
                        time_origin=origin or 0.0, time_step=args.time_step)

    stop = threading.Event()
    pacer: Pacer | None = None
    if args.rate is not None:
        pacer = RatePacer(args.rate, time.monotonic, stop.wait)
    elif args.speedup is not None:
        pacer = SpeedupPacer(args.speedup, time.monotonic, stop.wait)
    sink: BatchSink = _NullSink() if args.dry_run else kafka_producer(
        kafka, ProducerSettings(args.linger_ms, args.batch_bytes, args.compression))
    progress = _progress(args.progress, total, err)
    previous = _install_stop_handlers(stop)
    try:
        stats = produce_chunks(
            chunks, sink, topic, start_at=args.start_at, total=total, pacer=pacer,
            max_message_bytes=kafka.max_message_bytes, stop=stop, on_progress=progress,
            progress_interval_s=progress.interval_s if progress else 1.0,
        )
    except ProduceError as exc:
        stats = exc.stats
        print(f"replay: error: {exc}", file=err)
    finally:
        _restore_handlers(previous)
        if progress is not None:
            progress.close()
        if not args.dry_run:
            sink.close()  # type: ignore[attr-defined]
    failures = stats.failure_message()
    if failures:
        print(f"replay: error: {failures}", file=err)
    summary = _summary(args, report, len(log), order, origin, topic, stats)
    if args.summary_format == "json":
        sys.stdout.write(json.dumps(summary, indent=2) + "\n")
    else:
        _print_text(summary, sys.stdout)
    if stats.stopped:
        return EXIT_STOPPED
    failed = stats.delivery_failures > 0 or stats.sent + stats.skipped_invalid + stats.skipped_oversized < total
    return 1 if failed else 0


def _install_stop_handlers(stop: threading.Event) -> dict[int, Any]:
    """First Ctrl-C/SIGTERM: flush and print the summary; a second Ctrl-C aborts at once."""
    if threading.current_thread() is not threading.main_thread():
        return {}  # signals can only be handled on the main thread (tests may call main() elsewhere)

    def handle(signum: int, frame: Any) -> None:
        stop.set()
        signal.signal(signal.SIGINT, signal.default_int_handler)

    previous: dict[int, Any] = {}
    for sig in (signal.SIGINT, signal.SIGTERM):
        previous[sig] = signal.signal(sig, handle)
    return previous


def _restore_handlers(previous: dict[int, Any]) -> None:
    for sig, handler in previous.items():
        signal.signal(sig, handler)
