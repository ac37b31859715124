"""What the demo shows: the progressive table, loss summaries, the chart, the CSV/JSON files, the text report."""

from __future__ import annotations

import csv
import json
import logging
import math
import urllib.parse
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TextIO

import numpy as np

from streamtrain.demo.recording import StepPoint

__all__ = [
    "format_report", "graph_url", "mean_loss", "progressive_points", "write_chart", "write_json", "write_steps_csv",
]

log = logging.getLogger(__name__)

_LOSS_WINDOW = 20  # steps averaged for a loss value (one step's loss is noisy)


def mean_loss(points: Sequence[StepPoint], *, first: bool) -> float | None:
    """Mean loss of the first (or last) 20 steps; None without steps."""
    chosen = points[:_LOSS_WINDOW] if first else points[-_LOSS_WINDOW:]
    values = [p.loss for p in chosen if math.isfinite(p.loss)]
    return round(float(np.mean(values)), 4) if values else None


def _pass_of(events: int, events_per_pass: int) -> int:
    """1-based pass over the sampled events that the step's last event belongs to."""
    return max(1, math.ceil(events / max(events_per_pass, 1)))


def progressive_points(
    points: Sequence[StepPoint], events_per_pass: int, n: int = 8, k: int = 20
) -> list[dict[str, Any]]:
    """Up to ``n`` evenly spaced evaluated steps: events, pass, step, rolling Recall@k / NDCG@k, mean loss."""
    evaluated = [i for i, p in enumerate(points) if p.progressive and f"recall@{k}" in p.progressive]
    if not evaluated:
        return []
    picks = sorted({evaluated[int(round(j))] for j in np.linspace(0, len(evaluated) - 1, min(n, len(evaluated)))})
    rows = []
    for i in picks:
        p = points[i]
        recent = [q.loss for q in points[max(0, i - _LOSS_WINDOW + 1) : i + 1] if math.isfinite(q.loss)]
        rows.append({
            "events": p.events,
            "pass": _pass_of(p.events, events_per_pass),
            "step": p.step,
            "seconds": round(p.seconds, 1),
            f"recall@{k}": round(float(p.progressive[f"recall@{k}"]), 4),  # type: ignore[index]
            f"ndcg@{k}": round(float(p.progressive.get(f"ndcg@{k}", math.nan)), 4),  # type: ignore[union-attr]
            "loss": round(float(np.mean(recent)), 4) if recent else None,
            # Recall@k of the baselines on the same batches: the bars the model must clear.
            "baselines": {name: round(float(v[f"recall@{k}"]), 4) for name, v in (p.baselines or {}).items()
                          if f"recall@{k}" in v},
        })
    return rows


def graph_url(prometheus_url: str, query: str) -> str:
    """A Prometheus graph-page link showing ``query`` over the last 15 minutes."""
    params = {"g0.expr": query, "g0.tab": "0", "g0.range_input": "15m"}
    return f"{prometheus_url.rstrip('/')}/graph?{urllib.parse.urlencode(params)}"


def write_steps_csv(points: Sequence[StepPoint], path: Path) -> Path:
    """One row per step: step, events, seconds, loss, progressive metrics (empty when not evaluated)."""
    names = sorted({name for p in points if p.progressive for name in p.progressive})
    with path.open("w", newline="") as handle:
        out = csv.writer(handle)
        out.writerow(["step", "events", "seconds", "loss", *names])
        for p in points:
            prog = p.progressive or {}
            out.writerow([p.step, p.events, f"{p.seconds:.3f}", f"{p.loss:.6f}",
                          *(f"{prog[n]:.6f}" if n in prog else "" for n in names)])
    return path


_CHART_BASELINES = (
    ("covisit", "tab:purple", "item-to-item co-visitation, same batches"),
    ("popular_all", "tab:gray", "most popular so far, same batches"),
)


