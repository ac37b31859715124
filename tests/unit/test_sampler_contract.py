"""The one conformance suite every registered sampler runs (a new sampler joins automatically).

A small synthetic world: 200 items with Zipf popularity, B = 32, D = 16, an ``nn.Embedding``
item table behind ``embed_items`` and a fixed log p̂. Each check is parametrised over SAMPLERS.
"""

from __future__ import annotations

import dataclasses
import io
import typing

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from streamtrain.config import CbnsParams, MnsParams, SamplerConfig, UniformParams
from streamtrain.sampling import SAMPLERS, Sampler, SamplerInput, build_sampler

N_ITEMS, BATCH, DIM, TAU = 200, 32, 16, 0.1
NAMES = sorted(SAMPLERS)


def make_sampler(name: str, seed: int = 0, batch_size: int = BATCH, device: str = "cpu") -> Sampler:
    config = SamplerConfig(
        name=name,
        uniform=UniformParams(num_negatives=64),
        mns=MnsParams(num_uniform=32),
        cbns=CbnsParams(bank_size=48, warmup_steps=1),
    )
    return build_sampler(config, batch_size=batch_size, seed=seed, device=torch.device(device))


class World:
    """Item and query tables plus a deterministic stream of Zipf batches."""

    def __init__(self, seed: int = 0, n_items: int = N_ITEMS, dim: int = DIM, device: str = "cpu") -> None:
        gen = torch.Generator().manual_seed(seed)
        self.device = torch.device(device)
        self.items = torch.nn.Embedding(n_items, dim)
        self.users = torch.nn.Embedding(4 * BATCH, dim)
        with torch.no_grad():
            self.items.weight.copy_(torch.randn(n_items, dim, generator=gen))
            self.users.weight.copy_(torch.randn(4 * BATCH, dim, generator=gen))
        pop = 1.0 / torch.arange(1, n_items + 1, dtype=torch.float64)
        self.pop = pop / pop.sum()
        self.log_q_table = torch.log1p(-((1 - self.pop) ** BATCH)).float().to(device)  # log P(item in a batch)
        self.n_items = n_items
        self.items.to(device)
        self.users.to(device)

    def embed(self, rows: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.items(rows), dim=1)

    def batch(self, step: int, batch: int = BATCH) -> SamplerInput:
        gen = torch.Generator().manual_seed(1000 + step)
        pos = torch.multinomial(self.pop, batch, replacement=True, generator=gen).to(self.device)  # (B,)
        users = torch.randint(self.users.num_embeddings, (batch,), generator=gen).to(self.device)
        return SamplerInput(
            queries=F.normalize(self.users(users), dim=1),
            pos_items=pos,
            pos_emb=self.embed(pos),
            embed_items=self.embed,
            log_q=lambda rows: self.log_q_table[rows],
            known_items=torch.arange(self.n_items, device=self.device),
            temperature=TAU,
            num_item_rows=self.n_items,
        )


def _run(sampler: Sampler, world: World, steps: range) -> list[torch.Tensor]:
    return [sampler.loss(world.batch(t)).loss.detach() for t in steps]


def _state_equal(a: dict, b: dict) -> bool:
    if a.keys() != b.keys():
        return False
    return all(np.array_equal(np.asarray(a[k]), np.asarray(b[k])) for k in a)


def _through_bytes(state: dict) -> dict:
    """What a Redis round trip does: every entry becomes a numpy array and back."""
    out = {}
    for key, value in state.items():
        buf = io.BytesIO()
        np.save(buf, np.asarray(value), allow_pickle=False)
        buf.seek(0)
        out[key] = np.load(buf, allow_pickle=False)
    return out


def test_registry_holds_every_configurable_sampler() -> None:
    names = typing.get_args(SamplerConfig.model_fields["name"].annotation)
    assert sorted(names) == NAMES


@pytest.mark.parametrize("name", NAMES)
def test_loss_is_finite_scalar_with_finite_gradients(name: str) -> None:
    world, sampler = World(), make_sampler(name)
    for step in range(3):  # step 3 exercises the XIR cache and the CBNS bank
        world.items.zero_grad()
        world.users.zero_grad()
        out = sampler.loss(world.batch(step))
        assert out.loss.dim() == 0 and torch.isfinite(out.loss)
        out.loss.backward()
        for grad in (world.items.weight.grad, world.users.weight.grad):
            assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0
        for key, value in out.stats.items():
            assert value.dim() == 0 and torch.isfinite(value), key


