"""Result tables of ``bench/run``: the machine they were measured on, markdown rendering, BENCHMARKS.md.

Every suite returns :class:`Table` objects (already formatted cells, so the printed table and the
appended one are the same text). Each run appends one dated section to BENCHMARKS.md whose heading
names the machine, so numbers from different hosts never mix silently.
"""

from __future__ import annotations

import datetime as _dt
import os
import platform
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

__all__ = [
    "Table", "cpu_model", "machine_info", "machine_line", "render", "append_run", "fmt_rate", "fmt_ratio", "peak_rss",
]

REPO = Path(__file__).resolve().parent.parent


@dataclass
class Table:
    """One result table: a title, column names, rows of formatted cells and notes printed below."""

    title: str
    columns: list[str]
    rows: list[list[str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def add(self, *cells: object) -> None:
        if len(cells) != len(self.columns):
            raise ValueError(f"{self.title}: row has {len(cells)} cells, table has {len(self.columns)} columns")
        self.rows.append([str(c) for c in cells])


def render(table: Table) -> str:
    """Markdown table (GitHub flavour), numbers right-aligned, readable as plain text too."""
    cells = [table.columns] + table.rows
    widths = [max(len(row[i]) for row in cells) for i in range(len(table.columns))]
    numeric = [all(_is_number(row[i]) for row in table.rows) and table.rows for i in range(len(widths))]

    def line(row: list[str]) -> str:
        parts = [c.rjust(w) if num else c.ljust(w) for c, w, num in zip(row, widths, numeric)]
        return "| " + " | ".join(parts) + " |"

    sep = "|" + "|".join(("-" * (w + 1) + ":") if num else ("-" * (w + 2)) for w, num in zip(widths, numeric)) + "|"
    out = [f"### {table.title}", "", line(table.columns), sep, *(line(r) for r in table.rows)]
    if table.notes:
        out += [""] + [f"- {n}" for n in table.notes]
    return "\n".join(out) + "\n"


def _is_number(text: str) -> bool:
    try:
        float(text.replace(",", "").rstrip("x×%").strip() or "x")
    except ValueError:
        return text in ("-", "n/a")
    return True


def fmt_rate(value: float) -> str:
    return f"{value:,.0f}"


def fmt_ratio(value: float) -> str:
    return f"{value:.2f}x"


def cpu_model() -> str:
    try:
        for text in Path("/proc/cpuinfo").read_text().splitlines():
            if text.startswith("model name"):
                return text.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _ram_gb() -> float:
    try:
        for text in Path("/proc/meminfo").read_text().splitlines():
            if text.startswith("MemTotal:"):
                return int(text.split()[1]) / 1024**2
    except OSError:
        pass
    return float("nan")


def _git_commit() -> str:
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True,
                              timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO,
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return (head or "unknown") + ("+uncommitted changes" if dirty else "")


def machine_info() -> dict[str, str]:
    """What the heading of a run names: CPU, cores, RAM, torch, CUDA device, git commit."""
    import torch

    cuda = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    cores = os.cpu_count() or 0
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else cores
    return {
        "cpu": cpu_model(),
        "cores": f"{cores}" + (f" ({usable} usable)" if usable != cores else ""),
        "ram": f"{_ram_gb():.0f} GB",
        "torch": torch.__version__,
        "torch threads": str(torch.get_num_threads()),
        "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", "unset"),
        "cuda": cuda,
        "python": platform.python_version(),
        "commit": _git_commit(),
        # Other processes' load skews absolute numbers (ratios measured side by side suffer less).
        "load average at start": " ".join(f"{x:.1f}" for x in os.getloadavg()),
    }


def machine_line(info: dict[str, str]) -> str:
    gpu = f", {info['cuda']}" if info["cuda"] != "none" else ", no GPU"
    return f"{info['cpu']}, {info['cores']} cores, {info['ram']}{gpu}"


def peak_rss() -> tuple[float, bool]:
    """(peak resident set size in bytes, resettable). VmHWM from /proc when the kernel lets it be reset
    (writing 5 to clear_refs), so a caller can measure one step's peak; else the process-lifetime peak."""
    try:
        for text in Path("/proc/self/status").read_text().splitlines():
            if text.startswith("VmHWM:"):
                return int(text.split()[1]) * 1024.0, True
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024.0, False


def reset_peak_rss() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


_HEADER = """# Benchmarks

Measured with `bench/run` (see *How to run*). Each run below is appended by the script under a
dated heading naming its machine; numbers from different machines are not comparable, ratios
within one run are (every comparison is measured side by side, interleaved, in the same run).
"""


def append_run(path: Path, info: dict[str, str], command: str, tables: list[Table]) -> None:
    """Append one run (heading, machine, command, tables) to ``path``; creates the file if missing."""
    stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    parts = [f"\n## Run {stamp} — {machine_line(info)}\n"]
    parts.append("\n".join(f"- {k}: {v}" for k, v in info.items()) + f"\n- command: `{command}`\n")
    parts += ["\n" + render(t) for t in tables]
    text = path.read_text() if path.exists() else _HEADER
    path.write_text(text.rstrip("\n") + "\n" + "".join(parts))
