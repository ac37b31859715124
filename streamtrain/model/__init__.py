"""The two-tower model, its online id vocabulary and the row-sparse optimizer of its tables.

Names load lazily (PEP 562) so that :mod:`streamtrain.events.ids` (numpy only) can be imported by
the ingest processes without importing torch.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = [
    "FALLBACK_ROW",
    "IdVocabulary",
    "RowSparseOptimizer",
    "Tower",
    "TwoTowerModel",
    "VocabLookup",
    "VocabularyStateError",
    "stable_key",
]

_HOME = {
    "RowSparseOptimizer": "streamtrain.model.sparse_optim",
    "Tower": "streamtrain.model.two_tower",
    "TwoTowerModel": "streamtrain.model.two_tower",
    **{name: "streamtrain.vocab.vocabulary" for name in
       ("FALLBACK_ROW", "IdVocabulary", "VocabLookup", "VocabularyStateError", "stable_key")},
}


def __getattr__(name: str) -> Any:
    if name in _HOME:
        return getattr(importlib.import_module(_HOME[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
