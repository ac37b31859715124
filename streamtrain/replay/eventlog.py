"""The whole input held in memory, then put in replay order and cut to ``--start-at``/``--limit``.

Why in memory: ordering by event time (or a seeded shuffle) needs every event first. The log is
columnar: two lists of id strings (each distinct id stored once), one float64 array of times,
and one list slot per event for the rare optional fields; about 40 bytes per event plus the
distinct ids, so a few million events (MovieLens-25M: ~1 GB) fit; beyond that pre-sort the
file and replay it with ``--order file`` in parts, or split it by time.

Order (``--order``):

* ``time``: by event time, ties in input order (stable sort);
* ``shuffle``: a permutation drawn from ``numpy.random.default_rng(seed)``, the same for the
  same seed and input;
* ``file``: input order;
* ``auto``: ``time`` when the input has times, else ``shuffle``.

Timed or untimed is decided by the first good event; later events that disagree are bad lines
(``mixed_event_time``). Untimed events get synthesised, strictly increasing times:
``time_origin + position * time_step``, where ``position`` counts from the start of the
*ordered* stream, so a run resumed with ``--start-at`` and the same origin sends the same bytes.
"""

from __future__ import annotations

from array import array
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np

from streamtrain.events.schema import MAX_ID_CHARS
from streamtrain.replay.encoding import EventChunk
from streamtrain.replay.errors import ReplayError
from streamtrain.replay.readers import (
    _NOT_UTF8,
    FORMATS,
    ReadOptions,
    detect_format,
    gowalla_lines,
    open_rows,
)
from streamtrain.replay.records import (
    EVENT_FIELDS,
    BadLine,
    BadLineReason,
    Extras,
    FieldMap,
    Rejected,
    ReplayEvent,
    RowMapper,
)

__all__ = ["CHUNK_EVENTS", "MAX_BAD_EXAMPLES", "EventLog", "Order", "ReadReport", "read_log"]

Order = Literal["auto", "time", "shuffle", "file"]
MAX_BAD_EXAMPLES = 10
CHUNK_EVENTS = 4096  # events per produced chunk: big enough to amortise the Python per chunk, ~10 ms of sending


@dataclass
class ReadReport:
    """What reading found: counts for the summary, and the first bad lines as examples."""

    files: list[tuple[str, str]] = field(default_factory=list)  # (path, format)
    rows: int = 0
    bad: Counter[BadLineReason] = field(default_factory=Counter)
    examples: list[BadLine] = field(default_factory=list)

    @property
    def bad_total(self) -> int:
        return sum(self.bad.values())

    def add_bad(self, bad: BadLine, max_examples: int = MAX_BAD_EXAMPLES) -> None:
        self.bad[bad.reason] += 1
        if len(self.examples) < max_examples:
            self.examples.append(bad)


