"""bench/run keeps working: the non-broker suites at tiny sizes, tables printed and appended to a markdown file.

Timing values are not checked (speed belongs to the benchmarks); the test checks that every suite
produced its table with the expected columns and a row per sampler/cell, and that the run was appended
under a heading naming the machine.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def _table(text: str, title_start: str) -> tuple[list[str], list[list[str]]]:
    """Header cells and row cells of the first markdown table whose title starts with ``title_start``."""
    block = text[text.index(f"### {title_start}"):].splitlines()[2:]  # after the title and a blank line
    lines = []
    for ln in block:
        if not ln.startswith("|"):
            break
        lines.append(ln)
    cells = [[c.strip() for c in ln.strip("|").split("|")] for ln in lines]
    return cells[0], cells[2:]


def test_quick_non_broker_suites_print_and_append_tables(tmp_path: Path) -> None:
    out_md = tmp_path / "BENCH.md"
    cmd = [
        sys.executable, str(REPO / "bench" / "run"), "--quick", "--suite", "decode", "train", "scaling",
        "--device", "cpu", "--batch-sizes", "32", "64", "--catalogues", "1000", "2000", "--user-capacity", "1000",
        "--steps", "2", "--warmup", "1", "--decode-events", "400", "--markdown", str(out_md),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert out_md.exists()
    text = out_md.read_text()
    assert proc.stdout.count("### ") == text.count("### ") == 4  # decode, train, scaling x2

    heading = re.search(r"^## Run \d{4}-\d\d-\d\d \d\d:\d\d UTC — (.+)$", text, re.M)
    assert heading and "cores" in heading.group(1)
    for key in ("- cpu:", "- cores:", "- ram:", "- torch:", "- cuda:", "- commit:", "- command: `bench/run"):
        assert key in text

    header, rows = _table(text, "decode")
    assert header[:4] == ["dataset", "chunk", "strategy", "events/s (CPU)"]
    assert {r[2] for r in rows} >= {"orjson/message+fast", "json/message+fast"}

    header, rows = _table(text, "train")
    for col in ("sampler", "B", "catalogue", "ms/step", "steps/s", "examples/s", "x inbatch", "peak RSS GB",
                "CUDA peak GB"):
        assert col in header
    cells = {(r[header.index("sampler")], r[header.index("B")], r[header.index("catalogue")]) for r in rows}
    assert cells == {(s, b, c) for s in ("inbatch", "inbatch_logq", "xir") for b in ("32", "64") for c in ("1k", "2k")}
    for r in rows:
        assert float(r[header.index("examples/s")].replace(",", "")) > 0
        assert float(r[header.index("peak RSS GB")]) > 0

    header, rows = _table(text, "scaling: step time vs catalogue")
    assert header == ["sampler", "B", "1k ms", "2k ms", "2k/1k"]
    assert {(r[0], r[1]) for r in rows} == {(s, b) for s in ("inbatch_logq", "xir") for b in ("32", "64")}
    assert all(r[4].endswith("x") for r in rows)

    header, rows = _table(text, "scaling: step time vs batch size")
    assert header[:4] == ["sampler", "catalogue", "B=32 ms", "B=64 ms"] and "B=64 per ex." in header
    assert len(rows) == 4
