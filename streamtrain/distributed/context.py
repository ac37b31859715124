"""Rank, world size and the process group: torchrun's environment, or W = 1 without it.

``torchrun --nproc-per-node N -m streamtrain consume`` sets ``RANK``, ``WORLD_SIZE``,
``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT``; :func:`init_context` joins the group
(gloo on CPU, NCCL on CUDA). A plain ``streamtrain consume`` gets a :class:`DistContext` with
W = 1 whose collectives return their input, so the worker runs one code path for every W.

Objects (batches of id strings, resume points, engine state) travel as pickles through
``*_object`` collectives; they only ever come from the job's own ranks.
"""

from __future__ import annotations

import datetime
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

__all__ = ["DistContext", "init_context", "torchrun_world"]

log = logging.getLogger(__name__)


def torchrun_world(environ: Mapping[str, str] | None = None) -> tuple[int, int, int] | None:
    """(rank, world size, local rank) from torchrun's environment, or None when not launched by it."""
    env = os.environ if environ is None else environ
    if "WORLD_SIZE" not in env or "RANK" not in env:
        return None
    return int(env["RANK"]), int(env["WORLD_SIZE"]), int(env.get("LOCAL_RANK", env["RANK"]))


@dataclass
class DistContext:
    """This process's place in the job; ``group`` is None for W = 1 (no process group)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str | None = None
    launched: bool = False  # True under torchrun (static partition assignment), even for W = 1

    @property
    def is_main(self) -> bool:
        """Rank 0: takes the lease, resumes, writes the checkpoint."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    # ------------------------------------------------------------------ collectives (identity for W = 1)
    def all_reduce_max(self, values: list[int]) -> list[int]:
        """Element-wise max over ranks of a few small ints (the per-step flags)."""
        if not self.distributed:
            return list(values)
        t = torch.tensor(values, dtype=torch.int64, device=self._comm_device())
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return [int(v) for v in t.tolist()]

    def all_gather_object(self, obj: Any) -> list[Any]:
        """Every rank's ``obj``, in rank order."""
        if not self.distributed:
            return [obj]
        out: list[Any] = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out

    def broadcast_object(self, obj: Any, src: int = 0) -> Any:
        """Rank ``src``'s ``obj`` on every rank."""
        if not self.distributed:
            return obj
        box = [obj if self.rank == src else None]
        dist.broadcast_object_list(box, src=src)
        return box[0]

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()

    def _comm_device(self) -> torch.device:
        return torch.device("cuda", torch.cuda.current_device()) if self.backend == "nccl" else torch.device("cpu")

    def close(self) -> None:
        """Leave the process group (after the loop ended on every rank)."""
        if self.distributed and dist.is_initialized():
            dist.destroy_process_group()


def _attempt_store(environ: Mapping[str, str] | None, rank: int, size: int,
                   timeout: datetime.timedelta) -> dist.Store | None:
    """The rendezvous store of this restart attempt under torchrun, or None (``env://``).

    torchrun's static rendezvous (``--master-addr/--master-port``, the default) keeps one store for
    every restart of the job and the ranks' ``env://`` store has no per-attempt prefix, so after
    ``--max-restarts`` restarts a new rank can read the gloo address a killed rank published and
    fail with "connection refused" (seen in tests/integration/test_distributed_kill9.py). Keys
    under ``TORCHELASTIC_RESTART_COUNT`` keep each attempt to itself.
    """
    env = {**os.environ, **(environ or {})}
    attempt = env.get("TORCHELASTIC_RESTART_COUNT")
    if attempt is None or "MASTER_ADDR" not in env or "MASTER_PORT" not in env:
        return None
    agent_hosts = env.get("TORCHELASTIC_USE_AGENT_STORE") == "True"  # else rank 0 hosts it (env:// rule)
    base = dist.TCPStore(env["MASTER_ADDR"], int(env["MASTER_PORT"]), size,
                         is_master=rank == 0 and not agent_hosts, timeout=timeout)
    return dist.PrefixStore(f"streamtrain/attempt-{attempt}", base)


def init_context(backend: str = "auto", device: str = "auto", timeout_s: float = 300.0,
                 environ: Mapping[str, str] | None = None) -> DistContext:
    """Join torchrun's group, or a W = 1 context when not launched by torchrun.

    ``backend`` auto: NCCL when the run trains on CUDA, gloo otherwise.
    """
    world = torchrun_world(environ)
    if world is None:
        return DistContext()
    rank, size, local = world
    wants_cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
    chosen = backend if backend != "auto" else ("nccl" if wants_cuda else "gloo")
    if size > 1 and not dist.is_initialized():
        if chosen == "nccl":
            torch.cuda.set_device(local)
        timeout = datetime.timedelta(seconds=timeout_s)
        store = _attempt_store(environ, rank, size, timeout)
        dist.init_process_group(chosen, store=store, rank=rank, world_size=size, timeout=timeout)
        log.info("rank %d of %d joined the %s process group", rank, size, chosen)
    return DistContext(rank, size, local, chosen, launched=True)
