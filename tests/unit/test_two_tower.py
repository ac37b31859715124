"""TwoTowerModel and the row-sparse optimizer: shapes, normalisation, sparse updates, row reset."""

from __future__ import annotations

import pytest
import torch

from streamtrain.model.sparse_optim import ALGORITHMS, RowSparseOptimizer
from streamtrain.model.two_tower import TwoTowerModel


def make_model(**kw: object) -> TwoTowerModel:
    args: dict[str, object] = {"user_capacity": 20, "item_capacity": 30, "dim": 8, "temperature": 0.1, "init_std": 0.1}
    args.update(kw)
    model = TwoTowerModel(**args)  # type: ignore[arg-type]
    gen = torch.Generator().manual_seed(0)
    model.reinit_rows("user", torch.arange(20), gen)
    model.reinit_rows("item", torch.arange(30), gen)
    return model


@pytest.mark.parametrize("hidden", [(), (16, 12)])
def test_towers_give_unit_norm_outputs_of_dim_d(hidden: tuple[int, ...]) -> None:
    model = make_model(hidden_dims=hidden)
    q = model.user_tower(torch.tensor([1, 2, 3]))
    v = model.item_tower(torch.tensor([0, 29]))
    assert q.shape == (3, 8) and v.shape == (2, 8)
    torch.testing.assert_close(q.norm(dim=1), torch.ones(3))
    scores = model.score(torch.tensor([1, 2, 3]), torch.tensor([0, 29]))
    torch.testing.assert_close(scores, q @ v.T / 0.1)
    assert bool(model.dense_parameters()) == bool(hidden)


def test_unnormalised_towers_return_raw_embeddings() -> None:
    model = make_model(normalize=False)
    rows = torch.tensor([4, 5])
    torch.testing.assert_close(model.item_tower(rows), model.item.embedding.weight[rows])


def test_reinit_rows_is_seeded_and_touches_only_those_rows() -> None:
    a, b = make_model(), make_model()
    before = a.item.embedding.weight.detach().clone()
    a.reinit_rows("item", torch.tensor([3, 7]), torch.Generator().manual_seed(5))
    b.reinit_rows("item", torch.tensor([3, 7]), torch.Generator().manual_seed(5))
    after = a.item.embedding.weight.detach()
    torch.testing.assert_close(after, b.item.embedding.weight.detach())
    changed = (after != before).any(1).nonzero().squeeze(1).tolist()
    assert changed == [3, 7]


def _sparse_step(model: TwoTowerModel, opt: RowSparseOptimizer, users: torch.Tensor, items: torch.Tensor) -> None:
    opt.zero_grad()
    loss = -(model.user_tower(users) * model.item_tower(items)).sum()
    loss.backward()
    opt.step()


def test_embedding_gradients_are_sparse_and_only_touched_rows_change() -> None:
    model = make_model()
    opt = RowSparseOptimizer(model.embedding_parameters(), algorithm="adam", lr=0.05)
    before = model.item.embedding.weight.detach().clone()
    model.user_tower(torch.tensor([1])).sum().backward()
    assert model.user.embedding.weight.grad.is_sparse
    _sparse_step(model, opt, torch.tensor([1, 2, 2]), torch.tensor([4, 9, 4]))
    changed = (model.item.embedding.weight.detach() != before).any(1).nonzero().squeeze(1).tolist()
    assert changed == [4, 9]
    state = opt.state[1]
    assert state["step"].nonzero().squeeze(1).tolist() == [4, 9]
    assert state["exp_avg"].abs().sum(1).nonzero().squeeze(1).tolist() == [4, 9]


@pytest.mark.parametrize("algorithm", ["adam", "adagrad", "sgd"])  # rowwise_adagrad has no torch twin: below
def test_row_optimizer_matches_torch_optimizer_when_every_row_is_touched(algorithm: str) -> None:
    torch.manual_seed(0)
    init = torch.randn(6, 4)
    target = torch.randn(6, 4)
    sparse = torch.nn.Embedding(6, 4, sparse=True)
    dense = torch.nn.Embedding(6, 4)
    with torch.no_grad():
        sparse.weight.copy_(init)
        dense.weight.copy_(init)
    ours = RowSparseOptimizer([sparse.weight], algorithm=algorithm, lr=0.03)  # type: ignore[arg-type]
    ref_cls = {"adam": torch.optim.Adam, "adagrad": torch.optim.Adagrad, "sgd": torch.optim.SGD}[algorithm]
    extra = {"eps": 1e-10} if algorithm == "adagrad" else {}
    ref = ref_cls(dense.parameters(), lr=0.03, **extra)
    rows = torch.tensor([0, 1, 2, 3, 4, 5, 5, 2, 0, 5])  # every row, some several times
    for _ in range(5):
        ours.zero_grad()
        ((sparse(rows) - target[rows]) ** 2).sum().backward()
        ours.step()
        ref.zero_grad()
        ((dense(rows) - target[rows]) ** 2).sum().backward()
        ref.step()
    torch.testing.assert_close(
        sparse.weight.detach(), dense.weight.detach(), rtol=1e-4, atol=1e-5
    )  # float rounding only; steps are 3e-2


