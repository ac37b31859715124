"""The worker's periodic log line: what a person watching a terminal needs at a glance.

``step 1200: 8,512 events/s, lag 40,960 messages, loss 3.1415, Recall@20 0.0812, ESS 143.2, 1,228,800 events``

* lag: messages between the broker's end offsets and what was trained; ``unknown`` until the
  first end-offset query answers (never ``None``);
* Recall@K: the progressive (test-then-train) rolling average of the last evaluated step, K = 20
  when ``trainer.eval_k`` has it, else its first K; ``n/a`` before the first evaluated step;
* ESS: effective sample size of the resampling weights (bir/xir: every step; others: the
  sampling-bias probe's, when it ran), ``n/a`` when neither has reported.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

__all__ = ["StatusLine"]


def _fmt(value: float | None, spec: str) -> str:
    return "n/a" if value is None else format(value, spec)


class StatusLine:
    """Remembers the last progressive recall and ESS between log lines (they arrive on some steps only)."""

    def __init__(self, eval_k: Sequence[int]) -> None:
        self.k = 20 if 20 in eval_k or not eval_k else int(eval_k[0])
        self.recall: float | None = None
        self.ess: float | None = None

    def observe(
        self,
        progressive: Mapping[str, float] | None,
        sampler_stats: Mapping[str, float] | None,
        probe: Mapping[str, float] | None,
    ) -> None:
        """Take what one step reported; called after every step."""
        if progressive and f"recall@{self.k}" in progressive:
            self.recall = float(progressive[f"recall@{self.k}"])
        for source in (sampler_stats, probe):
            if source and "ess" in source:
                self.ess = float(source["ess"])

    def format(self, step: int, events_per_s: float, lag: int | None, loss: float, events: int) -> str:
        lag_text = "unknown" if lag is None else f"{lag:,} messages"
        return (
            f"step {step}: {events_per_s:,.0f} events/s, lag {lag_text}, loss {loss:.4f}, "
            f"Recall@{self.k} {_fmt(self.recall, '.4f')}, ESS {_fmt(self.ess, '.1f')}, {events:,} events trained"
        )
