"""The demo run, end to end (:func:`run_demo`); ``streamtrain demo`` prints what it returns.

Steps, in order:

1. read Gowalla train+valid (the replay library's ``EventLog``); draw a seeded sample of ``users``
   users (all with ``--full``) and take *all* their events; the stream is ``epochs`` passes over
   them, each in its own seeded shuffle (why users, and why passes: below);
2. resolve the configuration (:mod:`streamtrain.demo.settings`) with a run name unique to this run;
3. create the run's topic and replay the stream through the replay library's producer;
4. build the worker exactly as ``streamtrain consume --fresh --idle-exit S`` does
   (:func:`streamtrain.worker.build.build_worker`), its engine wrapped in a
   :class:`~streamtrain.demo.recording.StepRecorder`; register its ``/metrics`` as a Prometheus scrape
   target labelled ``run=<run>``; train until the topic is drained (idle exit, with the final
   checkpoint) or ``max_seconds`` passed;
5. read the final ``streamtrain_events_trained_total`` back from Prometheus (best effort: a missing
   Prometheus is reported, not fatal), then stop the metrics server and drop the scrape target;
6. evaluate the newest checkpoint on the Gowalla test items of the sampled users with
   ``streamtrain eval``'s code, each user's train+valid items excluded (the paper's protocol), and
   export it (``streamtrain export``'s format) to ``<out>/<run>/export``;
7. write ``report.json``, ``steps.csv`` and ``demo.png`` to ``<out>/<run>/``; delete the topic unless
   asked to keep it.

Why a sample of users with their whole history, replayed a few times: the model needs many updates per
row. Measured with the Trainer (inbatch_logq, D=64, B=1024, Recall@20 on test): a random 300k-event
sample in one pass stays at chance (0.001; each user's history is only partly seen), one pass over all
810k events reaches 0.028, and 6,000 users x 3 passes (494k events) 0.044; bench/quality.py's 4 passes
over everything reach 0.136. The default (5,000 users x 4 passes, ~550k events) fits the 2-4 minutes
the demo may take on 2 CPU cores.

Failures raise :class:`DemoError` with what went wrong and what to check.
"""

from __future__ import annotations

import contextlib
import logging
import math
import shutil
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from streamtrain.serving.checkpoint_eval import evaluate_checkpoint
from streamtrain.config import Config, dump_config
from streamtrain.data.gowalla import DEFAULT_GOWALLA_DIR, DatasetError, gowalla_file
from streamtrain.data.interactions import Interactions, read_interactions
from streamtrain.demo import report as demo_report
from streamtrain.demo.recording import StepRecorder
from streamtrain.demo.settings import DEFAULT_EPOCHS, DEFAULT_USERS, demo_config
from streamtrain.errors import StreamtrainError
from streamtrain.events.batch import object_array
from streamtrain.localstack import REPO_ROOT, StackAddresses, StackError, register_scrape_target, wait_for_sample
from streamtrain.replay import EventLog, ProducerSettings, kafka_producer, produce_chunks, read_log
from streamtrain.serving.ann import IndexSpec
from streamtrain.serving.checkpoint_model import choose_checkpoint, load_checkpoint
from streamtrain.serving.export_format import read_export, resolve_export, write_export

__all__ = ["DemoError", "DemoOptions", "run_demo"]

log = logging.getLogger(__name__)

GRAFANA_DASHBOARD = REPO_ROOT / "deploy/grafana/dashboards/streamtrain.json"
_STOP_BOUND_S = 60.0


class DemoError(StreamtrainError):
    """The demo could not finish; the message names the step and what to check."""


@dataclass(frozen=True)
class DemoOptions:
    """What ``streamtrain demo`` takes on its command line."""

    data_dir: Path = DEFAULT_GOWALLA_DIR
    users: int | None = DEFAULT_USERS  # None: every user
    epochs: int = DEFAULT_EPOCHS
    seed: int = 0
    run: str | None = None  # default: demo-<UTC time>-<4 hex>
    partitions: int = 1
    idle_exit_s: float = 5.0
    max_seconds: float | None = None
    out_root: Path = Path("runs")
    eval_users: int | None = None
    keep_topic: bool = False


def _run_name() -> str:
    return f"demo-{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}-{uuid.uuid4().hex[:4]}"


def _natural(user: str) -> tuple[int, str]:
    return (int(user), "") if user.isdigit() else (1 << 62, user)


def _split_files(data_dir: Path) -> dict[str, Path]:
    """train/valid/test files of ``data_dir`` (``.txt`` or the shipped ``.txt.gz``)."""
    try:
        return {split: gowalla_file(data_dir, split) for split in ("train", "valid", "test")}
    except DatasetError as exc:
        raise DemoError(f"Gowalla files missing: {exc} (see streamtrain/data/gowalla/README.md)") from None


