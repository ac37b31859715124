"""Top-k items for a user from an export (:mod:`streamtrain.serving.export_format`).

Maximum inner product search: exact with numpy (``item_embeddings @ q``, then a partial sort), or
with the export's FAISS index when it has one and faiss is importable: ``IndexFlatIP`` is exact too
(same items; ties may order differently), HNSW is approximate (its recall@20 against exact search
was measured at export time and is in the manifest). Items the user has already seen
can be excluded; a user the export does not know gets the fallback embedding, as in the worker.
Scores are the model's: inner product / temperature.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import Any, Literal

import numpy as np

from streamtrain.serving.export_format import Export, ExportError

__all__ = ["Backend", "Recommendation", "recommend"]

Backend = Literal["auto", "numpy", "faiss"]


@dataclass
class Recommendation:
    """The top-k of one user; ``items`` and ``scores`` best first."""

    user_id: str
    known_user: bool  # False: scored with the fallback embedding
    items: list[str]
    scores: list[float]
    excluded: int  # seen items removed from the ranking (those the export knows)
    backend: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _top_numpy(export: Export, query: np.ndarray, k: int, excluded: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    scores = np.asarray(export.item_embeddings @ query, dtype=np.float32)  # (N,)
    scores[excluded] = -np.inf
    k = min(k, len(scores) - len(excluded))
    if k <= 0:
        return np.empty(0, dtype=np.int64), np.empty(0, dtype=np.float32)
    candidates = np.argpartition(-scores, k - 1)[:k] if k < len(scores) else np.arange(len(scores))
    order = np.lexsort((candidates, -scores[candidates]))  # best first; ties by position, deterministic
    top = candidates[order]
    return top, scores[top]


def _top_faiss(export: Export, query: np.ndarray, k: int, excluded: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    n = export.item_embeddings.shape[0]
    # Ask for k + |excluded| so k remain after dropping the seen ones (they may all rank on top).
    want = min(n, k + len(excluded))
    if want <= 0:
        return np.empty(0, dtype=np.int64), np.empty(0, dtype=np.float32)
    scores, cols = export.faiss_index.search(np.ascontiguousarray(query[None, :], dtype=np.float32), want)
    keep = (cols[0] >= 0) & ~np.isin(cols[0], excluded)
    return cols[0][keep][:k].astype(np.int64), scores[0][keep][:k]


def recommend(
    export: Export, user_id: str, k: int, *, exclude: Iterable[str] = (), backend: Backend = "auto",
    exclude_recent: bool = False,
) -> Recommendation:
    """The ``k`` best items for ``user_id`` not in ``exclude`` (nor, with ``exclude_recent``, among the
    user's own last H items at the export: ``trainer.exclude_history_items``, as progressive evaluation).

    ``backend``: ``auto`` uses FAISS when the export has an index loaded, else numpy. Raises
    ExportError for ``faiss`` without a loaded index and ValueError for ``k < 1``.
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if backend == "faiss" and export.faiss_index is None:
        raise ExportError(f"{export.path} has no FAISS index loaded (no items.faiss, or faiss is not importable)")
    use = "faiss" if backend == "faiss" or (backend == "auto" and export.faiss_index is not None) else "numpy"
    query, known = export.user_embedding(str(user_id))
    excluded = export.item_columns(exclude)
    if exclude_recent:
        excluded = np.union1d(excluded, export.recent_columns(str(user_id)))
    top, scores = (_top_faiss if use == "faiss" else _top_numpy)(export, np.asarray(query, np.float32), k, excluded)
    return Recommendation(
        user_id=str(user_id),
        known_user=known,
        items=[export.item_ids[int(c)] for c in top],
        scores=[float(s) / export.temperature for s in scores],
        excluded=len(excluded),
        backend=use,
    )
