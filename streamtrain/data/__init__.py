"""Offline datasets for benchmarks and tests (read from local files only)."""
