"""The two-tower model, its online id vocabulary and the row-sparse optimizer of its tables."""

from streamtrain.model.sparse_optim import RowSparseOptimizer
from streamtrain.model.two_tower import Tower, TwoTowerModel
from streamtrain.model.vocabulary import (
    FALLBACK_ROW,
    IdVocabulary,
    VocabLookup,
    VocabularyStateError,
    stable_key,
)

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
