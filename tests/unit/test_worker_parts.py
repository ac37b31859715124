"""Worker parts with fakes: dead-letter sink, trained-offset bookkeeping, lag gauges, HTTP endpoints."""

from __future__ import annotations

import urllib.error
import urllib.request
from types import SimpleNamespace
from typing import Any

from kafka.errors import KafkaTimeoutError, MessageSizeTooLargeError
from prometheus_client import CollectorRegistry

from streamtrain.events import EventBatch, RejectReason, Rejection
from streamtrain.metrics import Metrics
from streamtrain.events.records import MicroBatch, PartitionRange
from streamtrain.ingest.dead_letter import DeadLetterSink
from streamtrain.worker.http import MetricsServer
from streamtrain.ingest.lag import LagTracker
from streamtrain.worker.progress import Progress

TP = ("t", 0)


class FakeFuture:
    def __init__(self, fail: bool) -> None:
        self.is_done = True
        self._fail = fail
        self.exception = KafkaTimeoutError("broker said no") if fail else None

    def failed(self) -> bool:
        return self._fail


class FakeProducer:
    def __init__(self, failures: int = 0, max_request_size: int = 1 << 20) -> None:
        self.sent: list[dict[str, Any]] = []
        self.failures = failures
        self.max_request_size = max_request_size

    def send(self, topic: str, value: bytes | None = None, key: bytes | None = None, headers: Any = None) -> Any:
        if value is None and key is None:
            raise ValueError("Need at least one: key or value")  # what kafka-python does
        if len(value or b"") > self.max_request_size:
            raise MessageSizeTooLargeError("larger than max_request_size")  # what kafka-python does
        self.sent.append({"topic": topic, "value": value, "key": key, "headers": dict(headers)})
        fail = self.failures > 0
        self.failures -= 1
        return FakeFuture(fail)

    def flush(self, timeout: float | None = None) -> None:
        pass


def metrics() -> Metrics:
    return Metrics(CollectorRegistry())


def test_dead_letters_carry_original_bytes_and_headers() -> None:
    m = metrics()
    producer = FakeProducer()
    sink = DeadLetterSink(producer, "dlq", m)
    records = [SimpleNamespace(value=b"{bad", key=b"k1", offset=40), SimpleNamespace(value=None, key=None, offset=41)]
    sink.send_rejects("src", 3, [Rejection(0, RejectReason.NOT_JSON, "nope"),
                                 Rejection(1, RejectReason.NULL_VALUE, "tombstone")], records)
    assert sink.flush(1.0)
    first, second = producer.sent
    assert first["value"] == b"{bad" and first["key"] == b"k1" and first["topic"] == "dlq"
    assert first["headers"] == {"reason": b"not_json", "detail": b"nope", "source_topic": b"src",
                                "source_partition": b"3", "source_offset": b"40"}
    assert second["value"] is None and second["headers"]["reason"] == b"null_value"
    assert m.registry.get_sample_value("streamtrain_events_dead_lettered_total", {"reason": "not_json"}) == 1


def test_a_refused_dead_letter_is_sent_bounded_and_then_retried_until_acknowledged() -> None:
    m = metrics()
    producer = FakeProducer(failures=2)
    sink = DeadLetterSink(producer, "dlq", m)
    sink.send_rejects("src", 0, [Rejection(0, RejectReason.NOT_OBJECT, "[]")],
                      [SimpleNamespace(value=b"[]", key=None, offset=7)])
    assert not sink.flush(1.0)  # refused in full: the bounded form goes out, the checkpoint waits for it
    bounded = producer.sent[1]
    assert bounded["value"] == b"[]" and bounded["headers"]["truncated"] == b"1"
    assert bounded["headers"]["source_offset"] == b"7" and bounded["headers"]["refused"].startswith(b"KafkaTimeout")
    assert not sink.flush(1.0)  # the bounded one failed too (broker down): sent again, as it is
    assert len(producer.sent) == 3 and producer.sent[2]["headers"] == bounded["headers"]
    assert sink.flush(1.0)
    assert m.registry.get_sample_value("streamtrain_kafka_errors_total", {"operation": "dead_letter"}) == 2
    assert m.registry.get_sample_value("streamtrain_events_dead_lettered_total", {"reason": "not_object"}) == 1
    assert m.registry.get_sample_value("streamtrain_dead_letters_bounded_total",
                                       {"reason": "not_object", "cause": "refused"}) == 1