# The first step of a fresh row with gradient g = (5, -0.5, 1) at lr 0.1: Adam and Adagrad move each
# coordinate by lr against g's sign, row-wise Adagrad by lr * g / sqrt(mean(g^2)).
_FIRST_STEP = {
    "adam": [-0.1, 0.1, -0.1],
    "adagrad": [-0.1, 0.1, -0.1],
    "rowwise_adagrad": [-0.5 / 26.25**0.5 * 3**0.5, 0.05 / 26.25**0.5 * 3**0.5, -0.1 / 26.25**0.5 * 3**0.5],
}


@pytest.mark.parametrize("algorithm", sorted(_FIRST_STEP))
def test_reset_rows_makes_a_reused_row_step_like_a_fresh_one(algorithm: str) -> None:
    emb = torch.nn.Embedding(4, 3, sparse=True)
    with torch.no_grad():
        emb.weight.zero_()
    opt = RowSparseOptimizer([emb.weight], algorithm=algorithm, lr=0.1)  # type: ignore[arg-type]
    for _ in range(20):  # row 2 accumulates optimizer state
        opt.zero_grad()
        (emb(torch.tensor([2])) * torch.tensor([[1.0, -1.0, 2.0]])).sum().backward()
        opt.step()
    opt.reset_rows(emb.weight, torch.tensor([2]))  # type: ignore[arg-type]
    with torch.no_grad():
        emb.weight[2] = 0.0
    opt.zero_grad()
    (emb(torch.tensor([2])) * torch.tensor([[5.0, -0.5, 1.0]])).sum().backward()
    opt.step()
    torch.testing.assert_close(emb.weight[2].detach(), torch.tensor(_FIRST_STEP[algorithm]), rtol=1e-4, atol=1e-6)


def test_rowwise_adagrad_keeps_one_accumulator_per_row_and_matches_its_formula() -> None:
    """w -= lr * g / sqrt(sum over steps of mean(g^2)), with g a row's summed gradient; rows that got
    no gradient and their accumulators stay untouched; the state is one float per row."""
    torch.manual_seed(3)
    emb = torch.nn.Embedding(6, 4, sparse=True)
    start = emb.weight.detach().clone()
    opt = RowSparseOptimizer([emb.weight], algorithm="rowwise_adagrad", lr=0.2)  # type: ignore[arg-type]
    assert opt.state[0]["row_sum_sq"].shape == (6,)
    rows = torch.tensor([1, 4, 4, 1, 1])  # duplicates: a row's gradient is their sum
    coef = torch.randn(5, 4)
    expected, acc = start.clone(), torch.zeros(6)
    for _ in range(4):
        opt.zero_grad()
        (emb(rows) * coef).sum().backward()
        opt.step()
        g = torch.zeros(6, 4).index_add_(0, rows, coef)  # d/dw of sum(w[rows] * coef)
        acc += g.square().mean(1)
        touched = acc > 0
        expected[touched] -= 0.2 * g[touched] / (acc[touched].sqrt().unsqueeze(1) + 1e-10)
    torch.testing.assert_close(emb.weight.detach(), expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(opt.state[0]["row_sum_sq"], acc)
    assert torch.equal(emb.weight.detach()[[0, 2, 3, 5]], start[[0, 2, 3, 5]])
    opt.reset_rows(emb.weight, torch.tensor([4]))  # type: ignore[arg-type]
    assert float(opt.state[0]["row_sum_sq"][4]) == 0.0


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_optimizer_state_round_trip(algorithm: str) -> None:
    model = make_model()
    opt = RowSparseOptimizer(model.embedding_parameters(), algorithm=algorithm, lr=0.05)
    _sparse_step(model, opt, torch.tensor([1, 2]), torch.tensor([3, 4]))
    twin = make_model()
    twin.load_state_dict(model.state_dict())
    twin_opt = RowSparseOptimizer(twin.embedding_parameters(), algorithm=algorithm, lr=0.05)
    twin_opt.load_state_dict(opt.state_dict())
    _sparse_step(model, opt, torch.tensor([2, 5]), torch.tensor([4, 6]))
    _sparse_step(twin, twin_opt, torch.tensor([2, 5]), torch.tensor([4, 6]))
    torch.testing.assert_close(model.state_dict(), twin.state_dict(), rtol=0, atol=0)
    with pytest.raises(ValueError):
        other = "sgd" if algorithm != "sgd" else "adam"
        RowSparseOptimizer(twin.embedding_parameters(), algorithm=other).load_state_dict(opt.state_dict())
