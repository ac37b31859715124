"""The configuration's sections (the sampler's are in :mod:`.sampler`) and the :class:`Config` tree.

Reading a file, the environment and flags into it is :mod:`.load`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field, SecretStr, field_validator, model_validator

from streamtrain.config.base import (
    DEFAULT_TEMPERATURE,
    RESAMPLING_TEMPERATURE,
    _Section,
)
from streamtrain.config.sampler import SamplerConfig


class RunConfig(_Section):
    name: str = Field("default", pattern=r"^[A-Za-z0-9_.-]{1,64}$", description="namespaces Redis keys and checkpoints")
    log_repeat_interval_s: float = Field(
        30.0, ge=0, description="Kafka client log lines (and the worker's retry warnings) repeating one cause are "
        "logged once per this many seconds, with a count of the ones held back; 0 keeps every line"
    )
    seed: int = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"


BOOTSTRAP_FORMS = 'host:port, a comma-separated list host1:port,host2:port, or a JSON list ["host1:port", ...]'


class KafkaConfig(_Section):
    bootstrap_servers: list[str] = Field(["127.0.0.1:9092"], description=f"brokers: {BOOTSTRAP_FORMS}")
    topic: str = "interactions"
    group_id: str = "streamtrain"
    dead_letter_topic: str = "interactions.dead-letter"
    client_id: str = "streamtrain"
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = None
    sasl_username: str | None = None
    sasl_password: SecretStr | None = None
    client: Literal["confluent", "kafka-python"] = Field(
        "confluent", description="client that reads records in the ingest processes: confluent (librdkafka; ~2x "
        "the records/s per core, BENCHMARKS.md) or kafka-python; group membership and commits use kafka-python"
    )
    max_poll_records: int = Field(5000, ge=1)
    max_message_bytes: int = Field(64 * 1024, ge=64, description="larger messages are dead-lettered as oversized")
    queue_batches: int = Field(4, ge=1, description="decoded micro-batches buffered ahead of the trainer")
    group_instance_id: str | None = Field(
        None,
        description="static group membership (KIP-345): a restarted worker with the same id gets its partitions "
        "back at once instead of waiting for the dead member's session to time out",
    )
    session_timeout_s: float = Field(10.0, ge=6, le=300, description="consumer group session timeout")
    lag_interval_s: float = Field(5.0, gt=0, description="how often the worker asks the broker for end offsets")
    metadata_max_age_s: float = Field(
        10.0, ge=1, le=300, description="how often the group consumer refreshes topic metadata, so partitions added "
        "to the topic are assigned and read within about this long (kafka-python's own default is 300 s)"
    )
    broker_unreachable_s: float = Field(
        30.0, gt=0, description="/readyz fails when no broker round trip succeeded for this long after a failure, "
        "or polls kept failing this long; must exceed kafka.lag_interval_s + 2"
    )
    on_topic_recreated: Literal["fail", "restart"] = Field(
        "fail", description="the topic's id (Kafka's UUID of the topic) differs from the one the run's checkpoint "
        "recorded, i.e. the topic was deleted and recreated: fail (stop before training; the default) or restart "
        "(train the new log from its start; the old log's untrained rest is gone either way)"
    )
    dead_letter_max_bytes: int = Field(
        1 << 20, ge=16384, description="largest dead letter sent in full (producer max_request_size and the "
        "dead-letter topic's max.message.bytes when the worker creates it); larger ones are sent bounded"
    )

    @field_validator("bootstrap_servers", mode="before")
    @classmethod
    def _brokers(cls, value: Any) -> Any:
        """Accept what every Kafka tool accepts: ``host:port[,host:port...]`` as well as a list."""
        if isinstance(value, str):
            value = [part.strip() for part in value.split(",")]
        if not isinstance(value, (list, tuple)) or not value:
            raise ValueError(f"expected {BOOTSTRAP_FORMS}")
        for broker in value:
            host, sep, port = str(broker).rpartition(":")
            if not isinstance(broker, str) or not sep or not host or not port.isdigit():
                raise ValueError(f"{broker!r} is not host:port; expected {BOOTSTRAP_FORMS}")
        return list(value)


class RedisConfig(_Section):
    url: str = Field("redis://127.0.0.1:6379/0", pattern=r"^rediss?://")
    password: SecretStr | None = None
    key_prefix: str = "streamtrain"
    socket_timeout_s: float = Field(5.0, gt=0)


class ModelConfig(_Section):
    embedding_dim: int = Field(
        128, ge=1, le=4096, description="D; 128 measured +2% over 64 on a single MovieLens pass (issue 16, BENCHMARKS.md)"
    )
    hidden_dims: list[int] = Field(default_factory=list, description="MLP head widths; empty = id embeddings only")
    temperature: float = Field(
        DEFAULT_TEMPERATURE, gt=0, le=10,
        description="τ; when unset, 0.3 for the resampling samplers bir/xir and 0.1 for the others (BENCHMARKS.md)",
    )
    normalize: bool = True
    user_capacity: int = Field(1_000_000, ge=2)
    item_capacity: int = Field(1_000_000, ge=2)
    admission_threshold: int = Field(
        1, ge=1, le=255, description="sightings before an id gets its own row (2+ keeps a flood of one-off ids out)"
    )
    admission_counter: Literal["sketch", "exact"] = Field(
        "sketch", description="where sightings below admission_threshold are counted: sketch (count-min, 8 bytes "
        "per row of capacity, may admit ~2 in 100 one-off ids early) or exact (up to capacity ids, ~56 bytes each)"
    )
    eviction_after_s: float | None = Field(
        0.0, ge=0, description="at capacity, rows of ids unseen this long (event time) are reused, least recently "
        "seen first; 0 = any row the batch does not use (LRU); None = never: a full table freezes and every later "
        "new id trains on the shared fallback row"
    )
    optimizer: Literal["adam", "adagrad", "rowwise_adagrad", "sgd"] = Field(
        "adagrad", description="embedding tables: per-row steps that shrink as a row sees more events (adagrad, the "
        "best single pass; BENCHMARKS.md 'Issue 16, third round'); rowwise_adagrad keeps one value of state per row, not D"
    )
    learning_rate: float = Field(0.05, gt=0, description="best of Adam's sweep on Gowalla (bench/quality.py), kept for Adagrad")
    dense_learning_rate: float | None = Field(
        None, gt=0, description="learning rate of the dense layers (MLP heads, attention); None = learning_rate",
    )
    init_std: float = Field(0.1, gt=0)
    user_features: Literal["id", "history", "history+id"] = Field(
        "history",
        description="what the query is built from: the user's last history_length items (history), plus "
        "the user's own embedding (history+id), or the id embedding alone (id); see docs/algorithms.md",
    )
    history_length: int = Field(20, ge=1, le=1024, description="items per user kept for the history query")
    history_decay: float = Field(
        0.8, gt=0, le=1, description="weight of an item k events old is decay^k; also the co-visitation baseline's decay"
    )
    history_input: Literal["item", "context", "both"] = Field(
        "both", description="a history item's vector: the item tower's output (item), its own context row "
        "(context; a second item table, starts at zero), or their sum (both, the default: +5% over context and "
        "+18% over item on MovieLens); see streamtrain/model/history_encoder.py",
    )
    new_item_init: Literal["random", "query"] = Field(
        "query", description="a new item's row: N(0, init_std) noise, or the mean of the queries that took it "
        "in the step that admitted it (after that step's evaluation; streamtrain/model/item_init.py)",
    )
    history_pooling: Literal["mean", "attention"] = Field(
        "mean", description="decay-weighted mean, or one causal self-attention layer with positions (SASRec)"
    )


class FrequencyConfig(_Section):
    method: Literal["occurrences", "presence"] = Field(
        "occurrences",
        description="occurrences: log expected occurrences per event (counts duplicates, unbiased start); "
        "presence: Yi et al. 2019 as published, log P(item in a batch), kept for comparison",
    )
    hash_size: int = Field(1 << 20, ge=1, description="H, slots per hash function")
    num_hashes: int = Field(2, ge=1, le=16, description="m")
    alpha: float = Field(
        0.01, gt=0, le=1, description="learning rate of the gap estimate, per sighting (occurrences) or per step"
    )
    first_sighting_gap: float | None = Field(
        None, ge=1, description="occurrences: mean gap in events assumed for an item seen once; None = the batch size"
    )
    initial_gap: float = Field(100.0, gt=0, description="presence only: B_0, the prior mean gap in steps")


class TrainerConfig(_Section):
    batch_size: int = Field(1024, ge=2)
    max_batch_latency_s: float = Field(1.0, gt=0)
    mixed_precision: Literal["auto", "off", "bf16"] = "auto"
    progressive_eval_fraction: float = Field(0.1, ge=0, le=1)
    progressive_eval_window: int = Field(
        50, ge=1, description="progressive Recall/NDCG are rolling averages over this many evaluated steps"
    )
    progressive_eval_max_queries: int = Field(
        256, ge=1, description="events of a batch ranked by the progressive evaluation (bounds its cost)"
    )
    eval_k: list[int] = Field(default_factory=lambda: [10, 20, 50])
    popularity_half_life_events: float = Field(
        20_000.0, gt=0,
        description="half-life, in events, of the counts behind the 'most popular recently' progressive baseline",
    )
    extra_steps: int = Field(
        5, ge=0, le=64, description="optimiser steps per micro-batch beyond the first, each on the batch plus up to "
        "B events drawn from the last replay_window_events (streamtrain/training/replay.py)",
    )
    replay_window_events: int = Field(
        10_240, ge=0, description="recent events the extra steps draw from; 0 = the batch only"
    )
    covisit_neighbours: int = Field(
        200, ge=0,
        description="neighbours kept per item row by the item-to-item co-visitation progressive baseline "
        "(8 bytes each, on the host, committed only for items with events); 0 switches the baseline off",
    )
    exclude_history_items: bool = Field(
        False,
        description="leave each user's own recent items (its last model.history_length) out of the ranking: in "
        "progressive evaluation (model and baselines; a positive among them is a miss) and in `streamtrain "
        "recommend`; needs a history tower",
    )
    probe_interval_steps: int = Field(200, ge=0, description="0 disables the sampling-bias probe")
    probe_batch_size: int = Field(256, ge=1)
    max_steps: int | None = Field(None, ge=1, description="stop after this many steps; None = run forever")
    log_every_steps: int = Field(100, ge=1, description="log events/s, loss and lag every this many steps")
    idle_exit_s: float | None = Field(None, gt=0, description="exit cleanly after this long without events")


class CheckpointConfig(_Section):
    dir: Path = Path("runs/checkpoints")
    interval_events: int = Field(200_000, ge=1)
    interval_s: float = Field(60.0, gt=0)
    keep: int = Field(3, ge=1)
    retry_backoff_s: float = Field(1.0, gt=0)
    max_retry_backoff_s: float = Field(30.0, gt=0)
    record_trained_ranges: bool = Field(
        False,
        description="debug/test: append each trained batch's offset range to Redis inside the checkpoint "
        "transaction, so the committed history can be audited for exactly-once training",
    )


class DistributedConfig(_Section):
    """Ranks under torchrun and the one-job-per-run lease (streamtrain/distributed/)."""

    backend: Literal["auto", "gloo", "nccl"] = Field("auto", description="auto: NCCL on CUDA, gloo on CPU")
    collective_timeout_s: float = Field(
        300.0, gt=0, description="a collective waiting this long fails the rank (a dead peer); torchrun restarts the job"
    )
    lease: bool = Field(
        True, description="one job per run: a Redis lease refuses a second consume at start; false only to "
        "exercise the checkpoint fence behind it (tests)",
    )
    lease_ttl_s: float = Field(
        30.0, ge=0.5, le=3600, description="a holder killed without releasing blocks a restart for at most this long"
    )
    lease_wait_s: float = Field(
        0.0, ge=0, description="a starting job waits this long for a held lease to expire before refusing"
    )
    step: Literal["split", "replicated"] = Field(
        "split", description="W > 1: split (each rank computes its own events' queries; gradients exchanged) or "
        "replicated (every rank computes the whole global step; no gradient exchange); see docs/distributed.md"
    )


class ExportConfig(_Section):
    every_checkpoints: int = Field(
        0, ge=0,
        description="consume publishes an export after every N-th committed checkpoint (0 = off; the demo uses 1); "
        "see streamtrain/serving/publish.py",
    )
    dir: Path = Field(Path("runs/exports"), description="published exports: <dir>/<run>/v-<id>/ and a latest symlink")
    keep: int = Field(3, ge=2, description="published versions kept (>= 2, so a reader of the previous one can finish)")
    index: Literal["hnsw", "flat", "none"] = Field("hnsw", description="FAISS index: HNSW (approximate), flat (exact)")
    hnsw_m: int = Field(32, ge=4, le=256, description="HNSW links per node")
    hnsw_ef_construction: int = Field(40, ge=8, description="HNSW candidate list while building")
    hnsw_ef_search: int = Field(128, ge=1, description="HNSW candidate list per query (recall vs latency)")


def default_ingest_processes(cores: int | None = None) -> int:
    """A quarter of the cores, 1 to 8: the trainer keeps most cores for its step; past ~8 one broker is the
    limit (BENCHMARKS.md, ingest curve)."""
    cores = cores if cores is not None else (os.cpu_count() or 1)
    return max(1, min(8, cores // 4))


class IngestConfig(_Section):
    processes: int | None = Field(
        None, ge=0, le=64, description="ingest processes per trainer that fetch, decode and batch (default: a "
        "quarter of the cores, 1 to 8); 0 decodes on a thread of the trainer process (the old path)"
    )
    id_bytes: int = Field(
        64, ge=8, le=4096, description="average bytes per id a shared-memory slot holds; a batch with longer ids "
        "is sent pickled instead (slower, still correct)"
    )

    @property
    def resolved_processes(self) -> int:
        return default_ingest_processes() if self.processes is None else self.processes


class MetricsConfig(_Section):
    enabled: bool = True
    host: str = "127.0.0.1"
    port: int = Field(9464, ge=0, le=65535, description="0 picks a free port; the actual one is logged")
    ready_stale_s: float = Field(
        60.0, gt=0, description="/readyz fails when data is pending and no step happened for this long"
    )


class Config(_Section):
    """The whole resolved configuration; build it with :func:`load_config`."""

    run: RunConfig = RunConfig()
    kafka: KafkaConfig = KafkaConfig()
    redis: RedisConfig = RedisConfig()
    model: ModelConfig = ModelConfig()
    sampler: SamplerConfig = SamplerConfig()
    frequency: FrequencyConfig = FrequencyConfig()
    trainer: TrainerConfig = TrainerConfig()
    checkpoint: CheckpointConfig = CheckpointConfig()
    export: ExportConfig = ExportConfig()
    metrics: MetricsConfig = MetricsConfig()
    distributed: DistributedConfig = DistributedConfig()
    ingest: IngestConfig = IngestConfig()

    @model_validator(mode="before")
    @classmethod
    def _sampler_temperature(cls, data: Any) -> Any:
        """An unset ``model.temperature`` follows the sampler. BIR/XIR draw negatives ∝ exp(s) and their
        loss weighs each draw by exp(s) again, so they train as if at τ/2: on Gowalla they peak near
        τ = 0.3, the in-batch/uniform family near 0.1 (BENCHMARKS.md, "Retrieval quality")."""
        if not isinstance(data, dict):
            return data
        model, sampler = data.get("model", {}), data.get("sampler", {})
        given = model.model_fields_set if isinstance(model, BaseModel) else model  # keys set explicitly
        if not isinstance(given, (set, dict)) or "temperature" in given:
            return data  # explicit, or not a mapping: validation reports the latter
        name = sampler.name if isinstance(sampler, BaseModel) else (sampler or {}).get("name", "xir")
        update = {"temperature": RESAMPLING_TEMPERATURE if name in ("bir", "xir") else DEFAULT_TEMPERATURE}
        model = model.model_copy(update=update) if isinstance(model, BaseModel) else {**model, **update}
        return {**data, "model": model}

    @model_validator(mode="after")
    def _cross_checks(self) -> "Config":
        if self.trainer.exclude_history_items and self.model.user_features == "id":
            raise ValueError(
                "trainer.exclude_history_items needs the users' recent items, which model.user_features=id does not "
                "keep: set model.user_features to history or history+id, or trainer.exclude_history_items=false"
            )
        if self.kafka.security_protocol.startswith("SASL") and not (
            self.kafka.sasl_mechanism and self.kafka.sasl_username and self.kafka.sasl_password
        ):
            raise ValueError(
                "kafka.security_protocol is SASL_* but kafka.sasl_mechanism, kafka.sasl_username and "
                "kafka.sasl_password are not all set"
            )
        if self.kafka.broker_unreachable_s <= self.kafka.lag_interval_s + 2:
            raise ValueError(
                f"kafka.broker_unreachable_s ({self.kafka.broker_unreachable_s:g}) must exceed kafka.lag_interval_s "
                f"+ 2 s ({self.kafka.lag_interval_s + 2:g}): the end-offsets query every lag_interval_s (2 s "
                "timeout) is what proves the broker reachable; raise broker_unreachable_s or lower lag_interval_s"
            )
        return self