def write_chart(
    points: Sequence[StepPoint], offline_recall: float | None, path: Path, *, title: str, events_per_pass: int
) -> str | None:
    """Loss and progressive Recall@20 against events trained, as a PNG; returns the path (None without matplotlib)."""
    try:
        from matplotlib.figure import Figure  # the object API: no pyplot, no global backend state
    except ImportError:
        log.warning("matplotlib is not installed (pip install 'streamtrain[plot]'): no chart")
        return None
    fig = Figure(figsize=(9, 6.5), layout="constrained")
    ax_loss, ax_rec = fig.subplots(2, 1, sharex=True)
    events = np.asarray([p.events for p in points], dtype=np.float64)
    loss = np.asarray([p.loss for p in points], dtype=np.float64)
    if len(points):
        ax_loss.plot(events, loss, color="tab:blue", alpha=0.3, linewidth=0.8, label="loss per step")
        window = min(_LOSS_WINDOW, len(loss))
        smooth = np.convolve(loss, np.ones(window) / window, mode="valid")
        ax_loss.plot(events[window - 1 :], smooth, color="tab:blue", label=f"mean of {window} steps")
    ax_loss.set_ylabel("sampled-softmax loss")
    ax_loss.legend(loc="upper right")
    ax_loss.grid(alpha=0.3)
    evaluated = [p for p in points if p.progressive and "recall@20" in p.progressive]
    if evaluated:
        recall = [p.progressive["recall@20"] for p in evaluated]  # type: ignore[index]
        ax_rec.plot([p.events for p in evaluated], recall,
                    color="tab:green", marker=".", label="progressive Recall@20 (test-then-train, rolling)")
    for name, color, label in _CHART_BASELINES:  # the same batches, ranked by counting
        shown = [p for p in evaluated if p.baselines and "recall@20" in p.baselines.get(name, {})]
        if shown:
            ax_rec.plot([p.events for p in shown], [p.baselines[name]["recall@20"] for p in shown],  # type: ignore[index]
                        color=color, linewidth=1, label=label)
    if offline_recall is not None:
        ax_rec.axhline(offline_recall, color="tab:red", linestyle="--",
                       label=f"offline Recall@20 on test = {offline_recall:.4f}")
    passes = _pass_of(int(events[-1]), events_per_pass) if len(points) else 1
    for boundary in range(1, passes):  # from here on the stream repeats events the model has trained on
        for ax in (ax_loss, ax_rec):
            ax.axvline(boundary * events_per_pass, color="grey", linestyle=":", linewidth=1)
        ax_rec.annotate(f"pass {boundary + 1}", (boundary * events_per_pass, 1), xycoords=("data", "axes fraction"),
                        xytext=(3, -12), textcoords="offset points", color="grey", fontsize=8)
    ax_rec.set_xlabel("events trained")
    ax_rec.set_ylabel("Recall@20")
    ax_rec.legend(loc="lower right")
    ax_rec.grid(alpha=0.3)
    fig.suptitle(title)
    fig.savefig(path, dpi=110)
    return str(path)


def write_json(report: dict[str, Any], path: Path) -> None:
    path.write_text(json.dumps(report, indent=2) + "\n")


def _num(value: Any, fmt: str = ".4f") -> str:
    return "n/a" if value is None else format(value, fmt)


def _progressive_lines(r: dict[str, Any], w: Callable[..., None]) -> None:
    """The report's progressive table: the model's rolling metrics beside the baselines' Recall@20."""
    w("  progressive evaluation (each batch ranked against every known item before training on it;")
    w("  rolling over the last evaluated steps)")
    if r["progressive"]:
        # Baselines' Recall@20 on the same batches (covisit: item-to-item co-visitation; pop: most popular so far).
        shown = [(name, head) for name, head in (("covisit", "covisit R@20"), ("popular_all", "pop R@20"))
                 if any(name in p.get("baselines", {}) for p in r["progressive"])]
        w(f"  {'events':>10} {'pass':>5} {'step':>6} {'seconds':>8} {'Recall@20':>10} {'NDCG@20':>9} {'loss':>8}"
          + "".join(f" {head:>12}" for _, head in shown))
        for p in r["progressive"]:
            base = p.get("baselines", {})
            w(f"  {p['events']:>10,} {p['pass']:>5} {p['step']:>6} {p['seconds']:>8.1f} {p['recall@20']:>10.4f} "
              f"{p['ndcg@20']:>9.4f} {_num(p['loss']):>8}" + "".join(f" {_num(base.get(name)):>12}" for name, _ in shown))
        if r["epochs"] > 1:
            w("  from pass 2 on, every event was trained once before: progressive recall there measures what")
            w("  the model kept of trained interactions, not generalisation (the offline test below does)")
    else:
        w("  (no evaluated step: the run was too short)")
    w()


