"""One typed, validated configuration tree: file → ``STREAMTRAIN_*`` environment → flags.

Every section is a frozen pydantic model with ``extra="forbid"``, so a typo'd key fails at start
with a :class:`~streamtrain.errors.ConfigError` that names the key and suggests the fix.
Secrets are ``SecretStr`` and print as ``**********``.

Sources, later ones win:

1. a TOML (``.toml``) or YAML (``.yaml``/``.yml``) file,
2. environment variables ``STREAMTRAIN_<SECTION>__<KEY>`` (``__`` separates levels; values are
   parsed as JSON when they parse, e.g. ``STREAMTRAIN_TRAINER__BATCH_SIZE=512``),
3. ``--set section.key=value`` flags (same value parsing).
"""

from __future__ import annotations

import difflib
import json
import os
import tomllib
import types
import typing
from pathlib import Path
from typing import Any, Literal, Mapping, Sequence

import yaml
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator, model_validator

from streamtrain.errors import ConfigError

__all__ = [
    "SamplerName",
    "Config",
    "RunConfig",
    "KafkaConfig",
    "RedisConfig",
    "ModelConfig",
    "SamplerConfig",
    "FrequencyConfig",
    "TrainerConfig",
    "CheckpointConfig",
    "MetricsConfig",
    "ExportConfig",
    "DistributedConfig",
    "IngestConfig",
    "load_config",
    "validate_tree",
    "dump_config",
    "ENV_PREFIX",
]

ENV_PREFIX = "STREAMTRAIN_"
DEFAULT_TEMPERATURE = 0.1
RESAMPLING_TEMPERATURE = 0.3
_MASK = "**********"

SamplerName = Literal["full", "uniform", "inbatch", "inbatch_logq", "mns", "cbns", "bir", "xir"]
"""Every sampler a config may name; :mod:`streamtrain.sampling` checks its registry against it."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)


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
    optimizer: Literal["adam", "adagrad", "sgd"] = "adam"
    learning_rate: float = Field(0.05, gt=0, description="row-wise Adam's best on Gowalla (bench/quality.py)")
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


class UniformParams(_Section):
    num_negatives: int = Field(1024, ge=1)


class MnsParams(_Section):
    num_uniform: int = Field(1024, ge=1, description="B' uniform items mixed with the batch")


class CbnsParams(_Section):
    bank_size: int = Field(4096, ge=1)
    warmup_steps: int = Field(100, ge=0)


Resampler = Literal["multinomial", "systematic"]
_RESAMPLING_HELP = "how draws are taken from the importance weights; systematic is cheaper (sampling/resampling.py)"


class BirParams(_Section):
    num_samples: int | None = Field(None, ge=1, description="R draws per query; None = batch size")
    resampling: Resampler = Field("multinomial", description=_RESAMPLING_HELP)


class XirParams(_Section):
    cache_size: int | None = Field(None, ge=1, description="C cached ids; None = batch size")
    cache_draws: int | None = Field(None, ge=1, description="K_u per query; None = C/2")
    batch_draws: int | None = Field(None, ge=1, description="R_u per query; None = B/2")
    mix_lambda: float = Field(
        0.2, ge=0, le=1,
        description="weight of the cache term; 0.2 measured best on Gowalla (0.5, the paper's, lost; BENCHMARKS.md)",
    )
    resampling: Resampler = Field("multinomial", description=_RESAMPLING_HELP)
    occurrence_half_life_steps: float | None = Field(
        1000.0, ge=0, description="o's draw counts halve every this many steps (follows drift); None or 0 = never"
    )


class SamplerConfig(_Section):
    name: SamplerName = "xir"
    uniform: UniformParams = UniformParams()
    mns: MnsParams = MnsParams()
    cbns: CbnsParams = CbnsParams()
    bir: BirParams = BirParams()
    xir: XirParams = XirParams()


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


def _section_of(path: Sequence[Any]) -> type[BaseModel] | None:
    """The section model that holds ``path``'s last key (None when a parent is not a section)."""
    model: type[BaseModel] = Config
    for part in path[:-1]:
        annotation = getattr(model.model_fields.get(str(part)), "annotation", None)
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return None
        model = annotation
    return model


def _wants_text(path: Sequence[str]) -> bool:
    """Whether the field at ``path`` holds text (str, secret, string enum), so a value like
    ``2024`` or ``123456`` must stay the string it was typed as."""
    section = _section_of(path) if path else None
    field = section.model_fields.get(path[-1]) if section is not None else None
    if field is None:
        return False  # unknown key: validation names it later
    annotation = field.annotation
    if typing.get_origin(annotation) is Literal:
        return all(isinstance(option, str) for option in typing.get_args(annotation))
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        options = [o for o in typing.get_args(annotation) if o is not type(None)]
        return bool(options) and all(o in (str, SecretStr) for o in options)
    return annotation in (str, SecretStr)


