"""The chunked replay path without a broker: chunk encoding, chunks of the log, the librdkafka sink's
bookkeeping (queue full, failed deliveries placed in the stream) with an in-memory producer."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from streamtrain.events import decode_values, encode_event
from streamtrain.replay import (
    ChunkEncoder,
    ConfluentSink,
    EventChunk,
    ProduceError,
    produce_chunks,
    read_log,
)
from streamtrain.replay.records import Extras


def test_chunk_encoding_decodes_like_encode_event() -> None:
    users = ["u1", "ü-2", 'q"uote', "u1", "x" * 256]
    items = ["i", "9", "\\back", "i", "y"]
    times = [0.0, 1.5, 1_700_000_000.123456, 1e-7, 253_402_300_799.0]
    encoded = ChunkEncoder().encode(EventChunk(10, users, items, times))
    assert encoded.positions is None and not encoded.invalid
    assert encoded.keys == [u.encode() for u in users]
    ours = decode_values(encoded.values)
    reference = decode_values([encode_event(u, i, t) for u, i, t in zip(users, items, times)])
    assert not ours.rejects
    assert list(ours.batch.user_ids) == list(reference.batch.user_ids) == users
    assert list(ours.batch.item_ids) == list(reference.batch.item_ids) == items
    assert ours.batch.event_time.tobytes() == reference.batch.event_time.tobytes()


def test_chunk_encoding_skips_and_places_what_it_refuses() -> None:
    extras: list[Extras | None] = [None, None, Extras("click", 2.0, {"k": "v"}), None, None]
    chunk = EventChunk(100, ["a", "b", "c", "d", "e"], ["i", "i", "i", "j" * 250, "i"],
                       [1.0, -5.0, 2.0, 3.0, 4.0], extras)
    encoded = ChunkEncoder(max_message_bytes=200).encode(chunk)
    assert encoded.invalid == [101]  # a negative time
    assert encoded.oversized == [103]
    assert encoded.positions == [100, 102, 104]
    decoded = decode_values(encoded.values)
    assert list(decoded.batch.user_ids) == ["a", "c", "e"]
    assert decoded.batch.event_type[1] == "click" and decoded.batch.context[1] == {"k": "v"}


def test_log_chunks_are_the_event_stream(tmp_path: Path) -> None:
    path = tmp_path / "train.txt"
    path.write_text("".join(f"{u} {' '.join(str(100 + u * 3 + k) for k in range(1 + u % 4))}\n" for u in range(30)))
    log, _ = read_log([path], fmt="gowalla")
    order = log.order("shuffle", 3)
    events = list(log.events(order, start_at=5, limit=40, time_origin=1000.0, time_step=0.5))
    chunks = list(log.chunks(order, start_at=5, limit=40, time_origin=1000.0, time_step=0.5, size=7))
    assert [c.first for c in chunks] == list(range(5, 45, 7))
    assert [(u, i, t) for c in chunks for u, i, t in zip(c.users, c.items, c.times)] == [
        (e.user_id, e.item_id, e.event_time) for e in events]
    assert all(type(t) is float for c in chunks for t in c.times)


class FakeMessage:
    def __init__(self, value: bytes) -> None:
        self._value = value

    def value(self) -> bytes:
        return bytes(self._value)  # a copy, as librdkafka hands it back


class FakeError:
    def name(self) -> str:
        return "MSG_SIZE_TOO_LARGE"

    def str(self) -> str:
        return "Broker: Message size too large"


class FakeProducer:
    """librdkafka's produce/poll/flush: a queue of ``capacity``; values containing ``fail`` fail delivery."""

    def __init__(self, sink: ConfluentSink, capacity: int, fail: bytes) -> None:
        self.sink, self.capacity, self.fail = sink, capacity, fail
        self.queue: list[tuple[str, bytes, bytes]] = []
        self.delivered: list[tuple[str, bytes, bytes]] = []
        self.full = 0

    def produce(self, topic: str, value: bytes, key: bytes) -> None:
        if len(self.queue) >= self.capacity:
            self.full += 1
            raise BufferError("Local: Queue full")
        self.queue.append((topic, value, key))

    def poll(self, timeout: float = 0) -> int:
        served, self.queue = self.queue, []
        for message in served:
            if self.fail in message[1]:
                self.sink.on_delivery(FakeError(), FakeMessage(message[1]))
            else:
                self.delivered.append(message)
        return len(served)

    def flush(self, timeout: float = -1) -> int:
        self.poll()
        return 0


def test_sink_waits_out_a_full_queue_and_names_failed_positions() -> None:
    sink = ConfluentSink(None)
    producer = FakeProducer(sink, capacity=5, fail=b'"bad')
    sink._producer = producer
    users = [f"u{k % 3}" for k in range(40)]
    items = ["bad" if k in (7, 23) else f"i{k}" for k in range(40)]
    chunks = [EventChunk(lo, users[lo:lo + 16], items[lo:lo + 16], [float(k) for k in range(lo, min(40, lo + 16))])
              for lo in range(0, 40, 16)]
    stats = produce_chunks(chunks, sink, "t")
    assert producer.full > 0  # the queue filled and the sink went on after polling
    assert stats.sent == 40 and stats.delivery_failures == 2 and stats.produced == 38
    assert stats.failed_positions == [7, 23] and stats.failed_range == (7, 23)
    assert "MSG_SIZE_TOO_LARGE" in (stats.first_failure or "")
    message = stats.failure_message() or ""
    assert "stream positions 7..23" in message
    assert [k for _, _, k in producer.delivered] == [u.encode() for k, u in enumerate(users) if k not in (7, 23)]