@pytest.mark.parametrize("name", NAMES)
def test_event_weights_scale_each_query_and_normalise(name: str) -> None:
    """Weights are per event: weight 0 gives its query no gradient, and uniform weights of any size
    give the same loss as no weights (the loss is a weight-normalised mean)."""
    world = World()
    base = make_sampler(name).loss(world.batch(0)).loss.detach()
    doubled = world.batch(0)
    doubled.weights = torch.full((BATCH,), 2.0)
    assert torch.allclose(make_sampler(name).loss(doubled).loss.detach(), base, rtol=1e-5)

    inp = world.batch(0)
    queries = inp.queries.detach().requires_grad_(True)
    inp.queries = queries
    inp.weights = torch.ones(BATCH)
    inp.weights[0] = 0.0
    make_sampler(name).loss(inp).loss.backward()
    assert queries.grad is not None
    assert queries.grad[0].abs().max() == 0
    assert queries.grad[1:].abs().sum(dim=1).min() > 0


@pytest.mark.parametrize("name", NAMES)
def test_gradient_reaches_the_negatives(name: str) -> None:
    """With orthonormal queries, row i's gradient projected on query b is exactly dL/ds(b, i)/τ.
    For i ≠ positive(b) that can only come from i being a negative of b: it must be > 0 somewhere
    (negatives get gradient) and never < 0 (a negative only ever pushes its score down)."""
    batch, dim = 16, 32
    world = World(seed=3, dim=dim)
    sampler = make_sampler(name, batch_size=batch)
    queries = torch.eye(dim)[:batch]  # (B, D) orthonormal
    embedded: list[torch.Tensor] = []

    def embed(rows: torch.Tensor) -> torch.Tensor:
        embedded.append(rows)
        return world.items(rows)

    for step in range(3):
        inp = world.batch(step, batch)
        world.items.zero_grad()
        embedded.clear()
        raw = SamplerInput(
            queries=queries,
            pos_items=inp.pos_items,
            pos_emb=world.items(inp.pos_items),
            embed_items=embed,
            log_q=inp.log_q,
            known_items=inp.known_items,
            temperature=TAU,
        )
        sampler.loss(raw).loss.backward()
    proj = world.items.weight.grad @ queries.T  # (N, B)
    is_pos = torch.zeros_like(proj, dtype=torch.bool)
    is_pos[raw.pos_items, torch.arange(batch)] = True
    assert proj[~is_pos].max() > 1e-6
    assert proj[~is_pos].min() > -1e-7
    assert (proj[is_pos] < 0).all()  # the positive term pulls every positive's score up
    # rows reached only through embed_items (uniform draws, cache, all items) get gradient too
    outside = torch.unique(torch.cat(embedded)) if embedded else torch.zeros(0, dtype=torch.long)
    outside = outside[~torch.isin(outside, raw.pos_items)]
    if outside.numel():
        assert proj[outside].max() > 1e-6


@pytest.mark.parametrize("name", NAMES)
def test_same_seed_gives_identical_draws(name: str) -> None:
    world = World()
    first, second = make_sampler(name, seed=7), make_sampler(name, seed=7)
    losses_a, losses_b = _run(first, world, range(4)), _run(second, world, range(4))
    assert all(torch.equal(a, b) for a, b in zip(losses_a, losses_b))
    assert _state_equal(first.state_dict(), second.state_dict())
    if "rng" in first.state_dict():  # the seed must actually drive the draws
        other = _run(make_sampler(name, seed=8), world, range(4))
        assert any(not torch.equal(a, b) for a, b in zip(losses_a, other))


@pytest.mark.parametrize("name", NAMES)
def test_state_round_trip_reproduces_the_next_step(name: str) -> None:
    world = World()
    original = make_sampler(name, seed=1)
    _run(original, world, range(3))
    restored = make_sampler(name, seed=12345)
    restored.load_state_dict(_through_bytes(original.state_dict()))
    assert _state_equal(original.state_dict(), restored.state_dict())
    for step in (3, 4):
        assert torch.equal(original.loss(world.batch(step)).loss, restored.loss(world.batch(step)).loss)
    assert _state_equal(original.state_dict(), restored.state_dict())


