"""``streamtrain replay`` end to end with an in-memory producer: options, summary, exit codes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from streamtrain.cli import main
from streamtrain.commands import replay as replay_cmd
from streamtrain.events import decode_values


class RecordingProducer:
    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes, bytes]] = []
        self.closed = False

    def send(self, topic: str, value: bytes | None = None, key: bytes | None = None) -> None:
        assert value is not None and key is not None
        self.sent.append((topic, key, value))

    def flush(self, timeout: float | None = None) -> None:
        return None

    def close(self) -> None:
        self.closed = True


@pytest.fixture
def producer(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    made: dict[str, Any] = {}

    def fake(kafka, settings, **kwargs):  # type: ignore[no-untyped-def]
        made["kafka"], made["settings"] = kafka, settings
        made["producer"] = RecordingProducer()
        return made["producer"]

    monkeypatch.setattr(replay_cmd, "kafka_producer", fake)
    return made


@pytest.fixture
def gowalla(tmp_path: Path) -> Path:
    path = tmp_path / "train.txt"
    path.write_text("".join(f"{u} " + " ".join(str(100 + u * 10 + k) for k in range(5)) + "\n" for u in range(6)))
    return path


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, dict[str, Any]]:
    code = main(["replay", *argv, "--summary-format", "json", "--progress", "none"])
    out = capsys.readouterr().out
    return code, json.loads(out)


def test_replays_gowalla_keyed_by_user(gowalla: Path, producer: dict[str, Any],
                                       capsys: pytest.CaptureFixture[str]) -> None:
    code, summary = run(capsys, str(gowalla), "--topic", "t1", "--bootstrap-servers", "127.0.0.1:1,127.0.0.1:2",
                        "--seed", "5", "--time-origin", "1000", "--compression", "none", "--linger-ms", "7")
    assert code == 0
    sent = producer["producer"].sent
    assert producer["producer"].closed
    assert producer["kafka"].bootstrap_servers == ["127.0.0.1:1", "127.0.0.1:2"]
    assert (producer["settings"].compression, producer["settings"].linger_ms) == ("none", 7)
    decoded = decode_values([v for _, _, v in sent])
    assert [k.decode() for _, k, _ in sent] == list(decoded.batch.user_ids)
    assert sorted(zip(decoded.batch.user_ids, decoded.batch.item_ids)) == sorted(
        (str(u), str(100 + u * 10 + k)) for u in range(6) for k in range(5)
    )
    assert list(decoded.batch.event_time) == [1000.0 + p for p in range(30)]
    assert summary["produced"] == 30 and summary["order"] == "shuffle" and summary["seed"] == 5
    assert summary["topic"] == "t1" and summary["resume_at"] == 30


def test_start_at_and_limit_continue_the_same_stream(gowalla: Path, producer: dict[str, Any],
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    common = (str(gowalla), "--seed", "1", "--time-origin", "50")
    run(capsys, *common)
    full = [v for _, _, v in producer["producer"].sent]
    code, first = run(capsys, *common, "--limit", "12")
    part1 = [v for _, _, v in producer["producer"].sent]
    code2, second = run(capsys, *common, "--start-at", str(first["resume_at"]))
    part2 = [v for _, _, v in producer["producer"].sent]
    assert code == code2 == 0
    assert part1 + part2 == full  # byte-identical, synthesised times included
    assert (first["resume_at"], second["produced"], second["resume_at"]) == (12, 18, 30)


def test_dry_run_sends_nothing_and_counts_bad_lines(tmp_path: Path, producer: dict[str, Any],
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "ratings.dat"
    path.write_text("1::10::5::300\n1::11::4::100\nbroken line\n2::10::3::200\n")
    code, summary = run(capsys, str(path), "--dry-run")
    assert code == 0 and "producer" not in producer
    assert summary["topic"] is None and summary["produced"] == 3 and summary["order"] == "time"
    assert summary["bad_lines_by_reason"] == {"bad_row": 1}
    assert summary["bad_line_examples"] == [f"{path}:3: bad_row: expected user::item::rating::timestamp, got 2 fields"]


def test_text_summary_and_progress_lines(gowalla: Path, producer: dict[str, Any],
                                         capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["replay", str(gowalla), "--progress", "line", "--time-origin", "0"])
    captured = capsys.readouterr()
    assert code == 0
    assert "replay summary" in captured.out and "30 events to topic 'interactions'" in captured.out
    assert "--start-at 30" in captured.out
    assert "30/30 events (100.0%)" in captured.err


def test_mapping_csv_and_rate(tmp_path: Path, producer: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "log.csv"
    path.write_text("uid,movie,ts\nb,2,20\na,1,10\n")
    code, summary = run(capsys, str(path), "--map", "user_id=uid,item_id=movie,event_time=ts", "--rate", "10000")
    assert code == 0 and summary["produced"] == 2
    assert [k for _, k, _ in producer["producer"].sent] == [b"a", b"b"]  # time order


def test_unknown_map_field_is_an_error(gowalla: Path, producer: dict[str, Any],
                                       capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["replay", str(gowalla), "--map", "usr=uid"]) == 1
    assert "not an event field" in capsys.readouterr().err


@pytest.mark.parametrize("bad", [["--rate", "5", "--speedup", "2"], ["--rate", "0"], ["--speedup", "nan"],
                                 ["--start-at", "-1"], ["--limit", "-5"], ["--time-step", "0"]])
def test_bad_options_are_usage_errors(gowalla: Path, bad: list[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["replay", str(gowalla), *bad])
    assert exited.value.code == 2


def test_tqdm_request_without_tqdm_falls_back_to_lines(gowalla: Path, producer: dict[str, Any],
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    try:
        import tqdm  # noqa: F401
    except ImportError:
        pass
    else:
        pytest.skip("tqdm is installed; the fallback is not reachable")
    assert main(["replay", str(gowalla), "--progress", "tqdm", "--time-origin", "0"]) == 0
    err = capsys.readouterr().err
    assert "pip install tqdm" in err and "30/30 events" in err


def test_sigterm_stops_flushes_and_names_the_resume_point(gowalla: Path, producer: dict[str, Any],
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    import os
    import signal
    import threading

    before = signal.getsignal(signal.SIGTERM)
    # 30 events at 5/s take 6 s; the signal comes after ~0.5 s, well inside the run.
    timer = threading.Timer(0.5, os.kill, (os.getpid(), signal.SIGTERM))
    timer.start()
    try:
        code, summary = run(capsys, str(gowalla), "--rate", "5", "--time-origin", "0")
    finally:
        timer.cancel()
    assert code == 130 and summary["stopped"]
    sent = len(producer["producer"].sent)
    assert 1 <= sent < 30 and summary["produced"] == sent and summary["resume_at"] == sent
    assert signal.getsignal(signal.SIGTERM) is before  # our handler is gone again
