"""The demo's configuration: the user's (file, env, ``--set``) with demo defaults for keys the user left unset.

Always set, so every run is separate: ``run.name``, ``kafka.topic``, ``kafka.group_id`` and
``kafka.dead_letter_topic``. Defaults (any of them can be overridden with ``--set``): the local stack's
Kafka and Redis, XIR, the hyper-parameters ``bench/quality.py`` tuned on Gowalla (D=64, lr 0.05,
XIR's λ=0.2; τ follows the sampler as in the config: 0.3 for bir/xir, 0.1 otherwise; see
BENCHMARKS.md, "Retrieval quality"), table capacities sized to the dataset instead of 1M rows (small checkpoints), progressive
evaluation on a quarter of the steps with a short rolling window (the demo is short),
checkpoints under ``<out>/checkpoints``, and an export published after every committed checkpoint
under ``<out>/exports/<run>`` (``latest`` follows training).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from streamtrain.config import Config
from streamtrain.errors import ConfigError
from streamtrain.localstack import StackAddresses

__all__ = ["DEFAULT_EPOCHS", "DEFAULT_USERS", "demo_config", "run_names"]

# The default stream: 5,000 sampled users with all their events, 4 passes (~550k events); sized so the
# whole demo takes 2-4 minutes on a 2-core CPU (see streamtrain.demo.runner for the measurements).
DEFAULT_USERS = 5_000
DEFAULT_EPOCHS = 4


def run_names(run: str) -> dict[str, str]:
    """Topic, consumer group and dead-letter topic of a demo run."""
    topic = f"streamtrain-demo-{run}"
    return {"topic": topic, "group_id": topic, "dead_letter_topic": f"{topic}.dead-letter"}


def _defaults(n_users: int, n_items: int, out_root: Path) -> dict[str, dict[str, Any]]:
    stack = StackAddresses.from_env()
    return {
        "kafka": {"bootstrap_servers": [stack.kafka_bootstrap]},
        "redis": {"url": stack.redis_url},
        "model": {
            "embedding_dim": 64,
            "learning_rate": 0.05,
            "user_capacity": n_users + 1,  # + the fallback row
            "item_capacity": n_items + 1,
        },
        "sampler": {"name": "xir"},
        "frequency": {"hash_size": 1 << 18},
        "trainer": {
            "batch_size": 1024,
            "progressive_eval_fraction": 0.25,
            "progressive_eval_window": 10,
            "log_every_steps": 50,
            # The demo replays its events several times, which is what extra steps buy a one-pass
            # stream; without them its time budget holds (each extra step costs about one step).
            "extra_steps": 0,
        },
        "checkpoint": {"dir": out_root / "checkpoints"},
        # Served embeddings follow training: an export after every committed checkpoint.
        "export": {"every_checkpoints": 1, "dir": out_root / "exports"},
    }


def demo_config(base: Config, run: str, *, n_users: int, n_items: int, out_root: Path) -> Config:
    """``base`` plus the demo's names and defaults (see the module docstring); raises ConfigError."""
    tree = base.model_dump()
    for section, values in _defaults(n_users, n_items, out_root).items():
        explicit = getattr(base, section).model_fields_set  # keys the file/env/--set gave
        for key, value in values.items():
            if key not in explicit:
                tree[section][key] = value
    tree["run"]["name"] = run
    tree["kafka"].update(run_names(run))
    try:
        return Config.model_validate(tree)
    except ValueError as exc:  # pydantic's ValidationError
        raise ConfigError(f"demo configuration: {exc}") from exc
