"""Loader of the Gowalla split in ../shared/data/gowalla (``user item item ...`` per line).

Files ``train.txt``, ``valid.txt`` and ``test.txt``; each line is a user id followed by the ids of
the items that user interacted with in that split (the LightGCN/XIR preprocessing). Used by
bench/quality.py and by tests that want real data; nothing here downloads anything.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from streamtrain.errors import StreamtrainError

__all__ = ["DEFAULT_GOWALLA_DIR", "DatasetError", "GowallaData", "load_gowalla", "read_user_items"]

DEFAULT_GOWALLA_DIR = Path(__file__).resolve().parents[2].parent / "shared/data/gowalla"
_SPLITS = ("train", "valid", "test")


class DatasetError(StreamtrainError):
    """A data file is missing or malformed; the message names the file and line."""


def read_user_items(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Read one ``user item item ...`` file into paired (users (n,), items (n,)) int64 arrays,
    in file order. A line with a user and no items contributes nothing."""
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"{path} does not exist; pass the dataset folder explicitly")
    users: list[np.ndarray] = []
    items: list[np.ndarray] = []
    with path.open() as handle:
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
    """Read train/valid/test from ``root`` (default: ``DEFAULT_GOWALLA_DIR``)."""
    base = Path(root) if root is not None else DEFAULT_GOWALLA_DIR
    splits = {name: read_user_items(base / f"{name}.txt") for name in _SPLITS}
    return GowallaData(**splits)