def _read_train(data_dir: Path) -> EventLog:
    files = _split_files(data_dir)
    event_log, read = read_log([files["train"], files["valid"]], fmt="gowalla")
    if read.bad_total:
        log.warning("%d bad lines in %s skipped", read.bad_total, data_dir)
    return event_log


def _create_topic(config: Config, partitions: int) -> None:
    from kafka import KafkaAdminClient
    from kafka.admin import NewTopic
    from kafka.errors import KafkaError

    from streamtrain.worker.build import kafka_client_options

    try:
        admin = KafkaAdminClient(**kafka_client_options(config))
        try:
            admin.create_topics([NewTopic(config.kafka.topic, partitions, 1)], wait_for_metadata=True)
        finally:
            admin.close()
    except KafkaError as exc:
        raise DemoError(
            f"cannot create topic {config.kafka.topic!r} on {', '.join(config.kafka.bootstrap_servers)}: {exc!r}; "
            "is the local stack running? (scripts/local-stack start)"
        ) from exc


def _delete_topics(config: Config) -> None:
    from kafka import KafkaAdminClient

    from streamtrain.worker.build import kafka_client_options

    try:
        admin = KafkaAdminClient(**kafka_client_options(config))
        try:
            existing = set(admin.list_topics())
            doomed = [t for t in (config.kafka.topic, config.kafka.dead_letter_topic) if t in existing]
            if doomed:
                admin.delete_topics(doomed)
        finally:
            admin.close()
    except Exception as exc:  # tidying up only: a leftover topic costs disk, not correctness
        log.warning("could not delete the demo topic %s: %s", config.kafka.topic, exc)


def _stream_order(event_log: EventLog, users: int | None, epochs: int, seed: int) -> tuple[np.ndarray, set[str]]:
    """Positions of the replayed stream (``epochs`` seeded shuffles of the sampled users' events) and the users."""
    all_users = list(dict.fromkeys(event_log.users))  # distinct, in file order
    rng = np.random.default_rng(seed)
    chosen = all_users if users is None or users >= len(all_users) else [
        all_users[i] for i in np.sort(rng.choice(len(all_users), size=users, replace=False))]
    keep = set(chosen)
    positions = np.fromiter((i for i, u in enumerate(event_log.users) if u in keep), dtype=np.int64)
    passes = [positions[np.random.default_rng([seed, epoch]).permutation(len(positions))] for epoch in range(epochs)]
    return np.concatenate(passes), keep


def _replay(config: Config, event_log: EventLog, order: np.ndarray) -> dict[str, Any]:
    count = len(order)
    origin = float(math.floor(time.time() - count))  # synthesised times end about now, 1 s apart
    sink = kafka_producer(config.kafka, ProducerSettings())
    try:
        stats = produce_chunks(
            event_log.chunks(order, time_origin=origin),
            sink, config.kafka.topic, total=count, max_message_bytes=config.kafka.max_message_bytes,
        )
    except StreamtrainError as exc:
        raise DemoError(f"replay into {config.kafka.topic!r} failed: {exc}") from exc
    finally:
        sink.close()  # type: ignore[attr-defined]
    if stats.produced != count:
        raise DemoError(
            f"replay delivered {stats.produced:,} of {count:,} events ({stats.failure_message() or 'no delivery failures'}; "
            f"{stats.skipped_invalid + stats.skipped_oversized} skipped)"
        )
    return {"events": stats.produced, "seconds": stats.elapsed_s}


