"""Many trainers, one model: ranks under torchrun, the exchange between them and the run's lease.

* :mod:`~streamtrain.distributed.lease` — one job per run (a Redis lease with a heartbeat).
* :mod:`~streamtrain.distributed.context` — rank, world size and the process group (W = 1 without torchrun).
* :mod:`~streamtrain.distributed.assignment` — partition p to rank p mod W.
* :mod:`~streamtrain.distributed.exchange` — the per-step flags and the global batch.
"""