@pytest.mark.parametrize("name", NAMES)
def test_update_state_false_changes_nothing(name: str) -> None:
    world = World()
    probed, twin = make_sampler(name, seed=2), make_sampler(name, seed=2)
    _run(probed, world, range(2))
    _run(twin, world, range(2))
    before = probed.state_dict()
    peek = [probed.loss(world.batch(2), update_state=False).loss.detach() for _ in range(2)]
    probed.proposal_log_probs(world.batch(2))
    assert _state_equal(before, probed.state_dict())
    assert torch.equal(peek[0], peek[1])
    nxt = probed.loss(world.batch(2)).loss.detach()
    assert torch.equal(nxt, twin.loss(world.batch(2)).loss.detach())
    assert torch.equal(peek[0], nxt)  # a peek draws exactly what the next step draws
    assert _state_equal(probed.state_dict(), twin.state_dict())


@pytest.mark.parametrize("name", NAMES)
def test_positive_is_never_its_own_negative(name: str) -> None:
    """One-hot geometry: each query scores its positive 1/τ = 20 and everything else 0, so the
    masked loss is ≈ K·e⁻²⁰ ≈ 0 while one unmasked copy of the positive costs ≥ log 2.
    Every positive appears twice in the batch, so masking only the diagonal is not enough."""
    n_items, batch, tau = 20, 16, 0.05
    pos = torch.arange(batch // 2).repeat_interleave(2)  # (B,) 0,0,1,1,...
    table = torch.eye(32)[:n_items]  # (N, D) orthonormal item embeddings
    sampler = make_sampler(name, batch_size=batch)
    for _ in range(3):  # fills the XIR cache / CBNS bank with these very positives
        inp = SamplerInput(
            queries=table[pos],
            pos_items=pos,
            pos_emb=table[pos],
            embed_items=lambda rows: table[rows],
            log_q=lambda rows: torch.full(rows.shape, -2.0),
            known_items=torch.arange(n_items),
            temperature=tau,
        )
        assert sampler.loss(inp).loss < 1e-4


@pytest.mark.parametrize("name", NAMES)
def test_proposal_rows_are_distributions(name: str) -> None:
    world = World()
    sampler = make_sampler(name)
    _run(sampler, world, range(2))
    log_p = sampler.proposal_log_probs(world.batch(2))
    assert log_p.shape == (BATCH, N_ITEMS)
    assert not torch.isnan(log_p).any() and not (log_p == float("inf")).any()
    torch.testing.assert_close(torch.logsumexp(log_p, dim=1), torch.zeros(BATCH), atol=1e-4, rtol=0)


def test_full_equals_cross_entropy_over_all_items() -> None:
    world = World()
    inp = world.batch(0)
    logits = inp.queries @ world.embed(inp.known_items).T / TAU  # (B, N)
    expected = F.cross_entropy(logits, inp.pos_items)
    torch.testing.assert_close(make_sampler("full").loss(inp).loss, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("name", NAMES)
def test_cuda_step_without_host_syncs(name: str) -> None:
    """On CUDA every tensor stays on the device and a training step never waits for the host
    (given ``num_item_rows``); the state round trip works from device tensors too."""
    world = World(device="cuda")
    sampler = make_sampler(name, device="cuda")
    _run(sampler, world, range(2))
    inp = world.batch(2)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        out = sampler.loss(inp)
        out.loss.backward()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert out.loss.is_cuda and all(v.is_cuda for v in out.stats.values())
    assert torch.isfinite(out.loss)
    restored = make_sampler(name, seed=5, device="cuda")
    restored.load_state_dict(_through_bytes(sampler.state_dict()))
    assert torch.equal(sampler.loss(world.batch(3)).loss, restored.loss(world.batch(3)).loss)


@pytest.mark.parametrize("name", NAMES)
def test_forget_rows_leaves_no_trace_of_the_rows(name: str) -> None:
    """The vocabulary hands row r to a new id. After ``forget_rows(r)`` no state array of item rows
    (named ``*rows``) holds r, and the next step — r neither in the batch nor known yet — never
    embeds r nor reads its log p̂ (both return NaN for r here, so a stale use also shows in the loss)."""
    world, r = World(), 3
    sampler = make_sampler(name, seed=4)
    for step in range(3):  # r is half of every batch: caches and banks fill with it
        inp = world.batch(step)
        inp.pos_items[::2] = r
        inp.pos_emb = world.embed(inp.pos_items)
        sampler.loss(inp)
    row_arrays = {k: np.asarray(v) for k, v in sampler.state_dict().items() if k.endswith("rows")}
    assert all(r in v for v in row_arrays.values())  # the state did keep r: the check below means something
    sampler.forget_rows(torch.tensor([r]))
    sampler.forget_rows(torch.zeros(0, dtype=torch.long))  # nothing reassigned: a no-op
    for key, value in sampler.state_dict().items():
        if key.endswith("rows"):
            assert r not in np.asarray(value), key

    requested: list[torch.Tensor] = []

    def embed(rows: torch.Tensor) -> torch.Tensor:
        requested.append(rows)
        return world.embed(rows).masked_fill((rows == r).unsqueeze(1), float("nan"))

    def log_q(rows: torch.Tensor) -> torch.Tensor:
        requested.append(rows)
        return world.log_q_table[rows].masked_fill(rows == r, float("nan"))

    nxt = world.batch(3)
    nxt.pos_items = torch.where(nxt.pos_items == r, r + 1, nxt.pos_items)
    nxt.pos_emb, nxt.embed_items, nxt.log_q = world.embed(nxt.pos_items), embed, log_q
    nxt.known_items = nxt.known_items[nxt.known_items != r]
    out = sampler.loss(nxt)
    assert torch.isfinite(out.loss)
    assert not any((rows == r).any() for rows in requested)


def _split_inputs(inp: SamplerInput, cut: int, draw_gen: torch.Generator | None = None) -> list[SamplerInput]:
    """The split training step's view of ``inp``: two ranks' queries ([0, cut) and [cut, B)) against
    all B positives, each query's positive at its global column (off the diagonal for rank 1)."""
    out = []
    for lo, hi in ((0, cut), (cut, inp.queries.shape[0])):
        cols = torch.arange(lo, hi, device=inp.pos_items.device)
        out.append(dataclasses.replace(
            inp, queries=inp.queries[lo:hi], positive_cols=cols, draw_generator=draw_gen,
            weights=None if inp.weights is None else inp.weights[lo:hi],
        ))
    return out


@pytest.mark.parametrize("name", NAMES)
def test_off_diagonal_positives_split_the_batch_loss(name: str) -> None:
    """Queries whose positives sit at known columns of a larger candidate set (the split step): each
    part's loss is finite with finite gradients, the own positive is never a negative, the proposal
    rows are distributions, and the parts' share-weighted losses add up to the whole batch's loss
    (exactly the same draws where the sampler shares its draws across the batch; for the
    resampling samplers the per-query draws come from ``draw_generator`` so they only agree in law)."""
    world, sampler = World(), make_sampler(name)
    for step in range(2):  # fill the XIR cache / CBNS bank
        sampler.loss(world.batch(step))
    full = world.batch(2)
    whole = sampler.loss(full, update_state=False).loss
    cut = 12
    parts = _split_inputs(full, cut, torch.Generator().manual_seed(7))
    total = torch.zeros(())
    for part in parts:
        out = sampler.loss(part, update_state=False)
        assert out.loss.dim() == 0 and torch.isfinite(out.loss)
        total = total + out.loss * part.queries.shape[0] / BATCH
        probs = sampler.proposal_log_probs(part).exp()
        assert probs.shape == (part.queries.shape[0], N_ITEMS)
        torch.testing.assert_close(probs.sum(1), torch.ones(probs.shape[0]), rtol=1e-4, atol=1e-4)
    world.items.zero_grad()
    total.backward()
    assert world.items.weight.grad is not None and torch.isfinite(world.items.weight.grad).all()
    if name not in ("bir", "xir"):
        torch.testing.assert_close(total.detach(), whole.detach(), rtol=1e-5, atol=1e-6)
    else:  # same model, other draws: close, not equal
        assert abs(float(total.detach()) - float(whole.detach())) < 0.5 * abs(float(whole)) + 0.5
    # A query whose positive is duplicated elsewhere in the global batch: that copy is masked, its own
    # column is the positive (an own-negative would make the loss of a perfect query positive forever).
    dup = dataclasses.replace(full, pos_items=full.pos_items.clone())
    dup.pos_items[cut:] = dup.pos_items[cut]
    dup.pos_emb = world.embed(dup.pos_items)
    for part in _split_inputs(dup, cut, torch.Generator().manual_seed(7)):
        assert torch.isfinite(sampler.loss(part, update_state=False).loss)
    # An idle rank holds no queries but still takes part in the step (state updates, collectives).
    idle = dataclasses.replace(full, queries=full.queries[:0], positive_cols=torch.zeros(0, dtype=torch.long),
                               draw_generator=torch.Generator().manual_seed(7))
    assert sampler.loss(idle, update_state=False).loss.dim() == 0