def _train(config: Config, options: DemoOptions) -> dict[str, Any]:
    from streamtrain.training.trainer import Trainer
    from streamtrain.worker.build import build_worker

    recorders: list[StepRecorder] = []

    def engine_factory(cfg: Config) -> StepRecorder:
        recorders.append(StepRecorder(Trainer(cfg)))
        return recorders[-1]

    try:
        parts = build_worker(config, engine_factory=engine_factory, fresh=True, idle_exit_s=options.idle_exit_s)
    except OSError as exc:  # the metrics port is taken
        raise DemoError(
            f"cannot start the worker's metrics server on {config.metrics.host}:{config.metrics.port}: {exc}; "
            "stop what uses the port or pass --set metrics.port=0"
        ) from exc
    except Exception as exc:
        raise DemoError(f"cannot build the worker: {exc!r}") from exc
    worker, run = parts.worker, config.run.name
    port = parts.http.port if parts.http is not None else None
    stack = StackAddresses.from_env()
    remove_target = None
    if port is not None:
        try:
            remove_target = register_scrape_target(f"streamtrain-demo-{run}", f"{config.metrics.host}:{port}",
                                                   {"run": run}, targets_dir=stack.targets_dir)
        except (StackError, OSError) as exc:
            log.warning("could not register the Prometheus scrape target: %s", exc)
    started = time.monotonic()
    scraped: float | None = None
    try:
        worker.start()
        log.info("training %s from %s; metrics on http://%s:%s/metrics", run, config.kafka.topic,
                 config.metrics.host, port)
        stopping = False
        while not worker.join(0.5):
            if not stopping and options.max_seconds and time.monotonic() - started > options.max_seconds:
                worker.request_stop(f"demo time limit of {options.max_seconds:g} s")
                stopping = True
        train_s = time.monotonic() - started
        worker.source.stop()
        if worker.fatal is None and remove_target is not None:  # while /metrics still answers
            scraped = _scraped_events(stack, run, worker.progress.events)
    except KeyboardInterrupt:
        worker.request_stop("interrupted")
        worker.join(_STOP_BOUND_S)
        raise
    finally:
        with contextlib.suppress(RuntimeError):  # RuntimeError: the source thread never started
            worker.source.stop()  # a second stop is a no-op
        parts.close()
        if remove_target is not None:
            remove_target()
    for what, failure in (("training loop", worker.fatal), ("Kafka source", worker.source.fatal)):
        if failure is not None:
            raise DemoError(f"the worker's {what} failed: {failure}")
    return {
        "recorder": recorders[0], "events": worker.progress.events, "steps": worker.engine.step,
        "seconds": train_s, "stop_reason": worker.stop_reason, "metrics_port": port, "scraped_events": scraped,
    }


def _write_model_config(config: Config, path: Path) -> Path:
    """The run's ``run``, ``model`` and ``checkpoint`` sections as YAML, so ``streamtrain -c FILE eval|export``
    finds the run's checkpoint directory (the checkpoint carries its own normalize/temperature). No secrets
    live there."""
    import yaml

    tree = dump_config(config)
    tree["checkpoint"]["dir"] = str(Path(tree["checkpoint"]["dir"]).resolve())
    path.write_text(yaml.safe_dump({k: tree[k] for k in ("run", "model", "checkpoint")}, sort_keys=False))
    return path


def _scraped_events(stack: StackAddresses, run: str, events: int) -> float | None:
    """The run's events_trained as Prometheus last scraped it (waits a few scrapes for the final value)."""
    try:
        return wait_for_sample(stack.prometheus_url, f'streamtrain_events_trained_total{{run="{run}"}}',
                               timeout_s=6.0, predicate=lambda v: v >= events)
    except StackError as exc:
        log.warning("Prometheus did not report the run's final event count: %s", exc)
        return None


def _final_export(config: Config, ckpt: Any, export_dir: Path) -> None:
    """``<run>/export``: a copy of the published ``latest`` when it came from this same checkpoint (the
    worker published it at the final checkpoint; building the HNSW index again would cost seconds),
    else a fresh export."""
    published = Path(config.export.dir) / config.run.name
    if config.export.every_checkpoints and (published / "latest").exists():
        source = resolve_export(published)
        if read_export(source, load_faiss=False).manifest["source"]["checkpoint_id"] == ckpt.checkpoint_id:
            shutil.rmtree(export_dir, ignore_errors=True)
            shutil.copytree(source, export_dir)
            return
    write_export(ckpt, export_dir, force=True, index=IndexSpec.from_config(config.export))


def run_demo(base: Config, options: DemoOptions) -> dict[str, Any]:
    """Run the demo (module docstring); returns the report (also written to ``<out>/<run>/report.json``)."""
    began = time.monotonic()
    run = options.run or _run_name()
    event_log = _read_train(options.data_dir)
    n_users, n_items = len(set(event_log.users)), len(set(event_log.items))
    if (options.users is not None and options.users < 1) or options.epochs < 1:
        raise DemoError("nothing to replay: --users and --epochs must be >= 1")
    order, sampled = _stream_order(event_log, options.users, options.epochs, options.seed)
    config = demo_config(base, run, n_users=n_users, n_items=n_items, out_root=options.out_root)
    log.info("demo run %s: %d users, %d passes, %d events into topic %s", run, len(sampled), options.epochs,
             len(order), config.kafka.topic)
    _create_topic(config, options.partitions)
    try:
        replayed = _replay(config, event_log, order)
        log.info("replayed %d events in %.1f s; training", replayed["events"], replayed["seconds"])
        trained = _train(config, options)
    finally:
        if not options.keep_topic:
            _delete_topics(config)

    files = _split_files(options.data_dir)
    ckpt = load_checkpoint(choose_checkpoint(None, config), config)  # the one Redis names as committed
    offline = _offline(ckpt, files, event_log, sampled, n_users, options.eval_users)
    run_dir = options.out_root / run
    run_dir.mkdir(parents=True, exist_ok=True)
    config_file = _write_model_config(config, run_dir / "config.yaml")
    export_dir = run_dir / "export"
    _final_export(config, ckpt, export_dir)

    report = _report(run, config, options, files, event_log, n_users, sampled, order, replayed, trained, offline,
                     ckpt, export_dir, config_file, run_dir)
    report["wall_seconds"] = round(time.monotonic() - began, 1)
    report["report_json"] = str(run_dir / "report.json")
    demo_report.write_json(report, run_dir / "report.json")
    return report


