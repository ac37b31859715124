"""The export format: a checkpoint turned into plain files a serving system can load without streamtrain.

``streamtrain export`` writes one directory (format version 1)::

    manifest.json               what is here, how to score, where it came from (below)
    item_embeddings.npy         (N_items, D) float32: the item tower's output per item
    item_ids.json               N_items external item ids (JSON list of strings), row i ↔ embedding i
    user_embeddings.npy         (N_users, D) float32: the user tower's output per known user
    user_ids.json               N_users external user ids, row i ↔ embedding i
    user_fallback.npy           (D,) float32: the embedding of a user the model has never seen
    user_tower.pt               torch state_dict of the user tower (embedding table [+ MLP head])
    user_rows.npy               (N_users,) int64: each user's row in that table (row 0 = fallback)
    user_history.npy            history models only: (N_users, H) int64, each user's last H items as
                                positions in item_embeddings (-1 = none), oldest first; what
                                ``recommend --exclude-recent`` leaves out (optional: in "files" when written)
    items.faiss                 a FAISS index over item_embeddings: HNSW by default (approximate;
                                its recall@20 against exact search is in the manifest), or
                                IndexFlatIP (exact); see streamtrain/serving/ann.py

Scoring is the model's: ``score(u, i) = <user_embedding[u], item_embedding[i]> / temperature``.
When ``model.normalize`` is true (the default) both embeddings are already L2-normalised, as the
model scores them, so the inner product is a cosine; ranking by inner product (``item_embeddings @ q``,
or FAISS ``IndexFlatIP``) gives the model's ranking exactly, the HNSW index approximately. The
temperature scales scores only, never the order.

Users: every user with its own row is in ``user_embeddings``. A user that is not there (new, or
not admitted yet) is served like the worker serves it: with ``user_fallback``. ``user_tower.pt``
plus ``user_rows.npy`` rebuild the tower itself (``Tower(capacity, D, hidden_dims, normalize)``
from :mod:`streamtrain.model.two_tower`, ``load_state_dict``) to embed users in-process, e.g. after
mapping them to rows yourself. That holds for an id-only model (``model.user_features == "id"``);
a history model's user embeddings are its queries from each user's stored recent items at the
checkpoint (the user tower alone cannot rebuild them: they need the item tower and the histories).

Items: only items with their own row are candidates (the fallback item row is not an item).

``manifest.json``::

    {"format": "streamtrain-export", "format_version": 1, "created_at": "<ISO 8601 UTC>",
     "streamtrain_version": "...",
     "source": {"path": ".../ckpt-000000000007.pt", "run": "...", "checkpoint_id": 7, "step": 812,
                "committed": true, "events": 831488, "offsets": {"<topic>:<partition>": 831488}},
     "model": {"dim": 64, "temperature": 0.1, "normalize": true, "hidden_dims": [],
               "user_capacity": 32768, "item_capacity": 65536},
     "counts": {"items": 40981, "users": 29858},
     "score": "dot(user_embedding, item_embedding) / temperature",
     "files": {"item_embeddings": "item_embeddings.npy", ...},
     "faiss": {"file": "items.faiss", "index": "IndexHNSWFlat", "exact": false,
               "params": {"M": 32, "efConstruction": 40, "efSearch": 128}, "build_seconds": 1.2,
               "recall_at_20": {"recall": 0.99, "queries": 1000, ...}} | null}

``source.committed`` is true when the checkpoint is the one Redis named as committed when it was
exported; ``events`` and ``offsets`` (next offset to train per partition) are then what that commit
stored, else null.

A reader checks ``format`` and ``format_version`` (a reader for version 1 refuses other versions)
and that array shapes match ``counts`` and ``dim``. The directory is written under a temporary
name and renamed at the end, so a crash never leaves a half-written export under the final name.

Published exports (``streamtrain consume`` with ``export.every_checkpoints``, see
:mod:`streamtrain.serving.publish`) live in ``<export.dir>/<run>/v-<checkpoint id>/`` with a
``latest`` symlink; :func:`read_export` given that folder follows ``latest`` once, so everything it
reads comes from one version.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import shutil
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from streamtrain import __version__
from streamtrain.errors import StreamtrainError
from streamtrain.vocab.vocabulary import FALLBACK_ROW
from streamtrain.serving.ann import IndexSpec, build_index, faiss_module, recall_against_exact
from streamtrain.serving.checkpoint_model import LoadedCheckpoint, hidden_dims_of

__all__ = ["FORMAT", "FORMAT_VERSION", "Export", "ExportError", "faiss_module", "read_export", "resolve_export",
           "write_export"]

log = logging.getLogger(__name__)

FORMAT = "streamtrain-export"
FORMAT_VERSION = 1
FILES = {
    "item_embeddings": "item_embeddings.npy",
    "item_ids": "item_ids.json",
    "user_embeddings": "user_embeddings.npy",
    "user_ids": "user_ids.json",
    "user_fallback": "user_fallback.npy",
    "user_tower": "user_tower.pt",
    "user_rows": "user_rows.npy",
}
HISTORY_FILE = "user_history.npy"
FAISS_FILE = "items.faiss"
_CHUNK = 65536


class ExportError(StreamtrainError):
    """An export cannot be written (target exists) or read (missing file, other version, bad shapes)."""


LATEST = "latest"
RECALL_K = 20
_RECALL_QUERIES = 1000


@torch.no_grad()
def _embed(tower: Any, rows: np.ndarray, dim: int) -> np.ndarray:
    """(n,) rows → (n, D) float32 outputs of ``tower`` (a callable on rows), in chunks (a 1M-row
    table need not fit twice)."""
    parts = [tower(torch.from_numpy(rows[s : s + _CHUNK])).float().numpy() for s in range(0, len(rows), _CHUNK)]
    return np.concatenate(parts) if parts else np.empty((0, dim), dtype=np.float32)


def _owned_rows(vocab: Any) -> tuple[np.ndarray, list[str]]:
    rows = vocab.known_rows("cpu").numpy().astype(np.int64)
    return rows, [str(i) for i in vocab.ids_of(rows)]


def _index_entry(items: np.ndarray, users: np.ndarray, spec: IndexSpec, staging: Path) -> dict[str, Any] | None:
    """Build, measure (recall@20 against exact search for up to 1,000 seeded users) and save the index."""
    if spec.kind == "none" or len(items) == 0:
        return None
    if faiss_module() is None:
        log.warning("faiss is not importable (pip install faiss-cpu): no items.faiss, recommend uses numpy")
        return None
    index, info = build_index(items, spec)
    rng = np.random.default_rng(0)
    queries = users[rng.permutation(len(users))[:_RECALL_QUERIES]] if len(users) else users
    info["recall_at_20"] = recall_against_exact(index, items, queries, RECALL_K)
    faiss_module().write_index(index, str(staging / FAISS_FILE))
    return {"file": FAISS_FILE, **info}


def _history_columns(model: Any, item_rows: np.ndarray, user_rows: np.ndarray) -> np.ndarray:
    """(N_users, H) the users' stored recent items as positions in the exported items, -1 = none."""
    column = np.full(int(model.item.embedding.weight.shape[0]), -1, dtype=np.int64)  # item row -> position
    column[item_rows] = np.arange(len(item_rows))
    rows = model.history.items[torch.from_numpy(user_rows)].long().cpu().numpy()  # (N_users, H), -1 empty
    return np.where(rows > FALLBACK_ROW, column[np.maximum(rows, 0)], -1)


