"""The worker's log line shows events/s, lag, loss, progressive Recall@20 and ESS, never ``None``."""

from __future__ import annotations

import logging

import pytest

from streamtrain.cli import quiet_library_logs
from streamtrain.config import load_config
from streamtrain.worker.status_line import StatusLine


def test_before_anything_is_known_the_line_says_so() -> None:
    line = StatusLine([10, 20, 50]).format(step=100, events_per_s=1234.4, lag=None, loss=3.5, events=102_400)
    assert "None" not in line
    assert line == ("step 100: 1,234 events/s, lag unknown, loss 3.5000, Recall@20 n/a, ESS n/a, "
                    "102,400 events trained")


def test_recall_and_ess_persist_between_the_steps_that_report_them() -> None:
    status = StatusLine([10, 20, 50])
    status.observe({"recall@10": 0.05, "recall@20": 0.0812, "ndcg@20": 0.04}, {"ess": 143.25}, None)
    status.observe(None, {}, None)  # a step without progressive evaluation or resampling stats
    line = status.format(step=1200, events_per_s=8512, lag=40_960, loss=3.14159, events=1_228_800)
    assert "lag 40,960 messages" in line and "loss 3.1416" in line
    assert "Recall@20 0.0812" in line and "ESS 143.2" in line


def test_probe_ess_serves_samplers_without_resampling_stats_and_k_follows_eval_k() -> None:
    status = StatusLine([10, 50])
    status.observe({"recall@10": 0.25}, {}, {"ess": 7.0, "kl": 0.1})
    line = status.format(step=1, events_per_s=1, lag=0, loss=1, events=1)
    assert "Recall@10 0.2500" in line and "ESS 7.0" in line and "lag 0 messages" in line


@pytest.mark.parametrize(("level", "kafka_level"), [("INFO", logging.WARNING), ("DEBUG", logging.DEBUG)])
def test_kafka_python_chatter_is_muted_unless_debugging(level: str, kafka_level: int) -> None:
    loggers = [logging.getLogger(name) for name in ("kafka", "faiss")]
    before = [logger.level for logger in loggers]
    try:
        quiet_library_logs(load_config(overrides=[f"run.log_level={level}"], environ={}))
        assert all(logger.getEffectiveLevel() == kafka_level for logger in loggers)
        for child in ("kafka.conn", "faiss.loader"):
            assert logging.getLogger(child).isEnabledFor(logging.INFO) == (level == "DEBUG")
    finally:
        for logger, old in zip(loggers, before):
            logger.setLevel(old)