def _offline(ckpt: Any, files: dict[str, Path], event_log: Any, sampled: set[str], n_users: int,
             eval_users: int | None) -> dict[str, Any]:
    """Offline Recall/NDCG of the committed checkpoint on the sampled users' test items."""
    log.info("evaluating on %s", files["test"])
    known = Interactions(object_array(event_log.users), object_array(event_log.items),
                         (str(files["train"]), str(files["valid"])), 0)
    test = read_interactions([files["test"]], "gowalla")
    if len(sampled) < n_users:  # the sampled users' test items only: the others were never trained
        mine = np.fromiter((u in sampled for u in test.users), dtype=bool, count=len(test))
        test = Interactions(test.users[mine], test.items[mine], test.files, test.bad_lines)
    return evaluate_checkpoint(ckpt, test, known, max_users=eval_users).to_dict()


def _report(run: str, config: Config, options: DemoOptions, files: dict[str, Path], event_log: Any, n_users: int,
            sampled: set[str], order: Any, replayed: dict[str, Any], trained: dict[str, Any], offline: dict[str, Any],
            ckpt: Any, export_dir: Path, config_file: Path, run_dir: Path) -> dict[str, Any]:
    """What the demo did and where to look, as written to ``report.json`` (and its chart and CSV)."""
    recorder: StepRecorder = trained["recorder"]
    busy_s = recorder.points[-1].seconds if recorder.points else 0.0
    per_pass = len(order) // options.epochs
    stack = StackAddresses.from_env()
    query = f'streamtrain_progressive_recall_ratio{{run="{run}",k="20",model="model"}}'
    return {
        "run": run,
        "topic": config.kafka.topic,
        "topic_kept": options.keep_topic,
        "data": str(options.data_dir),
        "data_files": {split: str(path) for split, path in files.items()},
        "events_available": len(event_log),
        "users_available": n_users,
        "users_sampled": len(sampled),
        "epochs": options.epochs,
        "events_replayed": replayed["events"],
        "replay_seconds": round(replayed["seconds"], 2),
        "seed": options.seed,
        "events_trained": trained["events"],
        "steps": trained["steps"],
        "drained": trained["events"] == replayed["events"],
        "stop_reason": trained["stop_reason"],
        "worker_seconds": round(trained["seconds"], 2),  # start to stop, idle exit included
        "train_seconds": round(busy_s, 2),  # worker built to last step
        "events_per_second": round(trained["events"] / max(busy_s, 1e-9), 1),
        "settings": {
            "sampler": config.sampler.name, "batch_size": config.trainer.batch_size,
            "embedding_dim": config.model.embedding_dim, "learning_rate": config.model.learning_rate,
            "temperature": config.model.temperature, "device": str(recorder.device),
        },
        "loss_first": demo_report.mean_loss(recorder.points, first=True),
        "loss_last": demo_report.mean_loss(recorder.points, first=False),
        "progressive": demo_report.progressive_points(recorder.points, per_pass),
        "offline": offline,
        "prometheus": {
            "url": stack.prometheus_url,
            "query": query,
            "graph_url": demo_report.graph_url(stack.prometheus_url, query),
            "events_trained_scraped": trained["scraped_events"],
        },
        "metrics_url": None if trained["metrics_port"] is None else
        f"http://{config.metrics.host}:{trained['metrics_port']}/metrics",
        "grafana_dashboard": str(GRAFANA_DASHBOARD),
        "checkpoint": str(ckpt.path),
        "export": str(export_dir),
        "published_exports": str(Path(config.export.dir) / run) if config.export.every_checkpoints else None,
        "config_file": str(config_file),
        "example_user": next(iter(sorted(sampled, key=_natural)), None),
        "chart": demo_report.write_chart(recorder.points, offline["metrics"].get("recall@20"), run_dir / "demo.png",
                                         title=f"streamtrain demo {run}: {config.sampler.name}, "
                                               f"B={config.trainer.batch_size}, D={config.model.embedding_dim}",
                                         events_per_pass=per_pass),
        "steps_csv": str(demo_report.write_steps_csv(recorder.points, run_dir / "steps.csv")),
    }