class EventLog:
    """Columnar, append-only store of the good events, in input order."""

    def __init__(self) -> None:
        self.users: list[str] = []
        self.items: list[str] = []
        self.times = array("d")
        self.extras: list[Extras | None] = []
        self.timed: bool | None = None  # decided by the first event
        self._ids: dict[str, str] = {}  # interning: one string object per distinct id

    def __len__(self) -> int:
        return len(self.users)

    def append(self, user_id: str, item_id: str, event_time: float | None, extras: Extras | None) -> Rejected | None:
        """Add one validated event; a timed/untimed mismatch with the first event is refused."""
        timed = event_time is not None
        if self.timed is None:
            self.timed = timed
        elif timed != self.timed:
            detail = (
                "event_time: missing, but the stream's first event has one"
                if self.timed
                else "event_time: present, but the stream's first event has none (times are synthesised)"
            )
            return Rejected(BadLineReason.MIXED_EVENT_TIME, detail)
        ids = self._ids
        self.users.append(ids.setdefault(user_id, user_id))
        self.items.append(ids.setdefault(item_id, item_id))
        self.times.append(event_time if timed else 0.0)  # type: ignore[arg-type]
        self.extras.append(extras)
        return None

    def extend_untimed(self, user_id: str, item_ids: list[str]) -> None:
        """Add one user's events without times or extras (ids validated by the caller); the stream
        must be untimed (the caller checks ``timed`` is not True)."""
        if self.timed is None:
            self.timed = False
        ids = self._ids
        n = len(item_ids)
        self.users.extend([ids.setdefault(user_id, user_id)] * n)
        self.items.extend(map(ids.setdefault, item_ids, item_ids))
        self.times.frombytes(bytes(8 * n))  # n zeros
        self.extras.extend([None] * n)

    def order(self, order: Order, seed: int) -> np.ndarray:
        """Input positions in replay order, (N,) int64; called once before producing.

        Raises:
            ReplayError: ``time`` order asked for input without times.
        """
        n = len(self)
        if order == "auto":
            order = "time" if self.timed else "shuffle"
        if order == "time":
            if not self.timed:
                raise ReplayError("--order time: the input has no event times; use --order shuffle or file")
            return np.argsort(np.frombuffer(self.times, dtype=np.float64), kind="stable").astype(np.int64)
        if order == "shuffle":
            return np.random.default_rng(seed).permutation(n).astype(np.int64)
        if order == "file":
            return np.arange(n, dtype=np.int64)
        raise ReplayError(f"unknown order {order!r}; use auto, time, shuffle or file")

    def events(
        self,
        order: np.ndarray,
        *,
        start_at: int = 0,
        limit: int | None = None,
        time_origin: float = 0.0,
        time_step: float = 1.0,
    ) -> Iterator[ReplayEvent]:
        """The ordered stream from position ``start_at``, at most ``limit`` events.

        Untimed events are stamped ``time_origin + position * time_step``.

        Raises:
            ReplayError: a negative ``start_at`` or ``limit`` (at the call, not at the first event).
        """
        return self._slice(order, start_at, _stop(order, start_at, limit), time_origin, time_step)

    def chunks(
        self,
        order: np.ndarray,
        *,
        start_at: int = 0,
        limit: int | None = None,
        time_origin: float = 0.0,
        time_step: float = 1.0,
        size: int = CHUNK_EVENTS,
    ) -> Iterator[EventChunk]:
        """The same stream as :meth:`events`, as columnar chunks of ``size`` events (what the producer
        encodes and sends a chunk at a time; no object per event).

        Raises:
            ReplayError: a negative ``start_at`` or ``limit``, or ``size`` < 1 (at the call).
        """
        stop = _stop(order, start_at, limit)
        if size < 1:
            raise ReplayError("chunk size must be >= 1")
        return self._chunks(order, start_at, stop, time_origin, time_step, size)

    def _chunks(
        self, order: np.ndarray, start_at: int, stop: int, time_origin: float, time_step: float, size: int
    ) -> Iterator[EventChunk]:
        times = np.frombuffer(self.times, dtype=np.float64) if len(self.times) else np.empty(0)
        has_extras = any(e is not None for e in self.extras)
        for lo in range(start_at, stop, size):
            hi = min(stop, lo + size)
            rows = order[lo:hi]
            pick = rows.tolist()
            if self.timed:
                chunk_times = times[rows].tolist()
            else:
                chunk_times = (time_origin + np.arange(lo, hi, dtype=np.float64) * time_step).tolist()
            extras = [self.extras[i] for i in pick] if has_extras else None
            yield EventChunk(lo, [self.users[i] for i in pick], [self.items[i] for i in pick], chunk_times, extras)

    def _slice(
        self, order: np.ndarray, start_at: int, stop: int, time_origin: float, time_step: float
    ) -> Iterator[ReplayEvent]:
        users, items, times, extras, timed = self.users, self.items, self.times, self.extras, self.timed
        for position in range(start_at, stop):
            i = int(order[position])
            t = times[i] if timed else time_origin + position * time_step
            yield ReplayEvent(users[i], items[i], t, extras[i])


