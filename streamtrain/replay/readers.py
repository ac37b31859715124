"""One reader per historical-log format; each turns a file into numbered rows.

A reader yields ``(position, row)`` pairs: ``position`` is the 1-based line (text formats) or
row (Parquet) number, ``row`` a mapping of source field name -> value, or a
:class:`~streamtrain.replay.records.Rejected` when the line cannot even be split into fields.
Mapping rows to events is not the reader's job (see :mod:`streamtrain.replay.records`).

Formats:

* ``jsonl``: one JSON object per line (``.jsonl``, ``.ndjson``, ``.json``).
* ``csv``: a header row, then one event per row (``.csv``; ``.tsv`` is tab-separated).
* ``parquet``: one event per row (``.parquet``, ``.pq``); needs the optional ``pyarrow``.
* ``movielens``: ``user::item::rating::timestamp`` (``.dat``); tab or space separated also
  read (MovieLens 100k's ``u.data``: ``.data``, or any file whose first line is four
  tab-separated fields). Fields: ``user_id``, ``item_id``, ``rating``, ``event_time``; the rating
  becomes the weight only with ``--map weight=rating``.
* ``gowalla``: ``user item item ...`` per line, no timestamps; each line expands to one event
  per item (fields ``user_id``, ``item_id``).

Text files may be gzip-compressed (``.gz`` after the format's extension). ``.txt`` and unknown
extensions are recognised by their first non-blank line.
"""

from __future__ import annotations

import csv
import gzip
import logging
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import orjson

from streamtrain.replay.errors import ReplayError
from streamtrain.replay.records import BadLineReason, Rejected

__all__ = ["FORMATS", "ReadOptions", "Row", "RowReader", "detect_format", "gowalla_lines", "open_rows"]

log = logging.getLogger(__name__)

Row = Mapping[str, Any]
RowStream = Iterator[tuple[int, Row | Rejected]]


@dataclass(frozen=True)
class ReadOptions:
    """Format options from the command line.

    Attributes:
        delimiter: CSV delimiter; None = tab for ``.tsv``, comma otherwise.
        columns: the source fields the mapping reads; Parquet loads only these columns.
    """

    delimiter: str | None = None
    columns: frozenset[str] | None = None


RowReader = Callable[[Path, ReadOptions], RowStream]


def _open_binary(path: Path) -> IO[bytes]:
    try:
        if path.suffix == ".gz":
            return gzip.open(path, "rb")  # type: ignore[return-value]  # GzipFile is a binary IO
        return open(path, "rb")
    except OSError as exc:
        raise ReplayError(f"cannot open {path}: {exc.strerror or exc}") from exc


def _text_lines(path: Path) -> Iterator[tuple[int, str | None]]:
    """(line number, text without the line end), or None for a line that is not UTF-8."""
    with _open_binary(path) as handle:
        try:
            for number, raw in enumerate(handle, start=1):
                try:
                    yield number, raw.decode("utf-8").rstrip("\r\n")
                except UnicodeDecodeError:
                    yield number, None
        except (OSError, EOFError) as exc:  # truncated or corrupt gzip stream
            raise ReplayError(f"cannot read {path}: {exc}") from exc


_NOT_UTF8 = Rejected(BadLineReason.NOT_UTF8, "the line is not valid UTF-8")


def read_jsonl(path: Path, options: ReadOptions) -> RowStream:
    """One JSON object per line; blank lines are skipped."""
    with _open_binary(path) as handle:
        for number, raw in enumerate(handle, start=1):
            if not raw.strip():
                continue
            try:
                obj = orjson.loads(raw)  # also rejects invalid UTF-8
            except orjson.JSONDecodeError as exc:
                yield number, Rejected(BadLineReason.NOT_JSON, f"not one JSON document: {str(exc)[:100]}")
                continue
            if type(obj) is not dict:
                yield number, Rejected(BadLineReason.NOT_OBJECT, f"expected a JSON object, got {type(obj).__name__}")
                continue
            yield number, obj


def read_csv(path: Path, options: ReadOptions) -> RowStream:
    """A header row names the columns; a row with another column count is a bad row."""
    delimiter = options.delimiter or ("\t" if ".tsv" in path.suffixes else ",")
    undecodable: list[int] = []

    def lines() -> Iterator[str]:
        for number, text in _text_lines(path):
            if text is None:
                undecodable.append(number)
                yield "\n"  # keeps csv's line count equal to the file's
            else:
                yield text + "\n"

    reader = csv.reader(lines(), delimiter=delimiter)
    header: list[str] | None = None
    try:
        for cells in reader:
            while undecodable:
                yield undecodable.pop(0), _NOT_UTF8
            if not cells or (len(cells) == 1 and not cells[0].strip()):
                continue
            if header is None:
                header = [c.strip() for c in cells]
                continue
            if len(cells) != len(header):
                yield reader.line_num, Rejected(
                    BadLineReason.BAD_ROW, f"expected {len(header)} columns like the header, got {len(cells)}"
                )
                continue
            yield reader.line_num, dict(zip(header, cells))
    except csv.Error as exc:
        yield reader.line_num, Rejected(BadLineReason.BAD_ROW, f"unreadable CSV: {exc}; the rest of the file is skipped")
    while undecodable:
        yield undecodable.pop(0), _NOT_UTF8


