"""deploy/: compose, Dockerfile, Kubernetes, Prometheus config and alerts, Grafana dashboard, README.

Checks that the assets agree with the code: env vars are real config keys, ports are the metrics port,
every metric the dashboard and alerts read is one streamtrain exports (with labels it has), the run
label is wired the same way everywhere, and the README documents what the files use. External
validators run when installed: ``docker compose config``, ``promtool``, ``kubectl kustomize``.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

# tests/ is on sys.path (pytest puts the directory of tests/conftest.py there).
from deploy_queries import (
    DASHBOARD,
    RULES,
    deploy_queries,
    metric_names,
    strip_thresholds,
)
from prometheus_client import CollectorRegistry
from prometheus_client.metrics import MetricWrapperBase

from streamtrain.config import ENV_PREFIX, Config, load_config
from streamtrain.metrics import Metrics

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
COMPOSE = DEPLOY / "docker-compose.yml"
PROM_CONFIG = DEPLOY / "prometheus/prometheus.yml"
RULE_TESTS = DEPLOY / "prometheus/tests/streamtrain-alerts-test.yml"
K8S = DEPLOY / "k8s"
README = DEPLOY / "README.md"
WORKERS = ("worker", "worker-gpu")
# Labels every series gets from the scrape (target labels), plus the histogram bucket label.
TARGET_LABELS = {"run", "job", "instance", "service", "le"}
# An Info metric's label names are the keys of the dict passed to .info(); the worker passes these
# (streamtrain/worker/build.py), the registry cannot tell them.
BUILD_INFO_LABELS = {"version", "sampler", "device"}


# --------------------------------------------------------------------------- helpers
def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def interpolate(value: Any) -> Any:
    """Compose's ``${VAR:-default}`` with VAR unset: the default."""
    if isinstance(value, str):
        return re.sub(r"\$\{[A-Z_]+:-([^}]*)\}", r"\1", value)
    return value


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return load_yaml(COMPOSE)


def worker_env(compose: dict[str, Any], service: str) -> dict[str, str]:
    return {k: str(interpolate(v)) for k, v in compose["services"][service]["environment"].items()}


def exported_metrics() -> dict[str, set[str]]:
    """Sample name -> label names, for every metric a fresh Metrics registers."""
    metrics = Metrics(CollectorRegistry())
    out: dict[str, set[str]] = {}
    for wrapper in vars(metrics).values():
        if not isinstance(wrapper, MetricWrapperBase):
            continue
        name, kind, labels = wrapper._name, wrapper._type, set(wrapper._labelnames)
        suffixes = {"counter": ["_total"], "histogram": ["_bucket", "_sum", "_count"], "info": ["_info"],
                    "gauge": [""], "summary": ["_sum", "_count"]}[kind]
        if kind == "info":
            labels |= BUILD_INFO_LABELS
        for suffix in suffixes:
            out[name + suffix] = labels | ({"le"} if suffix == "_bucket" else set())
    return out


def k8s_docs() -> list[dict[str, Any]]:
    docs = []
    for path in sorted(K8S.glob("*.yaml")):
        if path.name != "kustomization.yaml":
            docs.extend(d for d in yaml.safe_load_all(path.read_text()) if d)
    return docs


def k8s_kind(kind: str) -> list[dict[str, Any]]:
    return [d for d in k8s_docs() if d["kind"] == kind]


def deployment_container() -> dict[str, Any]:
    (deployment,) = k8s_kind("Deployment")
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    return container


def configmap_toml() -> str:
    (configmap,) = k8s_kind("ConfigMap")
    (text,) = configmap["data"].values()
    return text


