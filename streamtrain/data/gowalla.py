"""Loader of the Gowalla split shipped in the package (``user item item ...`` per line).

Files ``train``, ``valid`` and ``test`` (``.txt.gz`` as shipped in ``streamtrain/data/gowalla/``,
or plain ``.txt`` in a folder passed explicitly); each line is a user id followed by the ids of
the items that user interacted with in that split (the LightGCN/XIR preprocessing). Source,
citation and licence: ``streamtrain/data/gowalla/README.md``. Used by the demo, bench/quality.py,
the replay examples and tests that want real data; nothing here downloads anything.
"""

from __future__ import annotations

import gzip
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from streamtrain.errors import StreamtrainError

__all__ = [
    "DEFAULT_GOWALLA_DIR", "DatasetError", "GowallaData", "gowalla_file", "load_gowalla", "read_user_items",
]

DEFAULT_GOWALLA_DIR = Path(__file__).resolve().parent / "gowalla"
"""The copy shipped inside the package (gzip -9); any folder with the same files overrides it."""
_SPLITS = ("train", "valid", "test")


class DatasetError(StreamtrainError):
    """A data file is missing or malformed; the message names the file and line."""


def gowalla_file(root: str | Path | None, split: str) -> Path:
    """The file of ``split`` (train/valid/test) in ``root`` (default: the shipped copy):
    ``<split>.txt`` when present, else ``<split>.txt.gz``. Raises DatasetError naming both."""
    base = Path(root) if root is not None else DEFAULT_GOWALLA_DIR
    for name in (f"{split}.txt", f"{split}.txt.gz"):
        if (base / name).is_file():
            return base / name
    raise DatasetError(f"{base} has neither {split}.txt nor {split}.txt.gz; pass a folder that holds the Gowalla "
                       f"split (the repository ships one in {DEFAULT_GOWALLA_DIR})")


def read_user_items(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Read one ``user item item ...`` file (plain or ``.gz``) into paired (users (n,), items (n,))
    int64 arrays, in file order. A line with a user and no items contributes nothing."""
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"{path} does not exist; pass the dataset folder explicitly")
    users: list[np.ndarray] = []
    items: list[np.ndarray] = []
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt") as handle:
        for lineno, line in enumerate(handle, 1):
            fields = line.split()
            if not fields:
                continue
            try:
                values = np.asarray(fields, dtype=np.int64)
            except ValueError:
                raise DatasetError(f"{path}:{lineno}: expected integer ids, got {line.strip()[:80]!r}") from None
            users.append(np.full(len(values) - 1, values[0], dtype=np.int64))
            items.append(values[1:])
    if not users:
        return np.empty(0, dtype=np.int64), np.empty(0, dtype=np.int64)
    return np.concatenate(users), np.concatenate(items)


@dataclass(frozen=True)
class GowallaData:
    """The three splits as paired int64 arrays ``(users, items)``."""

    train: tuple[np.ndarray, np.ndarray]
    valid: tuple[np.ndarray, np.ndarray]
    test: tuple[np.ndarray, np.ndarray]

    @property
    def num_users(self) -> int:
        return int(max(split[0].max(initial=-1) for split in (self.train, self.valid, self.test))) + 1

    @property
    def num_items(self) -> int:
        return int(max(split[1].max(initial=-1) for split in (self.train, self.valid, self.test))) + 1


def load_gowalla(root: str | Path | None = None) -> GowallaData:
    """Read train/valid/test from ``root`` (default: ``DEFAULT_GOWALLA_DIR``, the shipped copy)."""
    splits = {name: read_user_items(gowalla_file(root, name)) for name in _SPLITS}
    return GowallaData(**splits)
