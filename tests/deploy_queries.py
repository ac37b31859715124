"""Every PromQL expression shipped in deploy/: the Grafana dashboard's targets and the alert rules.

Used by tests/unit/test_deploy_assets.py (metric names exist, labels are real) and meant for an
end-to-end test that runs each expression against a Prometheus scraping a live worker::

    from deploy_queries import deploy_queries, metric_selectors
    for q in deploy_queries(run="my-run"):
        ...query_prometheus(prometheus_url, q.expr)...

Grafana variables are substituted so the text is plain PromQL: ``$run`` by the ``run`` argument
(a regex, ``.+`` = every run), ``$__rate_interval``/``$__interval``/``$__range`` by fixed windows.
Alert expressions end in a threshold, so they return nothing while healthy; ``q.probe`` is the
expression without its outermost comparisons (and without ``and``/``unless`` guards), which
returns data whenever the metrics exist.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import yaml

__all__ = [
    "DASHBOARD",
    "RULES",
    "DeployQuery",
    "deploy_queries",
    "metric_names",
    "metric_selectors",
    "strip_thresholds",
]

REPO = Path(__file__).resolve().parents[1]
DASHBOARD = REPO / "deploy/grafana/dashboards/streamtrain.json"
RULES = REPO / "deploy/prometheus/rules/streamtrain-alerts.yml"

_METRIC = re.compile(r"\bstreamtrain_[a-z_]+[a-z]\b")
# A metric name with an optional label matcher block right after it.
_SELECTOR = re.compile(r"\b(streamtrain_[a-z_]+[a-z])\b(\{[^}]*\})?")


@dataclass(frozen=True)
class DeployQuery:
    """One expression: where it comes from, its name there, the PromQL, and an always-data probe."""

    source: str  # "dashboard" or "alert"
    name: str  # panel title (plus legend) or alert name
    expr: str
    probe: str


def _substitute(expr: str, run: str, rate_interval: str, range_: str) -> str:
    return (
        expr.replace("$__rate_interval", rate_interval)
        .replace("$__interval", rate_interval)
        .replace("$__range", range_)
        .replace("$run", run)
        .replace("${run}", run)
    )


def strip_thresholds(expr: str) -> str:
    """``A > 10 and B > 0`` -> ``A``: the left operand of the first top-level set/compare operator.

    Only operators at parenthesis depth 0 are considered, so ``sum by (x) (rate(m[5m]))`` stays whole.
    """
    depth = 0
    i = 0
    text = " ".join(expr.split())
    while i < len(text):
        ch = text[i]
        if ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
        elif depth == 0:
            for op in (" and ", " unless ", " or ", " > ", " < ", " >= ", " <= ", " == ", " != "):
                if text.startswith(op, i):
                    return text[:i].strip()
        i += 1
    return text.strip()


def _dashboard_queries(run: str, rate_interval: str, range_: str) -> list[DeployQuery]:
    dashboard = json.loads(DASHBOARD.read_text())
    out = []
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            expr = _substitute(target["expr"], run, rate_interval, range_)
            name = f"{panel['title']} [{target.get('legendFormat', target['refId'])}]"
            out.append(DeployQuery("dashboard", name, expr, expr))
    return out


def _alert_queries(run: str) -> list[DeployQuery]:
    rules = yaml.safe_load(RULES.read_text())
    out = []
    for group in rules["groups"]:
        for rule in group["rules"]:
            expr = " ".join(str(rule["expr"]).split())
            name = rule.get("alert") or rule.get("record")
            probe = strip_thresholds(expr)
            if run != ".+":
                # Alerts are not filtered by run; the probe is, so a test can ask about one worker.
                probe = _SELECTOR.sub(lambda m: _add_matcher(m, f'run=~"{run}"'), probe)
            out.append(DeployQuery("alert", name, expr, probe))
    return out


def _add_matcher(match: re.Match[str], matcher: str) -> str:
    name, labels = match.group(1), match.group(2)
    if not labels or labels == "{}":
        return f"{name}{{{matcher}}}"
    return f"{name}{{{labels[1:-1]},{matcher}}}"


def deploy_queries(run: str = ".+", rate_interval: str = "1m", range_: str = "15m") -> list[DeployQuery]:
    """Every dashboard target and alert expression, Grafana variables replaced."""
    return _dashboard_queries(run, rate_interval, range_) + _alert_queries(run)


def metric_names(expr: str) -> set[str]:
    """The ``streamtrain_*`` sample names an expression reads (``_bucket``/``_total`` suffixes kept)."""
    return set(_METRIC.findall(expr))


def metric_selectors(expr: str) -> list[str]:
    """Each ``streamtrain_*`` selector with its label matchers, e.g. ``streamtrain_x_total{outcome="ok"}``."""
    return [m.group(1) + (m.group(2) or "") for m in _SELECTOR.finditer(expr)]
