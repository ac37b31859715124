"""Evaluation: progressive (test-then-train) metrics, streaming baselines, probe, offline."""
