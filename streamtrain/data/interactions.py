"""User–item pairs from interaction files, for evaluation and exclusion lists.

Any format the replay reader takes (:mod:`streamtrain.replay.readers`): Gowalla ``user item item
...`` lines, JSONL events (``{"user_id": ..., "item_id": ...}``), CSV, MovieLens, Parquet; the
format is detected per file unless given. Ids come back as strings, exactly as the worker sees
them after decoding, so they map through a checkpoint's vocabulary. Bad lines are counted, not fatal.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from streamtrain.data.gowalla import DatasetError
from streamtrain.events.batch import object_array
from streamtrain.replay import read_log
from streamtrain.replay.errors import ReplayError

__all__ = ["Interactions", "read_interactions"]


@dataclass(frozen=True)
class Interactions:
    """Paired ``users`` (n,) and ``items`` (n,) object arrays of str ids, in file order."""

    users: np.ndarray
    items: np.ndarray
    files: tuple[str, ...]
    bad_lines: int

    def __len__(self) -> int:
        return len(self.users)

    def by_user(self) -> dict[str, list[str]]:
        """User → its items in file order (a user's first appearance fixes its position)."""
        out: dict[str, list[str]] = {}
        for user, item in zip(self.users.tolist(), self.items.tolist()):
            out.setdefault(user, []).append(item)
        return out


def read_interactions(paths: Sequence[str | Path], fmt: str | None = None) -> Interactions:
    """Read every file (in order) into one :class:`Interactions`.

    Raises:
        DatasetError: a file is missing or its format cannot be told.
    """
    paths = [Path(p) for p in paths]
    for path in paths:
        if not path.is_file():
            raise DatasetError(f"{path} does not exist")
    try:
        log, report = read_log(paths, fmt=fmt)
    except ReplayError as exc:
        raise DatasetError(str(exc)) from exc
    return Interactions(object_array(log.users), object_array(log.items), tuple(map(str, paths)), report.bad_total)
