"""Static partition assignment: partition p of the topic goes to rank p mod W.

No consumer-group rebalancing inside a job (``consumer.assign()``, not ``subscribe()``): a change
of membership restarts the whole job from the last global checkpoint (``torchrun --max-restarts``),
so a partition never moves between ranks mid-run. Every rank holds every partition's trained
offset (the progress is replicated, see :mod:`streamtrain.distributed.exchange`), so a restart
with another W re-deals the partitions and resumes each from its committed offset.
"""

from __future__ import annotations

from collections.abc import Iterable

__all__ = ["partitions_for_rank", "partition_map"]


def partitions_for_rank(partitions: Iterable[int], rank: int, world_size: int) -> list[int]:
    """This rank's partitions, sorted (a rank may get none when W exceeds the partition count)."""
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is outside world size {world_size}")
    return sorted(p for p in partitions if p % world_size == rank)


def partition_map(partitions: Iterable[int], world_size: int) -> dict[int, list[int]]:
    """rank -> its partitions, for logs and the checkpoint's record of the layout."""
    parts = sorted(partitions)
    return {r: partitions_for_rank(parts, r, world_size) for r in range(world_size)}
