"""The export's item index for serving: FAISS HNSW (approximate) or a flat inner-product index (exact).

Retrieval is maximum inner product search over the item embeddings (cosine when ``model.normalize``).
Exact search costs O(N·D) per query; HNSW (Malkov & Yashunin) walks a layered proximity graph and
visits a few thousand items instead, at the price of missing some of the true top k. How many it
misses is measured, never assumed: :func:`recall_against_exact` compares the index's top k with the
exact top k for a set of queries (the users of the export), and the export manifest records it.

Parameters (``export.hnsw_*``): ``M`` links per node (memory and recall), ``efConstruction`` the
candidate list while building (build time and graph quality), ``efSearch`` the candidate list per
query (latency and recall; stored in the index file, so a reader searches as measured).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Any, Literal

import numpy as np

__all__ = ["IndexKind", "IndexSpec", "build_index", "faiss_module", "recall_against_exact"]

IndexKind = Literal["hnsw", "flat", "none"]


def faiss_module() -> Any | None:
    """The ``faiss`` module when importable (``faiss-cpu`` is a dependency), else None."""
    try:
        import faiss  # type: ignore[import-not-found]
    except ImportError:
        return None
    return faiss


@dataclass(frozen=True)
class IndexSpec:
    """Which index to build and its HNSW parameters."""

    kind: IndexKind = "hnsw"
    m: int = 32
    ef_construction: int = 40
    ef_search: int = 128

    def describe(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_config(cls, export: Any) -> IndexSpec:
        """From an :class:`~streamtrain.config.ExportConfig` (``export.index``, ``export.hnsw_*``)."""
        return cls(export.index, export.hnsw_m, export.hnsw_ef_construction, export.hnsw_ef_search)


def build_index(items: np.ndarray, spec: IndexSpec) -> tuple[Any, dict[str, Any]]:
    """An index over ``items`` (N, D) float32 for inner-product search, and its manifest entry.

    Raises RuntimeError when faiss is not importable and ``spec.kind`` is not ``none``.
    """
    faiss = faiss_module()
    if faiss is None:
        raise RuntimeError("faiss is not importable: pip install faiss-cpu")
    items = np.ascontiguousarray(items, dtype=np.float32)
    started = time.perf_counter()
    dim = items.shape[1]
    if spec.kind == "hnsw":
        index = faiss.IndexHNSWFlat(dim, spec.m, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = spec.ef_construction
        index.add(items)
        index.hnsw.efSearch = spec.ef_search
        info = {"index": "IndexHNSWFlat", "exact": False, "params": {
            "M": spec.m, "efConstruction": spec.ef_construction, "efSearch": spec.ef_search}}
    elif spec.kind == "flat":
        index = faiss.IndexFlatIP(dim)
        index.add(items)
        info = {"index": "IndexFlatIP", "exact": True, "params": {}}
    else:
        raise ValueError(f"no index of kind {spec.kind!r}")
    info["build_seconds"] = round(time.perf_counter() - started, 3)
    return index, info


def recall_against_exact(index: Any, items: np.ndarray, queries: np.ndarray, k: int = 20) -> dict[str, float]:
    """Mean |index top-k ∩ exact top-k| / k over ``queries`` (Q, D), and the two search times.

    The exact top k is computed with numpy (``queries @ items.T``); ties at the k-th score may make an
    exact search disagree with itself, so a value slightly below 1 for a flat index is possible.
    """
    items = np.ascontiguousarray(items, dtype=np.float32)
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    k = min(k, len(items))
    if k < 1 or len(queries) == 0:
        return {"recall": float("nan"), "queries": 0, "k": k, "exact_ms_per_query": 0.0, "index_ms_per_query": 0.0}
    started = time.perf_counter()
    exact = np.argpartition(-(queries @ items.T), k - 1, axis=1)[:, :k]  # (Q, k), unordered
    exact_s = time.perf_counter() - started
    started = time.perf_counter()
    _, found = index.search(queries, k)  # (Q, k)
    index_s = time.perf_counter() - started
    hits = sum(len(set(a.tolist()) & set(b.tolist())) for a, b in zip(exact, found))
    return {
        "recall": hits / (k * len(queries)),
        "queries": int(len(queries)),
        "k": int(k),
        "exact_ms_per_query": 1000 * exact_s / len(queries),
        "index_ms_per_query": 1000 * index_s / len(queries),
    }
