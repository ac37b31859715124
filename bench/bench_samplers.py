"""Step time of each sampler's loss (forward + backward only) on synthetic data.

    python bench/bench_samplers.py                       # B in {1024, 4096}, N = 100k, D = 64, CPU
    python bench/bench_samplers.py --batch-sizes 1024 --repeats 5 --device cuda

Prints one row per (B, sampler): min and median milliseconds over ``--repeats`` timed steps after
``--warmup`` untimed ones (samplers run round robin, so load spikes on a shared machine hit all
of them alike), and the ratios to ``inbatch`` at the same B. ``full`` is skipped unless
named (B × N logits). Sampler defaults are the config defaults (uniform 1024 negatives, MNS
1024 uniform items, CBNS bank 4096 after 100 warm-up steps — so CBNS times its warm-up path unless
``--cbns-warmup 0``; BIR R = B; XIR C = B, K = C/2, R = B/2), plus rows with fewer XIR draws and
rows with the opt-in systematic resampler for BIR and XIR.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from streamtrain.config import CbnsParams, SamplerConfig, XirParams
from streamtrain.sampling import SAMPLERS, SamplerInput, build_sampler


def make_input(batch: int, n_items: int, dim: int, device: torch.device, seed: int) -> tuple[SamplerInput, list]:
    gen = torch.Generator().manual_seed(seed)
    table = torch.nn.Embedding(n_items, dim, sparse=True).to(device)
    pop = 1.0 / torch.arange(1, n_items + 1, dtype=torch.float64)
    pop = pop / pop.sum()
    log_q = torch.log1p(-((1 - pop) ** batch)).float().to(device)
    pos = torch.multinomial(pop, batch, replacement=True, generator=gen).to(device)
    queries = torch.randn(batch, dim, generator=gen).to(device).requires_grad_(True)

    def embed(rows: torch.Tensor) -> torch.Tensor:
        return F.normalize(table(rows), dim=1)

    inp = SamplerInput(
        queries=F.normalize(queries, dim=1),
        pos_items=pos,
        pos_emb=embed(pos),
        embed_items=embed,
        log_q=lambda rows: log_q[rows],
        known_items=torch.arange(n_items, device=device),
        temperature=0.05,
        num_item_rows=n_items,
    )
    return inp, [queries, table.weight]


def build(
    name: str, args: argparse.Namespace, batch: int, device: torch.device, draws: int | None, resampling: str
):
    xir = XirParams(cache_draws=draws, batch_draws=draws)
    config = SamplerConfig(name=name, cbns=CbnsParams(warmup_steps=args.cbns_warmup), xir=xir)
    sampler = build_sampler(config, batch_size=batch, seed=0, device=device)
    if resampling != "multinomial":
        sampler.resampling = resampling  # type: ignore[attr-defined]  # opt-in, not in the config yet
    return sampler


def one_step(sampler, args: argparse.Namespace, batch: int, device: torch.device, seed: int) -> float:
    """Seconds for one forward + backward of ``sampler``'s loss (input building not timed)."""
    inp, _ = make_input(batch, args.items, args.dim, device, seed=seed)
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    sampler.loss(inp).loss.backward()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1024, 4096])
    parser.add_argument("--items", type=int, default=100_000)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--cbns-warmup", type=int, default=100)
    parser.add_argument("--samplers", nargs="+", default=[n for n in sorted(SAMPLERS) if n != "full"])
    parser.add_argument("--xir-draw-divisors", type=int, nargs="*", default=[8],
                        help="extra XIR rows with K = R = B/d draws per query (default rows use C/2, B/2)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=0, help="torch.set_num_threads; 0 = leave")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    names = ["inbatch"] + [n for n in args.samplers if n != "inbatch"]
    print(f"device={device} threads={torch.get_num_threads()} N={args.items} D={args.dim} repeats={args.repeats}")
    print(f"{'B':>6} {'sampler':>18} {'min ms':>9} {'med ms':>9} {'x min':>8} {'x med':>8}  (x: vs inbatch)")
    for batch in args.batch_sizes:
        runs = [(name, name, None, "multinomial") for name in names]
        if "xir" in names:
            runs += [(f"xir K=R=B/{d}", "xir", max(1, batch // d), "multinomial") for d in args.xir_draw_divisors]
        runs += [(f"{name} systematic", name, None, "systematic") for name in ("bir", "xir") if name in names]
        samplers = {label: build(name, args, batch, device, draws, how) for label, name, draws, how in runs}
        times: dict[str, list[float]] = {label: [] for label in samplers}
        for i in range(args.warmup + args.repeats):  # round robin: load spikes hit every sampler alike
            for label, sampler in samplers.items():
                elapsed = one_step(sampler, args, batch, device, seed=i)
                if i >= args.warmup:
                    times[label].append(elapsed * 1000)
        base_min, base_med = min(times["inbatch"]), statistics.median(times["inbatch"])
        for label, ts in times.items():
            lo, med = min(ts), statistics.median(ts)
            ratios = f"{lo / base_min:>8.2f} {med / base_med:>8.2f}"
            print(f"{batch:>6} {label:>18} {lo:>9.1f} {med:>9.1f} {ratios}", flush=True)

if __name__ == "__main__":
    main()
