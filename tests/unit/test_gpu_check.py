"""``bench/gpu-check --tiny`` runs on the CPU, so the one-command GPU check cannot rot unnoticed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_gpu_check_tiny_runs_every_section_without_errors(tmp_path: Path) -> None:
    out = tmp_path / "gpu-check.json"
    env = {**os.environ, "PYTHONPATH": str(REPO), "CUDA_VISIBLE_DEVICES": ""}  # tiny and on the CPU even on a GPU host
    done = subprocess.run(
        # The 50 s tiny budget fits an idle box; a loaded CI runner needs more, and a skipped section
        # is what this test exists to catch, so the budget here is generous and the timeout above it.
        [sys.executable, str(REPO / "bench" / "gpu-check"), "--tiny", "--budget-s", "300", "--out", str(out)],
        capture_output=True, text=True, env=env, timeout=420, check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(out.read_text())
    rows = report["rows"]
    assert report["tiny"] and report["device"] == "cpu"
    failed = [r for r in rows if "error" in r]
    assert not failed, failed
    by_section: dict[str, list[dict]] = {}
    for r in rows:
        by_section.setdefault(r["section"], []).append(r)
    cells = [r for r in by_section["train"] if not r["case"].startswith("build")]
    assert all(r["rate"] > 0 and r["peak_bytes"] > 0 for r in cells)
    default = [r for r in cells if not r["case"].startswith("id 1-step")]
    assert len(default) == 5 * 2 * 2  # every sampler x 2 catalogues x 2 batch sizes, default tower
    assert {r["case"].split()[0] for r in default} == {"inbatch", "inbatch_logq", "bir", "xir", "full"}
    one_step = [r["case"].split()[2] for r in cells if r["case"].startswith("id 1-step")]
    assert sorted(one_step) == ["inbatch_logq"] * 4 + ["xir"] * 4  # the H100 target's own step
    sync = by_section["sync"]
    assert len(sync) == 5 * 2 and all(r["rate"] > 0 and "NaN batch skipped" in r["note"] for r in sync)
    worker = by_section["worker"]
    assert len(worker) == 2 and all(r["rate"] > 0 and 0 <= r["wait_share"] <= 1 for r in worker)
    (ckpt,) = by_section["checkpoint"]
    assert ckpt["equal"] is True and ckpt["resume_s"] > 0
    (evaluation,) = by_section["eval"]
    assert evaluation["rate"] > 0
    assert "section" in report["table"] and "does not fit" not in report["table"]
    assert "section    | case" in done.stdout  # the table is printed too