def read_log(
    paths: Sequence[Path],
    *,
    fmt: str | None = None,
    fields: FieldMap | None = None,
    options: ReadOptions | None = None,
    time_scale: float = 1.0,
    max_examples: int = MAX_BAD_EXAMPLES,
) -> tuple[EventLog, ReadReport]:
    """Read every file into one :class:`EventLog`; called once by the replay command.

    Args:
        paths: input files, read in this order.
        fmt: a key of :data:`~streamtrain.replay.readers.FORMATS`, or None to detect per file.
        fields: event field -> source field mapping; None = identity.
        options: reader options; ``columns`` is filled in from ``fields`` when unset.
        time_scale: seconds per unit of numeric event times.

    Returns:
        The log and a report of rows read and bad lines. Bad lines never raise.

    Raises:
        ReplayError: a file cannot be opened or its format cannot be told.
    """
    fields = fields or FieldMap()
    options = options or ReadOptions()
    if options.columns is None:
        columns = frozenset(fields.source(name) for name in EVENT_FIELDS)
        options = ReadOptions(delimiter=options.delimiter, columns=columns)
    log = EventLog()
    report = ReadReport()
    mapper = RowMapper(fields, scale=time_scale)
    for path in paths:
        name = fmt or detect_format(path)
        report.files.append((str(path), name))
        where = _locator(path, FORMATS[name].position)
        if name == "gowalla" and _plain_ids(fields):
            _read_gowalla(path, log, report, mapper, max_examples, where)
            continue
        rows = open_rows(path, name, options)
        _read_one(rows, log, report, mapper, max_examples, where)
    return log, report


def _plain_ids(fields: FieldMap) -> bool:
    """The mapping reads a Gowalla row as it is: ids from their own fields, nothing else from them."""
    ids = ("user_id", "item_id")
    return all(fields.source(n) == n for n in ids) and all(
        fields.source(n) not in ids for n in EVENT_FIELDS if n not in ids)


def _read_gowalla(
    path: Path, log: EventLog, report: ReadReport, mapper: RowMapper, max_examples: int, where: Callable[[int], str]
) -> None:
    """Gowalla lines appended a line at a time as columns, not a row per event: the same events and
    bad lines as the row path, which still decides every line this one does not take whole."""
    for number, tokens in gowalla_lines(path):
        if tokens is not None and len(tokens) > 1 and log.timed is not True and max(map(len, tokens)) <= MAX_ID_CHARS:
            log.extend_untimed(tokens[0], tokens[1:])
            report.rows += len(tokens) - 1
            continue
        rows: list[tuple[int, object]] = (
            [(number, _NOT_UTF8)] if tokens is None
            else [(number, {"user_id": tokens[0], "item_id": item}) for item in tokens[1:]])
        _read_one(rows, log, report, mapper, max_examples, where)


def _locator(path: Path, position: str) -> Callable[[int], str]:
    """How a bad line is named in the summary: ``file:12`` or ``file:row 12``."""
    if position == "line":
        return lambda number: f"{path}:{number}"
    return lambda number: f"{path}:{position} {number}"


def _read_one(
    rows: Iterable[tuple[int, object]],
    log: EventLog,
    report: ReadReport,
    mapper: RowMapper,
    max_examples: int,
    where: Callable[[int], str],
) -> None:
    append = log.append
    for number, row in rows:
        report.rows += 1
        if type(row) is Rejected:
            report.add_bad(BadLine(where(number), row.reason, row.detail), max_examples)
            continue
        result = mapper(row)  # type: ignore[arg-type]
        if type(result) is Rejected:
            report.add_bad(BadLine(where(number), result.reason, result.detail), max_examples)
            continue
        refused = append(*result)  # type: ignore[misc]
        if refused is not None:
            report.add_bad(BadLine(where(number), refused.reason, refused.detail), max_examples)


def _stop(order: np.ndarray, start_at: int, limit: int | None) -> int:
    """End position of the slice ``[start_at, start_at + limit)`` of the ordered stream; raises ReplayError
    on a negative ``start_at`` or ``limit`` (at the call, not at the first event)."""
    if start_at < 0 or (limit is not None and limit < 0):
        raise ReplayError("--start-at and --limit must be >= 0")
    return len(order) if limit is None else min(len(order), start_at + limit)