def format_report(r: dict[str, Any], out: TextIO) -> None:
    """The demo's report as text (``streamtrain demo`` prints it to stdout)."""
    s, off = r["settings"], r["offline"]
    w = lambda line="": print(line, file=out)  # noqa: E731
    w(f"streamtrain demo: run {r['run']}")
    users = "all" if r["users_sampled"] == r["users_available"] else f"{r['users_sampled']:,} sampled"
    w(f"  data        {users} of {r['users_available']:,} Gowalla users with all their train+valid events, "
      f"{r['epochs']} pass(es) in seeded shuffles (seed {r['seed']}):")
    w(f"              {r['events_replayed']:,} events replayed to topic {r['topic']} in {r['replay_seconds']:.1f} s")
    w(f"  trained     {r['events_trained']:,} events in {r['steps']:,} steps, {r['train_seconds']:.1f} s "
      f"({r['events_per_second']:,.0f} events/s); {s['sampler']}, B={s['batch_size']}, D={s['embedding_dim']}, "
      f"lr {s['learning_rate']:g}, temperature {s['temperature']:g}, {s['device']}")
    if not r["drained"]:
        w(f"  NOTE        stopped before the topic was drained: {r['stop_reason']}")
    w(f"  loss        {_num(r['loss_first'])} -> {_num(r['loss_last'])} (mean of the first / last 20 steps)")
    w()
    _progressive_lines(r, w)
    w(f"  offline on {', '.join(off['test_files'])} (the sampled users' test items): {off['test_users']:,} users, "
      f"full ranking over {off['candidate_items']:,} items, each user's train+valid items excluded")
    ks = off["k_list"]
    w("          " + "".join(f"{'@' + str(k):>9}" for k in ks))
    for metric, name in (("recall", "Recall"), ("ndcg", "NDCG")):
        w(f"    {name:<6}" + "".join(f"{off['metrics'][f'{metric}@{k}']:>9.4f}" for k in ks))
    w(f"    unseen: {off['unknown_users']:,} test users without a row (scored with the fallback embedding), "
      f"{off['unknown_item_interactions']:,} test interactions on {off['unknown_items']:,} items without a row "
      "(misses)")
    w()
    prom = r["prometheus"]
    scraped = prom["events_trained_scraped"]
    w("  where to look")
    w(f"    Prometheus  {prom['graph_url']}")
    w(f"                query {prom['query']}; scraped events_trained = "
      f"{'not available' if scraped is None else f'{scraped:,.0f}'}")
    w(f"    worker      {r['metrics_url'] or '(metrics disabled)'} (served while the worker ran)")
    w(f"    Grafana     {r['grafana_dashboard']} (run variable = {r['run']})")
    w(f"    chart       {r['chart'] or '(matplotlib missing)'}")
    w(f"    files       {r['report_json']}, {r['steps_csv']}")
    w(f"    checkpoint  {r['checkpoint']}")
    w(f"    export      {r['export']}")
    if r.get("published_exports"):
        w(f"    published   {r['published_exports']}/latest (an export after every committed checkpoint)")
    data = r.get("data_files") or {s: f"{r['data']}/{s}.txt" for s in ("train", "valid", "test")}
    w(f"    try         streamtrain -c {r['config_file']} eval --test {data['test']} "
      f"--exclude {data['train']} {data['valid']}")
    if r["example_user"] is not None:
        w(f"                streamtrain recommend --export {r['export']} --user {r['example_user']} -k 10 "
          f"--exclude-seen {data['train']} {data['valid']}")
    w(f"  wall time   {r['wall_seconds']:.0f} s")