def assert_config_keys(names: set[str]) -> None:
    """Each STREAMTRAIN_A__B name is a key load_config accepts (it rejects unknown keys)."""
    for name in names:
        if name == ENV_PREFIX + "CONFIG":
            continue
        assert "__" in name, f"{name} is not a config key (STREAMTRAIN_<SECTION>__<KEY>)"
        path = [p.lower() for p in name[len(ENV_PREFIX):].split("__")]
        node: Any = Config
        for part in path:
            assert part in node.model_fields, f"{name}: `{part}` is not a key of {node.__name__}"
            node = node.model_fields[part].annotation


# --------------------------------------------------------------------------- compose
def test_compose_services_and_kraft(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert {"kafka", "kafka-init", "redis", "worker", "worker-gpu", "prometheus", "grafana"} <= set(services)
    kafka = services["kafka"]
    assert kafka["image"].split(":")[0] == "apache/kafka"
    assert set(kafka["environment"]["KAFKA_PROCESS_ROLES"].split(",")) == {"broker", "controller"}
    assert "zookeeper" not in json.dumps(compose).lower()
    for name, service in services.items():
        for port in service.get("ports", []):
            assert str(port).startswith("127.0.0.1:"), f"{name} publishes {port} on every interface"


def test_compose_worker_config_is_valid_and_consistent(compose: dict[str, Any]) -> None:
    services = compose["services"]
    for name in WORKERS:
        env = worker_env(compose, name)
        assert_config_keys(set(env))
        config = load_config(environ=env)  # raises ConfigError on a bad value
        assert config.kafka.bootstrap_servers == ["kafka:9092"]
        assert config.redis.url.startswith("redis://redis:")
        assert config.redis.password is not None
        assert config.metrics.host == "0.0.0.0"
        mounts = {m.split(":")[1]: m.split(":")[0] for m in services[name]["volumes"]}
        assert any(str(config.checkpoint.dir).startswith(path) for path in mounts), "checkpoints not on a volume"
        assert all(src in compose["volumes"] for src in mounts.values())
        published = {int(p.split(":")[-1]) for p in services[name]["ports"]}
        assert published == {config.metrics.port}
        health = " ".join(services[name]["healthcheck"]["test"])
        assert f":{config.metrics.port}/healthz" in health
        # kafka-init creates the topics the worker reads and dead-letters to
        init = " ".join(services["kafka-init"]["command"])
        assert re.search(rf"for topic in {re.escape(config.kafka.topic)} {re.escape(config.kafka.dead_letter_topic)};",
                         init)
    cpu, gpu = (load_config(environ=worker_env(compose, n)) for n in WORKERS)
    assert cpu.run.name != gpu.run.name and cpu.kafka.group_id != gpu.kafka.group_id
    assert (cpu.run.device, gpu.run.device) == ("cpu", "cuda")


def test_compose_gpu_profile_reserves_an_nvidia_device(compose: dict[str, Any]) -> None:
    gpu = compose["services"]["worker-gpu"]
    assert gpu["profiles"] == ["gpu"]
    (device,) = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and "gpu" in device["capabilities"]
    assert "profiles" not in compose["services"]["worker"]
    assert compose["services"]["worker"]["volumes"] != gpu["volumes"]  # separate checkpoints


def test_compose_mounts_and_build_exist(compose: dict[str, Any]) -> None:
    for name, service in compose["services"].items():
        for mount in service.get("volumes", []):
            source = mount.split(":")[0]
            if source.startswith("./") and "${" not in mount:
                assert (DEPLOY / source).exists(), f"{name} mounts missing {source}"
        build = service.get("build")
        if build:
            assert (DEPLOY / build["context"] / build["dockerfile"]).resolve() == DEPLOY / "Dockerfile"
    prom = compose["services"]["prometheus"]
    assert "./prometheus/prometheus.yml:/etc/prometheus/prometheus.yml:ro" in prom["volumes"]
    rules_mount = next(m for m in prom["volumes"] if m.startswith("./prometheus/rules:"))
    (rule_glob,) = load_yaml(PROM_CONFIG)["rule_files"]
    assert rule_glob == rules_mount.split(":")[1] + "/*.yml"


def _compose_cli() -> list[str] | None:
    if shutil.which("docker"):
        probe = subprocess.run(["docker", "compose", "version"], capture_output=True, check=False)
        if probe.returncode == 0:
            return ["docker", "compose"]
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    return None


def test_docker_compose_config_accepts_the_file() -> None:
    cli = _compose_cli()
    if cli is None:
        pytest.skip("no docker compose client installed (the structural checks above still ran)")
    for profile in ([], ["--profile", "gpu", "--profile", "replay"]):
        done = subprocess.run([*cli, "-f", str(COMPOSE), *profile, "config", "-q"], capture_output=True,
                              text=True, check=False, timeout=60)
        assert done.returncode == 0, done.stderr


# --------------------------------------------------------------------------- Dockerfile
def test_dockerfile_env_port_and_context() -> None:
    text = (DEPLOY / "Dockerfile").read_text()
    env_names = set(re.findall(r"\b(STREAMTRAIN_[A-Z0-9_]+)=", text))
    assert env_names, "the image should set the container defaults through STREAMTRAIN_* variables"
    assert_config_keys(env_names)
    env = dict(re.findall(r"\b(STREAMTRAIN_[A-Z0-9_]+)=(\S+)", text))
    config = load_config(environ=env)
    assert re.search(rf"^EXPOSE {config.metrics.port}$", text, re.MULTILINE)
    assert config.metrics.host == "0.0.0.0"
    assert 'ENTRYPOINT ["streamtrain"]' in text and 'CMD ["consume"]' in text
    assert re.search(r"^USER \d+", text, re.MULTILINE), "run as a non-root user"
    ignore = (DEPLOY / "Dockerfile.dockerignore").read_text().split()
    for needed in ("pyproject.toml", "README.md", "schemas/", "streamtrain/"):
        assert f"!{needed}" in ignore
        assert (REPO / needed).exists()


# --------------------------------------------------------------------------- Prometheus
def test_scrape_config_labels_each_worker_with_its_run(compose: dict[str, Any]) -> None:
    config = load_yaml(PROM_CONFIG)
    (job,) = [j for j in config["scrape_configs"] if j["job_name"] == "streamtrain"]
    (dns,) = job["dns_sd_configs"]
    assert set(dns["names"]) == set(WORKERS)
    run_by_service = {}
    for rule in job["relabel_configs"]:
        if rule.get("target_label") == "run":
            assert rule["source_labels"] == ["__meta_dns_name"]
            run_by_service[rule["regex"]] = rule["replacement"]
    for service in WORKERS:
        worker = load_config(environ=worker_env(compose, service))
        assert run_by_service[service] == worker.run.name
        assert dns["port"] == worker.metrics.port


def _promtool() -> str:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool is not installed (Debian package prometheus ships it)")
    return promtool


def test_promtool_checks_config_and_rules(tmp_path: Path) -> None:
    promtool = _promtool()
    # The config's rule glob is a container path; point a copy at the repository's rules.
    config = load_yaml(PROM_CONFIG)
    config["rule_files"] = [str(RULES.parent / "*.yml")]
    copy = tmp_path / "prometheus.yml"
    copy.write_text(yaml.safe_dump(config))
    for args in (["check", "config", str(copy)], ["check", "rules", str(RULES)],
                 ["test", "rules", str(RULE_TESTS)]):
        done = subprocess.run([promtool, *args], capture_output=True, text=True, check=False, timeout=60)
        assert done.returncode == 0, f"promtool {' '.join(args)}:\n{done.stdout}\n{done.stderr}"


def test_alert_rules_cover_the_required_failures() -> None:
    rules = [r for g in load_yaml(RULES)["groups"] for r in g["rules"]]
    by_name = {r["alert"]: r for r in rules}
    required = {
        "StreamtrainConsumerLagGrowing": "streamtrain_consumer_lag_messages",
        "StreamtrainNoTrainingProgress": "streamtrain_last_train_timestamp_seconds",
        "StreamtrainDeadLetterRateHigh": "streamtrain_events_dead_lettered_total",
        "StreamtrainCheckpointFailing": "streamtrain_checkpoints_total",
        "StreamtrainCheckpointStale": "streamtrain_last_checkpoint_timestamp_seconds",
    }
    for alert, metric in required.items():
        assert metric in metric_names(by_name[alert]["expr"])
    tested = load_yaml(RULE_TESTS)
    tested_alerts = {case["alertname"] for test in tested["tests"] for case in test["alert_rule_test"]}
    for rule in rules:
        assert rule["labels"]["severity"] in {"warning", "critical"}
        assert rule["annotations"]["summary"] and "for" in rule
        # every aggregation keeps the run label, so one alert fires per run
        for grouping in re.findall(r"\b(?:by|on)\s*\(([^)]*)\)", rule["expr"]):
            assert "run" in [g.strip() for g in grouping.split(",")], f"{rule['alert']}: {grouping}"
        assert rule["alert"] in tested_alerts, f"{rule['alert']} has no promtool test"


# --------------------------------------------------------------------------- metric names and labels
def _label_names_used(expr: str) -> set[str]:
    used: set[str] = set()
    for block in re.findall(r"\{([^}]*)\}", expr):
        used.update(re.findall(r"([a-zA-Z_][a-zA-Z0-9_]*)\s*(?:=~|!~|!=|=)", block))
    for grouping in re.findall(r"\b(?:by|on|without|ignoring)\s*\(([^)]*)\)", expr):
        used.update(g.strip() for g in grouping.split(",") if g.strip())
    return used


def test_every_queried_metric_and_label_exists() -> None:
    exported = exported_metrics()
    queries = deploy_queries()
    assert len(queries) > 30
    for q in queries:
        names = metric_names(q.expr)
        # `up` is written by Prometheus per target and carries only target labels (StreamtrainWorkerDown).
        reads_up = re.search(r"\bup\s*\{", q.expr) is not None
        assert names or reads_up, f"{q.name}: reads no streamtrain metric: {q.expr}"
        unknown = names - set(exported)
        assert not unknown, f"{q.source} {q.name!r} reads {sorted(unknown)}, not exported by streamtrain.metrics"
        allowed = set().union(set(), *(exported[n] for n in names)) | TARGET_LABELS
        stray = _label_names_used(q.expr) - allowed
        assert not stray, f"{q.source} {q.name!r} uses labels {sorted(stray)} that {sorted(names)} do not have"


def test_dashboard_shows_every_metric() -> None:
    exported = exported_metrics()
    shown = set().union(*(metric_names(q.expr) for q in deploy_queries() if q.source == "dashboard"))
    families = {re.sub(r"_(bucket|sum|count)$", "", n) for n in exported}
    shown_families = {re.sub(r"_(bucket|sum|count)$", "", n) for n in shown}
    missing = families - shown_families
    assert not missing, f"no dashboard panel shows {sorted(missing)}: add one to {DASHBOARD.name}"


def test_metric_name_check_catches_a_typo() -> None:
    exported = exported_metrics()
    assert "streamtrain_events_consumed_total" in exported
    assert "streamtrain_events_consumed" not in exported  # counters are read with _total
    assert "streamtrain_step_duration_seconds_bucket" in exported
    assert "streamtrain_build_info" in exported
    assert exported["streamtrain_checkpoints_total"] == {"outcome"}


# --------------------------------------------------------------------------- Grafana
def test_dashboard_filters_every_query_by_run() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["run"]["definition"] == "label_values(streamtrain_build_info, run)"
    assert variables["run"]["multi"] and variables["run"]["includeAll"]
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            selectors = re.findall(r"\bstreamtrain_[a-z_]+[a-z](\{[^}]*\})?", target["expr"])
            assert selectors and all('run=~"$run"' in s for s in selectors), (panel["title"], target["expr"])
            assert panel["datasource"]["uid"] == "${datasource}"
            by_labels = set(re.findall(r"by\s*\(([^)]*)\)", target["expr"]))
            grouped = {g.strip() for group in by_labels for g in group.split(",")}
            for label in re.findall(r"\{\{\s*(\w+)\s*\}\}", target.get("legendFormat", "")):
                assert label in grouped, f"{panel['title']}: legend uses {label} but the query drops it"


def test_dashboard_layout_and_provisioning() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    cells: dict[tuple[int, int], str] = {}
    for panel in dashboard["panels"]:
        pos = panel["gridPos"]
        assert 0 <= pos["x"] and pos["x"] + pos["w"] <= 24
        for x in range(pos["x"], pos["x"] + pos["w"]):
            for y in range(pos["y"], pos["y"] + pos["h"]):
                assert (x, y) not in cells, f"{panel['title']} overlaps {cells[(x, y)]}"
                cells[(x, y)] = panel["title"]
    titles = " ".join(p["title"] for p in dashboard["panels"] if p["type"] == "row").lower()
    for topic in ("throughput", "loss", "lag", "sampling bias", "progressive", "checkpoints", "errors", "model"):
        assert topic in titles
    datasources = load_yaml(DEPLOY / "grafana/provisioning/datasources/prometheus.yml")["datasources"]
    (prom,) = datasources
    assert prom["type"] == "prometheus" and prom["url"] == "http://prometheus:9090"
    assert next(v for v in dashboard["templating"]["list"] if v["name"] == "datasource")["current"]["value"] == prom["uid"]
    (provider,) = load_yaml(DEPLOY / "grafana/provisioning/dashboards/streamtrain.yml")["providers"]
    grafana = load_yaml(COMPOSE)["services"]["grafana"]
    assert f"./grafana/dashboards:{provider['options']['path']}:ro" in grafana["volumes"]


# --------------------------------------------------------------------------- Kubernetes
def test_k8s_manifests_parse_and_reference_each_other() -> None:
    kinds = sorted(d["kind"] for d in k8s_docs())
    assert kinds == ["ConfigMap", "Deployment", "Namespace", "PersistentVolumeClaim", "Secret", "Service"]
    kustomization = load_yaml(K8S / "kustomization.yaml")
    assert sorted(kustomization["resources"]) == sorted(p.name for p in K8S.glob("*.yaml")
                                                          if p.name != "kustomization.yaml")
    (deployment,) = k8s_kind("Deployment")
    pod = deployment["spec"]["template"]
    container = deployment_container()
    volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
    (configmap,) = k8s_kind("ConfigMap")
    (pvc,) = k8s_kind("PersistentVolumeClaim")
    assert volumes["config"]["configMap"]["name"] == configmap["metadata"]["name"]
    assert volumes["checkpoints"]["persistentVolumeClaim"]["claimName"] == pvc["metadata"]["name"]
    assert {m["name"] for m in container["volumeMounts"]} == set(volumes)
    (secret,) = k8s_kind("Secret")
    for env in container["env"]:
        ref = env.get("valueFrom", {}).get("secretKeyRef")
        if ref:
            assert ref["name"] == secret["metadata"]["name"] and ref["key"] in secret["stringData"]
    assert set(deployment["spec"]["selector"]["matchLabels"].items()) <= set(pod["metadata"]["labels"].items())
    assert deployment["spec"]["strategy"]["type"] == "Recreate"  # one writer per checkpoint volume


def test_k8s_config_env_probes_and_service_agree(tmp_path: Path) -> None:
    container = deployment_container()
    (secret,) = k8s_kind("Secret")
    env: dict[str, str] = {}
    for item in container["env"]:
        ref = item.get("valueFrom", {}).get("secretKeyRef")
        env[item["name"]] = secret["stringData"][ref["key"]] if ref else item["value"]
    assert_config_keys(set(env))
    config_path = Path(env[ENV_PREFIX + "CONFIG"])
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    assert str(config_path.parent) == mounts["config"]
    (configmap,) = k8s_kind("ConfigMap")
    assert config_path.name in configmap["data"]
    tomllib.loads(configmap_toml())  # valid TOML before anything else

    local = tmp_path / config_path.name
    local.write_text(configmap_toml())
    config = load_config(local, environ={k: v for k, v in env.items() if k != ENV_PREFIX + "CONFIG"})
    assert config.redis.password is not None and config.redis.password.get_secret_value() == "change-me"
    assert config.metrics.host == "0.0.0.0"
    assert str(config.checkpoint.dir).startswith(mounts["checkpoints"] + "/")

    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports["metrics"] == config.metrics.port
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}
    (service,) = k8s_kind("Service")
    (port,) = service["spec"]["ports"]
    assert port["targetPort"] == "metrics" and port["port"] == config.metrics.port
    annotations = service["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/port"] == str(config.metrics.port)
    assert annotations["prometheus.io/path"] == "/metrics"
    (deployment,) = k8s_kind("Deployment")
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert set(service["spec"]["selector"].items()) <= set(pod_labels.items())
    assert pod_labels["streamtrain.io/run"] == config.run.name == service["metadata"]["labels"]["streamtrain.io/run"]


