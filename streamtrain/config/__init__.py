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


from streamtrain.config.base import (
    DEFAULT_TEMPERATURE,
    ENV_PREFIX,
    RESAMPLING_TEMPERATURE,
    SamplerName,
)
from streamtrain.config.load import dump_config, load_config, validate_tree
from streamtrain.config.sampler import (
    BirParams,
    CbnsParams,
    MnsParams,
    SamplerConfig,
    UniformParams,
    XirParams,
)
from streamtrain.config.schema import (
    BOOTSTRAP_FORMS,
    CheckpointConfig,
    Config,
    DistributedConfig,
    ExportConfig,
    FrequencyConfig,
    IngestConfig,
    KafkaConfig,
    MetricsConfig,
    ModelConfig,
    RedisConfig,
    RunConfig,
    TrainerConfig,
    default_ingest_processes,
)

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
    "BOOTSTRAP_FORMS",
    "DEFAULT_TEMPERATURE",
    "RESAMPLING_TEMPERATURE",
    "BirParams",
    "CbnsParams",
    "MnsParams",
    "UniformParams",
    "XirParams",
    "default_ingest_processes",
]