def _parse_scalar(text: str, path: Sequence[str]) -> Any:
    """Read a flag or env value: raw text for text fields, else JSON when it parses
    (numbers, bools, lists, null), else the raw string for pydantic to judge.

    A text field given as a JSON string literal (``"123456"`` with the quotes) gets the string
    inside: quoting is never needed, but whoever quotes a JSON-looking password out of habit must
    not end up with the quotes in it."""
    if _wants_text(path) and text != "null":  # ``null`` still clears an optional text field
        if len(text) >= 2 and text[0] == text[-1] == '"':
            try:
                decoded = json.loads(text)
            except ValueError:
                return text
            if isinstance(decoded, str):
                return decoded
        return text
    try:
        return json.loads(text)
    except ValueError:
        return text


def _set_path(tree: dict[str, Any], path: Sequence[str], value: Any) -> None:
    node = tree
    for part in path[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"`{'.'.join(path)}`: `{part}` is a value, not a section")
        node = child
    node[path[-1]] = value


def _read_file(path: Path) -> dict[str, Any]:
    if not path.exists():
        raise ConfigError(f"config file {path} does not exist; fix the --config path or STREAMTRAIN_CONFIG")
    text = path.read_text()
    try:
        data = tomllib.loads(text) if path.suffix == ".toml" else yaml.safe_load(text)
    except (tomllib.TOMLDecodeError, yaml.YAMLError) as exc:
        raise ConfigError(f"config file {path} is not valid {path.suffix.lstrip('.').upper()}: {exc}") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping of sections at the top level")
    return data


def _env_overrides(environ: Mapping[str, str]) -> dict[str, Any]:
    tree: dict[str, Any] = {}
    for name, value in environ.items():
        if not name.startswith(ENV_PREFIX) or "__" not in name:
            continue  # STREAMTRAIN_CONFIG, STREAMTRAIN_STACK_* etc. are not config keys
        path = [part.lower() for part in name[len(ENV_PREFIX):].split("__")]
        _set_path(tree, path, _parse_scalar(value, path))
    return tree


def _merge(base: dict[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def _explain(exc: ValidationError) -> str:
    lines = ["invalid configuration:"]
    for err in exc.errors():
        loc = [str(p) for p in err["loc"]]
        key = ".".join(loc) or "(top level)"
        env = ENV_PREFIX + "__".join(p.upper() for p in loc)
        if err["type"] == "extra_forbidden":
            section = _section_of(loc)  # did-you-mean among the keys valid beside it
            close = difflib.get_close_matches(loc[-1], list(section.model_fields) if section else [], n=1)
            hint = f"did you mean `{'.'.join(loc[:-1] + close)}`?" if close else "remove it"
            lines.append(f"  - `{key}`: unknown key; {hint}")
        else:
            shown = "<hidden>" if "password" in key else repr(err.get("input"))
            lines.append(
                f"  - `{key}`: {err['msg']} (got {shown}); fix it in the config file, {env}, or --set {key}=..."
            )
    return "\n".join(lines)


def load_config(
    path: str | Path | None = None,
    *,
    overrides: Sequence[str] = (),
    environ: Mapping[str, str] | None = None,
) -> Config:
    """Resolve the configuration from a file, the environment and ``key=value`` overrides.

    Called once at start by the CLI. Raises :class:`ConfigError` naming every bad key.
    """
    environ = os.environ if environ is None else environ
    path = path or environ.get(ENV_PREFIX + "CONFIG")
    tree = _read_file(Path(path)) if path else {}
    tree = _merge(tree, _env_overrides(environ))
    return validate_tree(tree, overrides)


def validate_tree(tree: Mapping[str, Any], overrides: Sequence[str] = ()) -> Config:
    """``tree`` (plain nested data) with ``section.key=value`` ``overrides`` applied, validated.

    The last step of :func:`load_config`; benches that build a base tree in code use it to honour
    ``--set`` exactly like the CLI. Raises :class:`ConfigError` naming every bad key."""
    tree = dict(tree)
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set expects section.key=value, got {item!r}")
        flag_tree: dict[str, Any] = {}
        parts = key.strip().split(".")
        _set_path(flag_tree, parts, _parse_scalar(value, parts))
        tree = _merge(tree, flag_tree)
    try:
        return Config.model_validate(tree)
    except ValidationError as exc:
        raise ConfigError(_explain(exc)) from None


def dump_config(config: Config) -> dict[str, Any]:
    """The resolved config as plain data, secrets replaced by a mask (safe to print or log)."""

    def mask(value: Any) -> Any:
        if isinstance(value, SecretStr):
            return _MASK
        if isinstance(value, BaseModel):
            return {name: mask(getattr(value, name)) for name in type(value).model_fields}
        if isinstance(value, Path):
            return str(value)
        if isinstance(value, list):
            return [mask(v) for v in value]
        return value

    return mask(config)