def read_movielens(path: Path, options: ReadOptions) -> RowStream:
    """``user::item::rating::timestamp``, or the same four fields separated by whitespace."""
    for number, text in _text_lines(path):
        if text is None:
            yield number, _NOT_UTF8
            continue
        if not text.strip():
            continue
        parts = text.split("::") if "::" in text else text.split()
        if len(parts) != 4:
            yield number, Rejected(BadLineReason.BAD_ROW, f"expected user::item::rating::timestamp, got {len(parts)} fields")
            continue
        yield number, {"user_id": parts[0].strip(), "item_id": parts[1].strip(), "rating": parts[2].strip(),
                       "event_time": parts[3].strip()}


def read_gowalla(path: Path, options: ReadOptions) -> RowStream:
    """``user item item ...``: one row per item, all with the line's number."""
    for number, text in _text_lines(path):
        if text is None:
            yield number, _NOT_UTF8
            continue
        tokens = text.split()
        if not tokens:
            continue
        user = tokens[0]
        for item in tokens[1:]:
            yield number, {"user_id": user, "item_id": item}


def gowalla_lines(path: Path) -> Iterator[tuple[int, list[str] | None]]:
    """``(line number, tokens)`` per non-blank line, None for a line that is not UTF-8: the columnar
    form of :func:`read_gowalla`, for the log builder's fast path (no row per event)."""
    for number, text in _text_lines(path):
        if text is None:
            yield number, None
            continue
        tokens = text.split()
        if tokens:
            yield number, tokens


def read_parquet(path: Path, options: ReadOptions) -> RowStream:
    """Rows of a Parquet file, in file order; only the mapped columns are loaded."""
    try:
        import pyarrow.parquet as pq
    except ImportError as exc:
        raise ReplayError(
            f"reading Parquet ({path}) needs the optional package pyarrow: pip install pyarrow"
        ) from exc
    try:
        parquet = pq.ParquetFile(path)
        names = parquet.schema_arrow.names
        wanted = [n for n in names if options.columns is None or n in options.columns]
        number = 0
        for batch in parquet.iter_batches(batch_size=65_536, columns=wanted):
            for row in batch.to_pylist():
                number += 1
                yield number, row
    except (OSError, ValueError) as exc:  # pyarrow's ArrowInvalid/ArrowIOError derive from these
        raise ReplayError(f"cannot read Parquet file {path}: {exc}") from exc


@dataclass(frozen=True)
class Format:
    """A format's reader, how its positions are named, and the extensions that select it."""

    reader: RowReader
    position: str
    extensions: tuple[str, ...]


FORMATS: dict[str, Format] = {
    "jsonl": Format(read_jsonl, "line", (".jsonl", ".ndjson", ".json")),
    "csv": Format(read_csv, "line", (".csv", ".tsv")),
    "parquet": Format(read_parquet, "row", (".parquet", ".pq")),
    "movielens": Format(read_movielens, "line", (".dat", ".data")),
    "gowalla": Format(read_gowalla, "line", ()),
}


def _sniff(path: Path) -> str | None:
    """Guess a text format from the first non-blank line; None if nothing fits."""
    with _open_binary(path) as handle:
        head = handle.read(4)
        if head == b"PAR1":
            return "parquet"
    for _, text in _text_lines(path):
        if text is None or not text.strip():
            continue
        line = text.strip()
        if line.startswith("{"):
            return "jsonl"
        if "::" in line or len(line.split("\t")) == 4:  # ML-1M ratings.dat / ML-100k u.data, u1.base...
            return "movielens"
        if "," in line:
            return "csv"
        return "gowalla"
    return None


def detect_format(path: Path) -> str:
    """The format of ``path`` from its extension, else from its first line.

    Raises:
        ReplayError: nothing matched (an empty file or an unknown binary format).
    """
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes and suffixes[-1] == ".gz":
        suffixes.pop()
    if suffixes:
        for name, fmt in FORMATS.items():
            if suffixes[-1] in fmt.extensions:
                return name
    guessed = _sniff(path)
    if guessed is None:
        raise ReplayError(f"cannot tell the format of {path} (empty?); pass --format {'|'.join(FORMATS)}")
    log.info("%s: no known extension, read as %s (override with --format)", path, guessed)
    return guessed


def open_rows(path: Path, fmt: str, options: ReadOptions) -> RowStream:
    """The rows of one file in format ``fmt``; called by the log builder once per input file.

    Raises:
        ReplayError: unknown format, unreadable file, or a missing optional package.
    """
    if fmt not in FORMATS:
        raise ReplayError(f"unknown format {fmt!r}; use one of {', '.join(FORMATS)}")
    return FORMATS[fmt].reader(path, options)
