"""The Kafka side of replay without a broker: partitioner, settings, codec checks."""

from __future__ import annotations

import random

import pytest
from kafka.partitioner import DefaultPartitioner

from streamtrain.replay import ProducerSettings, ReplayError
from streamtrain.replay.kafka_sink import _check_codec, _key_partitioner


class FakeCluster:
    def __init__(self, partitions: int) -> None:
        self.partitions = set(range(partitions))

    def topics(self) -> set[str]:
        return {"t"}

    def partitions_for_topic(self, topic: str) -> set[int]:
        return self.partitions

    def available_partitions_for_topic(self, topic: str) -> set[int]:
        return self.partitions


@pytest.mark.parametrize("partitions", [1, 3, 6, 32])
def test_cached_partitioner_matches_kafka_default(partitions: int) -> None:
    rng = random.Random(partitions)
    keys = [str(rng.randrange(10**6)).encode() for _ in range(300)] + [b"", "ünïcode".encode(), b"x" * 300]
    cluster = FakeCluster(partitions)
    ours, default = _key_partitioner(), DefaultPartitioner()
    for key in keys + keys:  # the second pass is served from the cache
        assert ours.partition("t", key, key, None, None, cluster) == default.partition("t", key, key, None, None, cluster)
    if partitions > 1:
        spread = {ours.partition("t", k, k, None, None, cluster) for k in keys}
        assert len(spread) == partitions


def test_cached_partitioner_follows_a_partition_count_change() -> None:
    ours, default = _key_partitioner(), DefaultPartitioner()
    for n in (3, 12):
        cluster = FakeCluster(n)
        for key in (b"42", b"7", b"user-1"):
            assert ours.partition("t", key, key, None, None, cluster) == default.partition("t", key, key, None, None, cluster)


def test_settings_are_validated() -> None:
    with pytest.raises(ReplayError):
        ProducerSettings(linger_ms=-1)
    with pytest.raises(ReplayError):
        ProducerSettings(batch_bytes=0)
    with pytest.raises(ReplayError, match="unknown compression"):
        ProducerSettings(compression="brotli")  # type: ignore[arg-type]


def test_missing_codec_package_names_the_install(monkeypatch: pytest.MonkeyPatch) -> None:
    from kafka import codec

    monkeypatch.setattr(codec, "has_lz4", lambda: False)
    with pytest.raises(ReplayError, match="pip install lz4"):
        _check_codec("lz4")
    _check_codec("none")
    _check_codec("gzip")
