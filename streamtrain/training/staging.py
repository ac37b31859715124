"""Steps 1-3 of a training step: map ids to rows on the host, upload the batch once, re-initialise
the rows the vocabularies (re)assigned, in a :class:`~streamtrain.training.state.TrainState`.

Everything the device needs is computed on the host first (rows, initial values of new rows,
their item keys, event weights, the history tower's batch order, known items when the vocabulary
has holes) and shipped in one pinned upload (:mod:`streamtrain.training.prefetch`); nothing is
read back from the device. The host work keeps the old order (users, then items; the CPU
generator draws in the same order), so results are bit-identical to a per-tower upload.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from streamtrain.events.batch import EventBatch
from streamtrain.model.history import BatchOrder, OrderTensors
from streamtrain.training.prefetch import BatchPrefetcher
from streamtrain.training.state import TrainState
from streamtrain.vocab.vocabulary import IdVocabulary

__all__ = ["Lookup", "Staged", "apply_assigned", "lookup_ids", "stage_batch"]


@dataclass
class Lookup:
    """Host result of mapping one tower's ids: rows (B,), rows (re)assigned (n,) with their initial
    values (n, D), and for items their stable keys (n,)."""

    tower: str
    rows: np.ndarray
    assigned: np.ndarray
    values: np.ndarray | None
    keys: np.ndarray | None
    evicted: bool

    def arrays(self) -> list[np.ndarray]:
        extra = [] if not self.assigned.size else [self.assigned, self.values]
        if self.assigned.size and self.keys is not None:
            extra.append(self.keys)
        return [self.rows, *extra]  # type: ignore[list-item]


@dataclass
class Staged:
    """One batch on the device: rows (B,), weights (B,) or None, batch order, known items (N,); and
    the host's rows and event times (B,) for host-side consumers (the co-visitation baseline)."""

    user_rows: torch.Tensor
    item_rows: torch.Tensor
    weights: torch.Tensor | None
    order: OrderTensors | None
    known: torch.Tensor
    new_items: torch.Tensor | None = None  # (n,) item rows assigned this step; None when none
    host_user_rows: np.ndarray | None = None
    host_item_rows: np.ndarray | None = None
    event_time: np.ndarray | None = None


def lookup_ids(state: TrainState, tower: str, vocab: IdVocabulary, ids: np.ndarray, times: np.ndarray) -> Lookup:
    """Step 1 for one tower: rows for ``ids`` (n,), admitting new ids; initial values of new rows."""
    evictions_before = vocab.evictions_total
    lookup = vocab.lookup(ids, admit=True, event_time=times)
    values = keys = None
    if lookup.assigned.size:
        values = state.model.init_values(lookup.assigned.size, state.gen).numpy()  # (n, D)
        if tower == "item":
            keys = vocab.row_keys[lookup.assigned]  # (n,)
    evicted = vocab.evictions_total != evictions_before
    return Lookup(tower, lookup.rows, lookup.assigned, values, keys, evicted)


def apply_assigned(state: TrainState, found: Lookup, dev: list[torch.Tensor]) -> None:
    """Step 3 for one tower, with its uploaded arrays ``dev`` (:meth:`Lookup.arrays` order)."""
    if not found.assigned.size:
        return
    tower = found.tower
    assigned, values = dev[1], dev[2]
    state.model.reinit_rows(tower, assigned, values=values)  # type: ignore[arg-type]
    for table in state.model.row_tables(tower):  # type: ignore[arg-type]
        state.sparse_optimizer.reset_rows(table, assigned)
    if tower == "item":
        state.item_keys[assigned] = dev[3]
        state.sampler.forget_rows(assigned)  # cache/bank entries of the row's old id
        state.popularity.forget_rows(assigned)
        if state.covisit is not None:  # host rows: the baseline lives on the host
            state.covisit.forget_items(found.assigned, evicted=found.evicted)
        if found.evicted:  # a fresh row is in no history yet
            state.model.history.forget_items(assigned)
            state.replay.forget()
    else:
        state.model.history.forget_users(assigned)
        if found.evicted:
            state.replay.forget()
        if state.covisit is not None:
            state.covisit.forget_users(found.assigned)


def stage_batch(state: TrainState, prefetcher: BatchPrefetcher, batch: EventBatch, *, admit: bool = True) -> Staged:
    """Steps 1-3: host lookups, one upload, row re-initialisation. ``admit=False`` (the probe)
    maps ids read-only."""
    if admit:
        user = lookup_ids(state, "user", state.user_vocab, batch.user_ids, batch.event_time)
        item = lookup_ids(state, "item", state.item_vocab, batch.item_ids, batch.event_time)
    else:
        none = np.zeros(0, dtype=np.int64)
        user = Lookup("user", state.user_vocab.lookup(batch.user_ids, admit=False).rows, none, None, None, False)
        item = Lookup("item", state.item_vocab.lookup(batch.item_ids, admit=False).rows, none, None, None, False)
    parts = [user.arrays(), item.arrays()]
    weights = None if bool(np.all(batch.weight == 1.0)) else np.asarray(batch.weight, dtype=np.float32)
    parts.append([] if weights is None else [weights])
    # BatchOrder from the *host* rows: reading them back from the device would be a sync.
    order = BatchOrder(np.asarray(user.rows), batch.event_time) if state.model.uses_history else None
    parts.append([] if order is None else order.arrays())
    known_host = state.item_vocab.known_rows_host()
    parts.append([] if known_host is None else [known_host])
    dev = prefetcher.upload([a for part in parts for a in part])
    split, at = [], 0
    for part in parts:
        split.append(dev[at : at + len(part)])
        at += len(part)
    apply_assigned(state, user, split[0])
    apply_assigned(state, item, split[1])
    known = state.item_vocab.known_rows(state.device) if known_host is None else split[4][0]
    return Staged(
        user_rows=split[0][0], item_rows=split[1][0], weights=split[2][0] if split[2] else None,
        order=OrderTensors(*split[3]) if split[3] else None, known=known,
        host_user_rows=np.asarray(user.rows), host_item_rows=np.asarray(item.rows), event_time=batch.event_time,
        new_items=split[1][1] if item.assigned.size else None,
    )
