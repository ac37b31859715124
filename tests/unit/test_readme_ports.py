"""The top-level README's ports and variables agree with the code defaults and the deploy manifests.

tests/unit/test_deploy_assets.py checks deploy/README.md against compose, Kubernetes and the Dockerfile;
this checks what README.md itself promises: the local stack's ports, the worker's metrics port (the same
container port in compose, Kubernetes and the Dockerfile) and the example environment variables.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from streamtrain.config import Config, MetricsConfig, load_config
from streamtrain.localstack import StackAddresses

REPO = Path(__file__).resolve().parents[2]
README = (REPO / "README.md").read_text()
DEPLOY = REPO / "deploy"


def _k8s(kind: str) -> dict[str, Any]:
    docs = [d for p in sorted((DEPLOY / "k8s").glob("*.yaml")) for d in yaml.safe_load_all(p.read_text()) if d]
    (doc,) = [d for d in docs if d.get("kind") == kind]
    return doc


def test_readme_local_stack_ports_are_the_defaults() -> None:
    stack = StackAddresses.from_env({})
    line = next(line for line in README.splitlines() if "scripts/local-stack start" in line and "Kafka" in line)
    ports = {name: int(port) for name, port in re.findall(r"(Kafka|Redis|Prometheus)\D*?(\d{4,5})", line)}
    assert ports == {"Kafka": stack.kafka_port, "Redis": stack.redis_port, "Prometheus": stack.prometheus_port}
    assert f"http://127.0.0.1:{stack.prometheus_port}" in README


def test_readme_metrics_port_is_the_one_every_manifest_uses() -> None:
    port = MetricsConfig().port
    assert f"`/metrics` on http://127.0.0.1:{port}" in " ".join(README.split())
    (container,) = _k8s("Deployment")["spec"]["template"]["spec"]["containers"]
    assert {p["name"]: p["containerPort"] for p in container["ports"]}["metrics"] == port
    (service_port,) = _k8s("Service")["spec"]["ports"]
    assert service_port["port"] == port
    compose = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())
    for name in ("worker", "worker-gpu"):
        (published,) = compose["services"][name]["ports"]
        assert published.rsplit(":", 1)[1] == str(port), f"compose {name} publishes {published}"
    dockerfile = (DEPLOY / "Dockerfile").read_text()
    assert re.search(rf"^EXPOSE {port}$", dockerfile, re.MULTILINE)
    assert f"STREAMTRAIN_METRICS__PORT={port}" in dockerfile


def test_readme_example_variables_are_config_keys() -> None:
    names = set(re.findall(r"\b(STREAMTRAIN_[A-Z0-9_]*[A-Z0-9])\b", README))
    assert "STREAMTRAIN_CONFIG" in names
    examples = re.findall(r"`(STREAMTRAIN_[A-Z0-9_]+__[A-Z0-9_]+)=([^`]+)`", README)
    assert examples, "README.md shows no STREAMTRAIN_<SECTION>__<KEY>=value example"
    for name, value in examples:
        config: Config = load_config(environ={name: value})  # unknown keys and bad values raise
        section, key = name.removeprefix("STREAMTRAIN_").lower().split("__", 1)
        assert str(getattr(getattr(config, section), key)) == value
