"""The two-tower retrieval model: a query (user) tower and an item tower over id-embedding tables.

Each tower is an embedding table of ``capacity`` rows × D (row 0 is the vocabulary's fallback
row), optionally followed by an MLP head (``hidden_dims``, ReLU, projected back to D), and
L2-normalised when ``normalize`` is set; the score is ``<q_u, v_i> / temperature``.

What the query is built from (``user_features``, see docs/algorithms.md "The query tower"):

* ``"id"``: the user's own embedding row, ``q = f(e_u)``;
* ``"history"``: the mean of the item-tower outputs of the user's last H items (weighted towards
  the newest by ``history_decay``) plus one shared learned vector (the user table's fallback row,
  which is all a user with no history gets: a learned "popular now" query), ``q = f(pool + e_0)``;
* ``"history+id"``: the pooled history plus the user's own row, ``q = f(pool + e_u)``; the own row
  starts as a copy of the shared row ``e_0``, so a new user's query is the history tower's until
  their row has trained (a random start would be noise in every new user's query).

``f`` is the user tower's head and norm. The histories live in :class:`UserHistory`, a buffer of
this module, so checkpoints, ``eval`` and ``export`` carry them; training passes each event's
causal history explicitly (:meth:`TwoTowerModel.query`), serving uses the stored one
(:meth:`TwoTowerModel.user_tower`).

Sparse updates: tables are ``nn.Embedding(sparse=True)`` and are stepped by
:class:`~streamtrain.model.sparse_optim.RowSparseOptimizer` (per-row Adagrad by default), MLP heads by a dense
``torch.optim`` optimizer; so a step costs O(rows touched), not O(capacity). Tables start at zero
(cheap even for 10M rows, and the pages stay untouched until used) and each row gets its random
initialisation when the vocabulary assigns it (:meth:`TwoTowerModel.reinit_rows`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from torch import nn

from streamtrain.model.history import UserHistory
from streamtrain.model.history_encoder import HistoryEncoder, HistoryInput, HistoryPooling

__all__ = ["USER_FEATURES", "Tower", "TwoTowerModel"]

TowerName = Literal["user", "item"]
UserFeatures = Literal["id", "history", "history+id"]
USER_FEATURES: tuple[str, ...] = ("id", "history", "history+id")


class Tower(nn.Module):
    """Embedding table (+ optional MLP head) → (n, D) outputs, L2-normalised if asked."""

    def __init__(self, capacity: int, dim: int, hidden_dims: Sequence[int] = (), normalize: bool = True) -> None:
        super().__init__()
        self.embedding = nn.Embedding(capacity, dim, sparse=True)
        nn.init.zeros_(self.embedding.weight)
        self.normalize = normalize
        layers: list[nn.Module] = []
        width = dim
        for hidden in hidden_dims:
            layers += [nn.Linear(width, hidden), nn.ReLU()]
            width = hidden
        if hidden_dims:
            layers.append(nn.Linear(width, dim))
        self.head = nn.Sequential(*layers) if layers else None

    def forward(self, rows: torch.Tensor) -> torch.Tensor:
        """(n,) int64 rows -> (n, D) embeddings; gradients flow to the touched rows only."""
        return self.finish(self.embedding(rows))  # (n, D)

    def finish(self, x: torch.Tensor) -> torch.Tensor:
        """(n, D) raw vectors -> (n, D) tower outputs: the MLP head, then the L2 norm if asked."""
        if self.head is not None:
            x = self.head(x)  # (n, D)
        if self.normalize:
            # fp32 norm: under bf16 autocast a low-precision norm visibly perturbs cosine scores.
            x = nn.functional.normalize(x.float(), dim=-1)  # (n, D)
        return x


class TwoTowerModel(nn.Module):
    """User tower + item tower; the loop (Trainer) and samplers only call the towers."""

    def __init__(
        self,
        *,
        user_capacity: int,
        item_capacity: int,
        dim: int,
        hidden_dims: Sequence[int] = (),
        normalize: bool = True,
        temperature: float = 0.05,
        init_std: float = 0.1,
        user_features: UserFeatures = "id",
        history_length: int = 20,
        history_decay: float = 1.0,
        history_input: HistoryInput = "item",
        history_pooling: HistoryPooling = "mean",
    ) -> None:
        super().__init__()
        if user_features not in USER_FEATURES:
            raise ValueError(f"user_features must be one of {USER_FEATURES}, got {user_features!r}")
        if not 0.0 < history_decay <= 1.0:
            raise ValueError(f"history_decay must be in (0, 1], got {history_decay}")
        self.dim = dim
        self.temperature = temperature
        self.init_std = init_std
        self.user_features = user_features
        self.history_decay = history_decay
        self.user = Tower(user_capacity, dim, hidden_dims, normalize)
        self.item = Tower(item_capacity, dim, hidden_dims, normalize)
        # An id-only model keeps a 1-column placeholder so every checkpoint has the same keys.
        self.history = UserHistory(user_capacity, history_length if self.uses_history else 1)
        self.encoder = HistoryEncoder(
            item_capacity if self.uses_history else 1, dim, self.history.length, history_decay,
            history_input=history_input if self.uses_history else "item",
            pooling=history_pooling if self.uses_history else "mean",
        )

    @classmethod
    def from_config(cls, config: object) -> TwoTowerModel:
        """Build from a :class:`streamtrain.config.ModelConfig`."""
        return cls(
            user_capacity=config.user_capacity,  # type: ignore[attr-defined]
            item_capacity=config.item_capacity,  # type: ignore[attr-defined]
            dim=config.embedding_dim,  # type: ignore[attr-defined]
            hidden_dims=tuple(config.hidden_dims),  # type: ignore[attr-defined]
            normalize=config.normalize,  # type: ignore[attr-defined]
            temperature=config.temperature,  # type: ignore[attr-defined]
            init_std=config.init_std,  # type: ignore[attr-defined]
            user_features=config.user_features,  # type: ignore[attr-defined]
            history_length=config.history_length,  # type: ignore[attr-defined]
            history_decay=config.history_decay,  # type: ignore[attr-defined]
            history_input=config.history_input,  # type: ignore[attr-defined]
            history_pooling=config.history_pooling,  # type: ignore[attr-defined]
        )

    @property
    def uses_history(self) -> bool:
        """True when queries are built from the user's recent items."""
        return self.user_features != "id"

    def tower(self, name: TowerName) -> Tower:
        """The ``"user"`` or ``"item"`` tower."""
        if name == "user":
            return self.user
        if name == "item":
            return self.item
        raise ValueError(f"unknown tower {name!r}")

    def user_tower(self, rows: torch.Tensor) -> torch.Tensor:
        """(B,) user rows -> (B, D) query embeddings from the *stored* histories (serving, eval)."""
        if not self.uses_history:
            return self.user(rows)
        return self.query(rows, self.history.current(rows))

    def query(self, user_rows: torch.Tensor, history: torch.Tensor | None) -> torch.Tensor:
        """(B,) user rows and (B, H) history item rows (``EMPTY`` = none) -> (B, D) queries.

        Training passes each event's causal history (:meth:`UserHistory.causal`); ``history`` is
        ignored by an id-only model."""
        if not self.uses_history or history is None:
            return self.user(user_rows)
        own = user_rows if self.user_features == "history+id" else torch.zeros_like(user_rows)
        x = self.user.embedding(own) + self._pool(history)  # (B, D)
        return self.user.finish(x)

    def _pool(self, history: torch.Tensor) -> torch.Tensor:
        """(B, H) item rows -> (B, D) pooled history (0 for no history): :class:`HistoryEncoder`."""
        return self.encoder(history, self.item)

    def item_tower(self, rows: torch.Tensor) -> torch.Tensor:
        """(n,) item rows -> (n, D) item embeddings (also handed to samplers as ``embed_items``)."""
        return self.item(rows)

    def score(self, user_rows: torch.Tensor, item_rows: torch.Tensor) -> torch.Tensor:
        """(B,) users × (N,) items -> (B, N) scores ``<q, v> / temperature``."""
        return self.user_tower(user_rows) @ self.item_tower(item_rows).T / self.temperature  # (B, N)

    def embedding_parameters(self) -> list[nn.Parameter]:
        """The two tables (sparse gradients; stepped by the row-sparse optimizer)."""
        return [self.user.embedding.weight, self.item.embedding.weight, *self.encoder.row_tables()]  # type: ignore[list-item]

    def row_tables(self, name: TowerName) -> list[nn.Parameter]:
        """Every table indexed by ``name``'s rows (optimizer state to reset when a row changes id)."""
        own = [self.tower(name).embedding.weight]
        return own + self.encoder.row_tables() if name == "item" else own  # type: ignore[return-value]

    def dense_parameters(self) -> list[nn.Parameter]:
        """MLP head parameters (dense gradients; a standard torch optimizer)."""
        # Every table is sparse, also an unused 1-row placeholder (which no optimizer steps).
        sparse = {id(m.weight) for m in self.modules() if isinstance(m, nn.Embedding)}
        return [p for p in self.parameters() if id(p) not in sparse]

    def init_values(self, n: int, generator: torch.Generator) -> torch.Tensor:
        """(n, D) float32 N(0, init_std²) initial rows, drawn on the CPU ``generator`` (so CPU and CUDA
        runs initialise alike); the host draws them and ships them with the batch."""
        return torch.randn(n, self.dim, generator=generator) * self.init_std

    @torch.no_grad()
    def reinit_rows(
        self, name: TowerName, rows: torch.Tensor, generator: torch.Generator | None = None,
        values: torch.Tensor | None = None,
    ) -> None:
        """Give ``rows`` (n,) of one table fresh values, ``values`` (n, D) or drawn from ``generator``
        (:meth:`init_values`); called when the vocabulary assigns them to a new id. Resetting the
        optimizer state of these rows is the optimizer's job (``reset_rows``)."""
        if rows.numel() == 0:
            return
        weight = self.tower(name).embedding.weight
        if values is None:
            assert generator is not None, "reinit_rows needs values or a generator"
            values = self.init_values(rows.numel(), generator)  # (n, D)
        rows = rows.to(weight.device)
        values = values.to(weight.device, weight.dtype)
        if name == "user" and self.user_features == "history+id":
            # A new user's own row starts as a copy of the shared row 0 (the query of a user with no row):
            # the query is exactly the history tower's until the row has trained; a random row would add
            # noise to every new user's query. Row 0 itself keeps its values. On the device: no sync.
            values = torch.where((rows == 0).unsqueeze(1), values, weight[0].detach().expand_as(values))
        weight.index_copy_(0, rows, values)
        if name == "item":
            self.encoder.reset_rows(rows)
