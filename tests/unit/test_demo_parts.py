"""The demo's pieces that need no servers: config overlay, stream order, step recorder, report, chart."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from streamtrain.config import load_config
from streamtrain.demo.recording import StepPoint, StepRecorder
from streamtrain.demo.report import format_report, progressive_points, write_chart, write_steps_csv
from streamtrain.demo.runner import _stream_order
from streamtrain.demo.settings import demo_config
from streamtrain.replay import EventLog


def test_demo_defaults_fill_only_keys_the_user_left_unset(tmp_path: Path) -> None:
    base = load_config(overrides=["model.learning_rate=0.2", "trainer.batch_size=256", "sampler.name=bir"],
                       environ={"STREAMTRAIN_MODEL__EMBEDDING_DIM": "32"})
    config = demo_config(base, "r1", n_users=100, n_items=50, out_root=tmp_path)
    assert (config.model.learning_rate, config.trainer.batch_size, config.sampler.name) == (0.2, 256, "bir")
    assert config.model.embedding_dim == 32  # from the environment
    # bir resamples: the demo's resampling temperature
    assert (config.model.temperature, config.model.user_capacity, config.model.item_capacity) == (0.3, 101, 51)
    assert config.checkpoint.dir == tmp_path / "checkpoints" and config.run.name == "r1"
    assert config.kafka.topic == "streamtrain-demo-r1" == config.kafka.group_id
    assert config.kafka.dead_letter_topic == "streamtrain-demo-r1.dead-letter"
    default = demo_config(load_config(environ={}), "r2", n_users=1, n_items=1, out_root=tmp_path)
    assert (default.sampler.name, default.model.temperature, default.sampler.xir.mix_lambda) == ("xir", 0.3, 0.2)
    mine = demo_config(load_config(overrides=["sampler.xir.mix_lambda=0.7", "model.temperature=0.2"], environ={}),
                       "r3", n_users=1, n_items=1, out_root=tmp_path)
    assert (mine.model.temperature, mine.sampler.xir.mix_lambda) == (0.2, 0.7)
    logq = demo_config(load_config(overrides=["sampler.name=inbatch_logq"], environ={}), "r4", n_users=1, n_items=1,
                       out_root=tmp_path)
    assert logq.model.temperature == 0.1


def _log(pairs: list[tuple[str, str]]) -> EventLog:
    log = EventLog()
    for user, item in pairs:
        log.append(user, item, None, None)
    return log


def test_stream_order_samples_whole_users_and_repeats_them_per_pass() -> None:
    rng = np.random.default_rng(0)
    log = _log([(f"u{u}", f"i{i}") for u, i in zip(rng.integers(0, 50, 600), rng.integers(0, 90, 600))])
    order, users = _stream_order(log, 10, 3, seed=4)
    assert len(users) == 10
    mine = [i for i, u in enumerate(log.users) if u in users]
    assert len(order) == 3 * len(mine)
    for p in range(3):  # each pass is a permutation of all the sampled users' events
        assert sorted(order[p * len(mine) : (p + 1) * len(mine)].tolist()) == mine
    assert order[: len(mine)].tolist() != order[len(mine) : 2 * len(mine)].tolist()  # reshuffled
    again, same_users = _stream_order(log, 10, 3, seed=4)
    assert same_users == users and np.array_equal(again, order)
    assert _stream_order(log, 10, 1, seed=5)[1] != users
    everything, all_users = _stream_order(log, None, 1, seed=4)
    assert sorted(everything.tolist()) == list(range(600)) and len(all_users) == len(set(log.users))


class _Engine:
    step = 0
    device = "cpu"

    def train_step(self, batch: Any) -> Any:
        self.step += 1
        progressive = {"recall@20": 0.1 * self.step, "ndcg@20": 0.05} if self.step % 2 else None
        return type("S", (), {"step": self.step, "num_events": len(batch), "loss": 10.0 - self.step,
                              "progressive": progressive})


def test_step_recorder_forwards_and_records() -> None:
    clock = iter(range(100)).__next__
    rec = StepRecorder(_Engine(), clock=lambda: float(clock()))
    for n in (5, 7, 3):
        assert rec.train_step([0] * n).num_events == n
    assert rec.step == 3 and rec.device == "cpu"  # delegated
    assert [(p.step, p.events, p.loss, p.seconds) for p in rec.points] == [(1, 5, 9.0, 1.0), (2, 12, 8.0, 2.0),
                                                                          (3, 15, 7.0, 3.0)]
    assert rec.points[1].progressive is None and rec.points[2].progressive == {"recall@20": pytest.approx(0.3),
                                                                                "ndcg@20": 0.05}


def _points(n: int) -> list[StepPoint]:
    return [StepPoint(s, 100 * s, 8.0 - s / n, s / 10, {"recall@20": s / n, "ndcg@20": s / (2 * n)} if s % 3 == 0
                      else None) for s in range(1, n + 1)]


def test_progressive_points_are_evenly_spaced_evaluated_steps_with_their_pass() -> None:
    rows = progressive_points(_points(90), events_per_pass=3000)
    assert len(rows) == 8
    assert rows[0]["step"] == 3 and rows[-1]["step"] == 90
    assert [r["pass"] for r in rows] == [1 if r["events"] <= 3000 else 2 if r["events"] <= 6000 else 3 for r in rows]
    assert all(r["recall@20"] == pytest.approx(r["step"] / 90, abs=1e-4) for r in rows)
    assert progressive_points(_points(2), events_per_pass=10) == []


def test_chart_csv_and_text_report(tmp_path: Path) -> None:
    points = _points(60)
    chart = write_chart(points, 0.02, tmp_path / "demo.png", title="t", events_per_pass=2000)
    assert chart is not None and (tmp_path / "demo.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    lines = write_steps_csv(points, tmp_path / "steps.csv").read_text().splitlines()
    assert lines[0] == "step,events,seconds,loss,ndcg@20,recall@20" and len(lines) == 61
    offline = {"test_files": ["test.txt"], "test_users": 5, "candidate_items": 9, "k_list": [20],
               "metrics": {"recall@20": 0.5, "ndcg@20": 0.25}, "unknown_users": 1, "unknown_item_interactions": 2,
               "unknown_items": 2}
    report = {
        "run": "r", "users_sampled": 5, "users_available": 10, "epochs": 3, "seed": 0, "events_replayed": 6000,
        "topic": "t", "replay_seconds": 1.0, "events_trained": 6000, "steps": 60, "train_seconds": 6.0,
        "events_per_second": 1000.0, "drained": True, "stop_reason": "idle", "loss_first": 8.0, "loss_last": 7.0,
        "settings": {"sampler": "xir", "batch_size": 100, "embedding_dim": 8, "learning_rate": 0.1,
                     "temperature": 0.1, "device": "cpu"},
        "progressive": progressive_points(points, 2000), "offline": offline,
        "prometheus": {"graph_url": "http://p/graph", "query": "q", "events_trained_scraped": 6000.0},
        "metrics_url": "http://m/metrics", "grafana_dashboard": "g.json", "chart": chart, "report_json": "r.json",
        "steps_csv": "s.csv", "checkpoint": "c.pt", "export": "exp", "example_user": "7", "data": "d",
        "config_file": "c.yaml",
        "wall_seconds": 12.0,
    }
    out = io.StringIO()
    format_report(report, out)
    text = out.getvalue()
    assert "5 sampled of 10 Gowalla users" in text and "from pass 2 on" in text
    assert "0.5000" in text and "scraped events_trained = 6,000" in text and "--user 7" in text


def test_baselines_reach_the_progressive_rows_the_report_and_the_chart(tmp_path: Path) -> None:
    base = {"covisit": {"recall@20": 0.3, "ndcg@20": 0.1}, "popular_all": {"recall@20": 0.05}}
    points = [StepPoint(s, 100 * s, 5.0, s / 10, {"recall@20": 0.2, "ndcg@20": 0.1}, base) for s in range(1, 11)]
    rows = progressive_points(points, events_per_pass=10_000)
    assert rows and all(r["baselines"] == {"covisit": 0.3, "popular_all": 0.05} for r in rows)
    assert write_chart(points, None, tmp_path / "c.png", title="t", events_per_pass=10_000) is not None
    report = {"progressive": rows, "epochs": 1}
    out = io.StringIO()
    from streamtrain.demo.report import _progressive_lines

    _progressive_lines(report, lambda line="": print(line, file=out))
    text = out.getvalue()
    assert "covisit R@20" in text and "pop R@20" in text and "0.3000" in text and "0.0500" in text
