"""Vocabularies: stable ids to embedding rows, admission and eviction."""