def test_kubectl_kustomize_renders() -> None:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not installed")
    done = subprocess.run([kubectl, "kustomize", str(K8S)], capture_output=True, text=True, check=False, timeout=60)
    assert done.returncode == 0, done.stderr
    rendered = [d for d in yaml.safe_load_all(done.stdout) if d]
    assert len(rendered) == 6
    assert all(d["metadata"].get("namespace") == "streamtrain" for d in rendered if d["kind"] != "Namespace")


# --------------------------------------------------------------------------- README
def test_readme_documents_env_vars_ports_and_alerts(compose: dict[str, Any]) -> None:
    readme = README.read_text()
    documented = set(re.findall(r"\b(STREAMTRAIN_[A-Z0-9_]*[A-Z0-9])\b", readme))
    used = set()
    for service in compose["services"].values():
        used.update(k for k in service.get("environment", {}) if k.startswith(ENV_PREFIX))
    used.update(e["name"] for e in deployment_container()["env"])
    used.update(re.findall(r"\b(STREAMTRAIN_[A-Z0-9_]+)=", (DEPLOY / "Dockerfile").read_text()))
    assert used - documented == set(), f"deploy/README.md does not mention {sorted(used - documented)}"
    assert_config_keys(documented)  # and mentions no variable that is not a config key

    published = set()
    for name, service in compose["services"].items():
        for port in service.get("ports", []):
            host, container = port.split(":")[1:]
            published.add((name, f"127.0.0.1:{host}", container))
    rows = set(re.findall(r"^\|\s*`?([a-z-]+)`?\s*\|\s*`?(127\.0\.0\.1:\d+)`?\s*\|\s*`?(\d+)`?\s*\|", readme, re.MULTILINE))
    assert rows == published

    for rule in (r for g in load_yaml(RULES)["groups"] for r in g["rules"]):
        assert rule["alert"] in readme


def test_strip_thresholds_keeps_the_left_operand() -> None:
    assert strip_thresholds("sum by (run) (rate(a[5m])) > 0.1") == "sum by (run) (rate(a[5m]))"
    assert strip_thresholds("(time() - max by (run) (x)) > 600\nand on (run) y > 0") == "(time() - max by (run) (x))"
    assert strip_thresholds("a / b > 0.01") == "a / b"
    assert strip_thresholds("a{x=\"1 > 2\"}") == 'a{x="1 > 2"}'