def write_export(
    ckpt: LoadedCheckpoint,
    out_dir: Path,
    *,
    force: bool = False,
    use_faiss: bool = True,
    index: IndexSpec | None = None,
) -> dict[str, Any]:
    """Write ``ckpt`` to ``out_dir`` in the format above; returns the manifest.

    ``force`` replaces an existing export directory; ``index`` chooses the FAISS index (default HNSW;
    ``use_faiss`` False is ``IndexSpec(kind="none")``). Raises ExportError when ``out_dir`` exists (and
    is not empty) without ``force``.
    """
    spec = IndexSpec(kind="none") if not use_faiss else (index or IndexSpec())
    out_dir = Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()) and not force:
        raise ExportError(f"{out_dir} exists and is not empty; pass --force to replace it")
    model = ckpt.model
    item_rows, item_ids = _owned_rows(ckpt.item_vocab)
    user_rows, user_ids = _owned_rows(ckpt.user_vocab)
    staging = out_dir.with_name(f".{out_dir.name}.{uuid.uuid4().hex[:8]}.tmp")
    staging.mkdir(parents=True)
    try:
        # Users through the model's query tower: for a history model, from their stored histories.
        items = _embed(model.item, item_rows, model.dim)  # (N_items, D)
        users = _embed(model.user_tower, user_rows, model.dim)  # (N_users, D)
        fallback = _embed(model.user_tower, np.asarray([FALLBACK_ROW], dtype=np.int64), model.dim)[0]  # (D,)
        np.save(staging / FILES["item_embeddings"], items)
        np.save(staging / FILES["user_embeddings"], users)
        np.save(staging / FILES["user_fallback"], fallback)
        np.save(staging / FILES["user_rows"], user_rows)
        (staging / FILES["item_ids"]).write_text(json.dumps(item_ids))
        (staging / FILES["user_ids"]).write_text(json.dumps(user_ids))
        torch.save(model.user.state_dict(), staging / FILES["user_tower"])
        files = dict(FILES)
        if model.uses_history:
            np.save(staging / HISTORY_FILE, _history_columns(model, item_rows, user_rows))
            files["user_history"] = HISTORY_FILE
        faiss_info = _index_entry(items, users, spec, staging)
        manifest = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "created_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "streamtrain_version": __version__,
            "source": ckpt.describe(),
            "model": {
                "dim": int(model.dim),
                "temperature": float(model.temperature),
                "normalize": bool(model.user.normalize),
                "hidden_dims": hidden_dims_of(model.state_dict()),
                "user_features": model.user_features,
                "user_capacity": int(model.user.embedding.weight.shape[0]),
                "item_capacity": int(model.item.embedding.weight.shape[0]),
            },
            "counts": {"items": len(item_ids), "users": len(user_ids)},
            "score": "dot(user_embedding, item_embedding) / temperature",
            "files": files,
            "faiss": faiss_info,
        }
        (staging / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
        if out_dir.exists():
            shutil.rmtree(out_dir)
        staging.rename(out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return manifest


@dataclass
class Export:
    """An export opened for serving; embeddings are memory-mapped (read-only)."""

    path: Path
    manifest: dict[str, Any]
    item_ids: list[str]
    item_embeddings: np.ndarray  # (N_items, D) float32
    user_ids: list[str]
    user_embeddings: np.ndarray  # (N_users, D) float32
    user_fallback: np.ndarray  # (D,) float32
    faiss_index: Any | None = None
    user_history: np.ndarray | None = None  # (N_users, H) int64 item positions, -1 none; history models only

    def __post_init__(self) -> None:
        self._user_index = {u: i for i, u in enumerate(self.user_ids)}
        self._item_index: dict[str, int] | None = None

    @property
    def temperature(self) -> float:
        return float(self.manifest["model"]["temperature"])

    def user_embedding(self, user_id: str) -> tuple[np.ndarray, bool]:
        """(D,) embedding of ``user_id`` and whether the user is known (False: the fallback embedding)."""
        index = self._user_index.get(user_id)
        if index is None:
            return self.user_fallback, False
        return self.user_embeddings[index], True

    def recent_columns(self, user_id: str) -> np.ndarray:
        """Sorted distinct positions of ``user_id``'s last H items (empty for an unknown user).

        Raises:
            ExportError: the export holds no histories (an id-only model, or written before they were).
        """
        if self.user_history is None:
            raise ExportError(
                f"{self.path} holds no user histories (user_history.npy): an id-only model, or an export from "
                "an older streamtrain; re-export a history model with `streamtrain export`, or drop --exclude-recent"
            )
        index = self._user_index.get(user_id)
        if index is None:
            return np.zeros(0, dtype=np.int64)
        row = np.asarray(self.user_history[index])
        return np.unique(row[row >= 0])

    def item_columns(self, item_ids: Iterable[str]) -> np.ndarray:
        """Sorted distinct positions of the ``item_ids`` that are in the export (unknown ids are skipped)."""
        if self._item_index is None:
            self._item_index = {item: i for i, item in enumerate(self.item_ids)}
        index = self._item_index
        return np.unique(np.asarray([index[i] for i in item_ids if i in index], dtype=np.int64))


def resolve_export(path: Path, checkpoint_id: int | None = None) -> Path:
    """The export directory meant by ``path``: itself, or for a published folder (one holding
    ``latest``) the version ``latest`` points to now, or ``v-<checkpoint_id>`` when an id is given.

    ``latest`` is read once, so a caller that then reads from the returned directory never mixes
    two versions even while the worker publishes the next one.
    """
    path = Path(path)
    if checkpoint_id is not None:
        version = path / f"v-{checkpoint_id:012d}"
        if not version.is_dir():
            kept = sorted(p.name for p in path.glob("v-*")) if path.is_dir() else []
            raise ExportError(f"{path} has no export of checkpoint {checkpoint_id}; kept versions: {kept or 'none'}")
        return version
    pointer = path / LATEST
    if pointer.is_symlink():
        return path / os.readlink(pointer)
    return path


def read_export(path: Path, *, load_faiss: bool = True, checkpoint_id: int | None = None) -> Export:
    """Open an export directory (or a published folder: see :func:`resolve_export`); checks the format,
    version and shapes (raises ExportError)."""
    path = resolve_export(path, checkpoint_id)
    manifest_path = path / "manifest.json"
    if not manifest_path.is_file():
        raise ExportError(f"{path} is not an export: no manifest.json (create one with `streamtrain export`)")
    manifest = json.loads(manifest_path.read_text())
    if manifest.get("format") != FORMAT or manifest.get("format_version") != FORMAT_VERSION:
        raise ExportError(
            f"{manifest_path}: format {manifest.get('format')!r} version {manifest.get('format_version')!r}; "
            f"this streamtrain reads {FORMAT!r} version {FORMAT_VERSION}"
        )
    files = manifest["files"]
    try:
        items = np.load(path / files["item_embeddings"], mmap_mode="r")
        users = np.load(path / files["user_embeddings"], mmap_mode="r")
        fallback = np.load(path / files["user_fallback"])
        item_ids = json.loads((path / files["item_ids"]).read_text())
        user_ids = json.loads((path / files["user_ids"]).read_text())
        history = np.load(path / files["user_history"], mmap_mode="r") if "user_history" in files else None
    except (OSError, ValueError) as exc:
        raise ExportError(f"{path}: cannot read the export's files: {exc}") from exc
    dim, counts = manifest["model"]["dim"], manifest["counts"]
    if items.shape != (counts["items"], dim) or len(item_ids) != counts["items"]:
        raise ExportError(f"{path}: item embeddings {items.shape} / {len(item_ids)} ids do not match the manifest")
    if users.shape != (counts["users"], dim) or len(user_ids) != counts["users"] or fallback.shape != (dim,):
        raise ExportError(f"{path}: user embeddings {users.shape} / {len(user_ids)} ids do not match the manifest")
    if history is not None and (history.ndim != 2 or history.shape[0] != counts["users"]):
        raise ExportError(f"{path}: user histories {history.shape} do not match {counts['users']} users")
    index = None
    if load_faiss and manifest.get("faiss"):
        faiss = faiss_module()
        if faiss is None:
            log.info("%s has a FAISS index but faiss is not importable: scoring with numpy", path)
        else:
            index = faiss.read_index(str(path / manifest["faiss"]["file"]))
    return Export(path, manifest, item_ids, items, user_ids, users, fallback, index, history)