def test_a_refused_produce_raises_with_the_resume_point() -> None:
    class Refusing(FakeProducer):
        def produce(self, topic: str, value: bytes, key: bytes) -> None:
            if len(self.delivered) + len(self.queue) == 9:
                raise RuntimeError("Local: Unknown topic")
            super().produce(topic, value, key)

    sink = ConfluentSink(None)
    sink._producer = Refusing(sink, capacity=100, fail=b"never")
    chunk = EventChunk(50, ["u"] * 20, ["i"] * 20, [float(k) for k in range(20)])
    with pytest.raises(ProduceError) as caught:
        produce_chunks([chunk], sink, "t", start_at=50)
    assert caught.value.stats.sent == 9 and caught.value.stats.resume_at == 59
    assert "--start-at 59" in str(caught.value)


def test_the_sink_forgets_old_chunks() -> None:
    sink = ConfluentSink(None, retained_messages=10)
    sink._producer = FakeProducer(sink, capacity=1000, fail=b"never")
    for lo in range(0, 100, 4):
        sink.send_batch("t", ChunkEncoder().encode(EventChunk(lo, ["u"] * 4, [f"i{lo}"] * 4, [1.0] * 4)))
    assert sum(len(e.values) for e in sink._recent) <= 13
    assert sink._position(ChunkEncoder().encode(EventChunk(0, ["u"], ["i96"], [1.0])).values[0]) == 96
    assert sink._position(b"gone") is None


def _row_path(paths: list[Path]) -> tuple[Any, Any]:
    """read_log's generic path (a row per event through the row mapper), for comparison."""
    from streamtrain.replay.eventlog import EventLog, ReadReport, _locator, _read_one
    from streamtrain.replay.readers import ReadOptions, detect_format, open_rows
    from streamtrain.replay.records import FieldMap, RowMapper

    log, report = EventLog(), ReadReport()
    for path in paths:
        fmt = detect_format(path)
        report.files.append((str(path), fmt))
        _read_one(open_rows(path, fmt, ReadOptions()), log, report, RowMapper(FieldMap()), 10, _locator(path, "line"))
    return log, report


@pytest.mark.parametrize("timed_first", [False, True])
def test_gowalla_columns_read_like_rows(tmp_path: Path, timed_first: bool) -> None:
    path = tmp_path / "train.txt"
    path.write_bytes(b"0 1 2 3\n\n7\n1 4\xff 5\n2 " + b"x" * 257 + b" 6 7\n3\t8  9 \r\n0 1\n")
    paths = [path]
    if timed_first:
        timed = tmp_path / "first.jsonl"
        timed.write_text('{"user_id": "a", "item_id": "b", "event_time": 5}\n')
        paths = [timed, path]
    fast_log, fast_report = read_log(paths)
    slow_log, slow_report = _row_path(paths)
    assert (fast_log.users, fast_log.items, list(fast_log.times), fast_log.extras, fast_log.timed) == (
        slow_log.users, slow_log.items, list(slow_log.times), slow_log.extras, slow_log.timed)
    assert (fast_report.rows, fast_report.bad, fast_report.examples) == (
        slow_report.rows, slow_report.bad, slow_report.examples)
    assert len(fast_log) == (1 if timed_first else 8)


def test_no_broker_is_a_replay_error_that_says_what_to_do() -> None:
    from streamtrain.config import KafkaConfig
    from streamtrain.replay import ProducerSettings, ReplayError, kafka_producer

    with pytest.raises(ReplayError, match=r"cannot connect a producer to 127\.0\.0\.1:1: .*local-stack start"):
        kafka_producer(KafkaConfig(bootstrap_servers=["127.0.0.1:1"]), ProducerSettings(), connect_timeout_s=0.5)


def test_failed_positions_keep_the_exact_range_beyond_the_cap() -> None:
    from streamtrain.replay import DeliveryFailure, ProduceStats
    from streamtrain.replay.producer import MAX_FAILED_POSITIONS

    stats = ProduceStats()
    positions = [5000 + (k * 7919) % 20_011 for k in range(MAX_FAILED_POSITIONS + 500)] + [3, 99_999]
    stats._add_failures([DeliveryFailure(p, "boom") for p in positions[:700]])
    stats._add_failures([DeliveryFailure(p, "boom") for p in positions[700:]] + [DeliveryFailure(None, "x")])
    assert stats.delivery_failures == len(positions) + 1 and stats.failed_unplaced == 1
    assert len(stats.failed_positions) == MAX_FAILED_POSITIONS
    assert stats.failed_range == (3, 99_999)


def test_paced_chunks_ask_the_pacer_for_every_event_and_count_skips_in_place() -> None:
    import threading

    class Recorder:
        def __init__(self) -> None:
            self.asked: list[float] = []

        def wait(self, event_time: float) -> None:
            self.asked.append(event_time)
            if len(self.asked) == 5:
                stop.set()  # Ctrl-C while waiting for the fifth event

    stop = threading.Event()
    sink = ConfluentSink(None)
    sink._producer = FakeProducer(sink, capacity=100, fail=b"never")
    chunk = EventChunk(10, ["a", "b", "c", "d", "e", "f"], ["i"] * 6, [1.0, -1.0, 2.0, -2.0, 3.0, 4.0])
    pacer = Recorder()
    stats = produce_chunks([chunk], sink, "t", start_at=10, pacer=pacer, stop=stop)
    assert pacer.asked == [1.0, -1.0, 2.0, -2.0, 3.0]
    assert (stats.sent, stats.skipped_invalid, stats.stopped, stats.resume_at) == (2, 2, True, 14)
    assert [k for _, _, k in sink._producer.delivered] == [b"a", b"c"]
