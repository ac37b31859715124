"""Replay rough edges found in review: MovieLens 100k's u.data, progress of unknown length, --help."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from streamtrain.cli import main
from streamtrain.commands.replay import _LineProgress
from streamtrain.replay import Progress, detect_format, read_log

U_DATA = "196\t242\t3\t881250949\n186\t302\t3\t891717742\n22\t377\t1\t878887116\n"


@pytest.mark.parametrize("name", ["u.data", "u1.base", "ratings"])
def test_movielens_100k_tab_files_are_read_as_movielens(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    path.write_text(U_DATA)
    assert detect_format(path) == "movielens"
    log, report = read_log([path])
    assert report.bad_total == 0 and len(log) == 3 and log.timed
    assert sorted(zip(log.users, log.items)) == [("186", "302"), ("196", "242"), ("22", "377")]


def test_gowalla_lines_with_four_ids_stay_gowalla(tmp_path: Path) -> None:
    path = tmp_path / "train.txt"
    path.write_text("0 1 2 3\n1 4 5\n")
    assert detect_format(path) == "gowalla"


def test_dry_run_replays_u_data_in_time_order(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "u.data"
    path.write_text(U_DATA)
    code = main(["replay", str(path), "--dry-run", "--summary-format", "json", "--progress", "line"])
    summary = json.loads(capsys.readouterr().out)
    assert code == 0
    assert summary["files"] == [{"path": str(path), "format": "movielens"}]
    assert (summary["order"], summary["produced"]) == ("time", 3)


@pytest.mark.parametrize("total", [None, 0])
def test_progress_line_of_unknown_length(total: int | None) -> None:
    out = io.StringIO()
    _LineProgress(out)(Progress(sent=12_345, total=total, elapsed_s=2.0))
    line = out.getvalue()
    assert line.startswith("replay: 12,345/? events,") and "eta" not in line and "%" not in line


def test_dry_run_past_the_end_does_not_crash(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "train.txt"
    path.write_text("0 1 2\n")
    code = main(["replay", str(path), "--dry-run", "--start-at", "10", "--progress", "line",
                 "--summary-format", "json"])
    assert code == 0 and json.loads(capsys.readouterr().out)["produced"] == 0


def test_help_states_each_default_once(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["replay", "--help"])
    text = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
    assert "(default: None)" not in text
    assert "(default: run.seed)" in text and text.count("(default: run.seed)") == 1
    assert "(default: 1.0)" in text  # real defaults are still shown