def test_an_oversized_dead_letter_never_blocks_the_flush() -> None:
    import hashlib

    m = metrics()
    producer = FakeProducer(max_request_size=16384)
    sink = DeadLetterSink(producer, "dlq", m)
    big = b"x" * 5_000_000
    sink.send_rejects("src", 2, [Rejection(0, RejectReason.OVERSIZED, "5000000 bytes")],
                      [SimpleNamespace(value=big, key=b"k" * 50_000, offset=9)])
    assert sink.flush(1.0)  # refused synchronously, bounded at once: nothing left to wait for
    (letter,) = producer.sent
    h = letter["headers"]
    assert letter["value"] == big[:1024] and len(letter["key"]) == 1024
    assert h["original_bytes"] == b"5000000" and h["sha256"] == hashlib.sha256(big).hexdigest().encode()
    assert h["reason"] == b"oversized" and h["source_partition"] == b"2" and h["source_offset"] == b"9"
    assert sum(len(k) + len(v) for k, v in h.items()) + len(letter["value"]) + len(letter["key"]) < 16384
    assert m.registry.get_sample_value("streamtrain_dead_letters_bounded_total",
                                       {"reason": "oversized", "cause": "too_large"}) == 1


def batch(first: int, nxt: int, events: int, last_time: float | None = None) -> MicroBatch:
    ids = [str(i) for i in range(events)]
    return MicroBatch(EventBatch.from_ids(ids, ids), {TP: PartitionRange(first, nxt, events, last_time)}, nxt - first)


def test_progress_refuses_overlaps_and_records_ranges() -> None:
    progress = Progress({TP: 10}, events=5, record_ranges=True)
    assert not progress.accepts(batch(8, 12, 4))
    assert progress.accepts(batch(10, 14, 4))
    progress.advance(batch(10, 14, 3, last_time=99.0))
    progress.advance(batch(14, 16, 0))  # rejects only
    assert progress.offset(TP) == 16 and progress.events == 8
    assert progress.last_event_times() == {TP: 99.0}
    assert progress.pending_ranges() == [("t", 0, 10, 14, 3), ("t", 0, 14, 16, 0)]
    progress.drop_committed_ranges(1)
    assert progress.pending_ranges() == [("t", 0, 14, 16, 0)]


def test_lag_in_messages_and_seconds() -> None:
    m = metrics()
    now = [0.0]
    tracker = LagTracker(m, interval_s=5.0, clock=lambda: now[0], wall_clock=lambda: 1000.0)
    consumer = SimpleNamespace(calls=0)

    def end_offsets(partitions: Any, timeout_ms: int) -> dict[Any, int]:
        consumer.calls += 1
        return {("t", 0): 120, ("t", 1): 50}

    consumer.end_offsets = end_offsets
    tracker.maybe_update(consumer, [("t", 0), ("t", 1)], {("t", 0): 100, ("t", 1): 50}, {("t", 0): 990.0})
    tracker.maybe_update(consumer, [("t", 0), ("t", 1)], {}, {})  # within the interval: no broker call
    assert consumer.calls == 1 and tracker.pending_messages == 20

    def value(name: str, p: str) -> float | None:
        return m.registry.get_sample_value(name, {"topic": "t", "partition": p})

    assert value("streamtrain_consumer_lag_messages", "0") == 20
    assert value("streamtrain_consumer_lag_messages", "1") == 0
    assert value("streamtrain_consumer_lag_seconds", "0") == 10.0
    assert value("streamtrain_consumer_lag_seconds", "1") == 0


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


def test_http_endpoints() -> None:
    m = metrics()
    m.train_steps.inc(3)
    state = {"ready": (False, "no partitions assigned")}
    server = MetricsServer(m.registry, "127.0.0.1", 0, healthy=lambda: (True, "ok"), ready=lambda: state["ready"])
    server.start()
    try:
        base = f"http://127.0.0.1:{server.port}"
        status, body = _get(base + "/metrics")
        assert status == 200 and "streamtrain_train_steps_total 3.0" in body
        assert _get(base + "/healthz") == (200, "ok\n")
        assert _get(base + "/readyz") == (503, "no partitions assigned\n")
        state["ready"] = (True, "ok")
        assert _get(base + "/readyz")[0] == 200
        assert _get(base + "/nope")[0] == 404
    finally:
        server.stop()


def test_liveness_is_ok_while_starting_and_fails_once_the_loop_is_gone() -> None:
    import threading
    from types import SimpleNamespace

    from prometheus_client import CollectorRegistry

    from streamtrain.config import load_config
    from streamtrain.metrics import Metrics
    from streamtrain.worker.worker import Worker

    engine = SimpleNamespace(step=0, vocabulary_sizes=lambda: {"user": 0, "item": 0}, vocabulary_stats=dict, enable_split=lambda ctx: None,
                                 flush_stats=lambda: None)
    worker = Worker(load_config(environ={}), engine=engine, source=SimpleNamespace(), checkpointer=SimpleNamespace(),
                    runner=SimpleNamespace(), progress=SimpleNamespace(events=0),
                    start=SimpleNamespace(fresh=True, next_checkpoint_id=1), metrics=Metrics(CollectorRegistry()))
    assert worker.healthy() == (True, "starting")  # /metrics is up before the loop: not a dead worker
    worker.loop_thread = threading.Thread(target=lambda: None)
    worker.loop_thread.start()
    worker.loop_thread.join()
    ok, reason = worker.healthy()
    assert not ok and "not running" in reason
