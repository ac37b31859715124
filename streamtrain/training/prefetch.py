"""Host→device transfer of a step's batch arrays: reused pinned buffers, one copy on a side stream.

Every array a training step needs on the device (user and item rows, rows the vocabularies just
assigned and their initial values, item keys, event weights, the history tower's batch order) is
computed on the host. :class:`BatchPrefetcher.upload` packs them into one pinned staging buffer
and issues a single asynchronous copy on a side stream; the compute stream only *waits on an
event* for it (a device-side wait, the host never blocks). Because the trainer never reads the
device back inside a step (see :mod:`streamtrain.training.readback`), the host returns from step t
while the device still runs it, and the next batch is looked up, packed and copied while step t
runs: the copy of batch t+1 overlaps the compute of step t.

Why pinned and packed: a copy from pageable memory makes the driver stage it and may synchronise
with the stream, and a blocking ``.to(device)`` is a host sync (``set_sync_debug_mode`` flags it);
one copy of a packed buffer costs one launch instead of ~10. The staging buffers are a small ring,
reused in turn: a slot is rewritten only after the event of its previous copy has completed (it
has, in practice: copies take microseconds and the ring is :data:`SLOTS` deep).

On CPU it is a no-op: ``upload`` returns ``torch.from_numpy`` views of the arrays (no copy).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

__all__ = ["BatchPrefetcher", "SLOTS"]

SLOTS = 3  # staging buffers in the ring (one being filled, the others' copies in flight)
_ALIGN = 8  # every array starts at a multiple of 8 bytes, so any dtype view of it is aligned


def _aligned(n: int) -> int:
    return (n + _ALIGN - 1) // _ALIGN * _ALIGN


class _Slot:
    """One pinned staging buffer and the event of the last copy out of it."""

    def __init__(self) -> None:
        self.buffer: torch.Tensor | None = None  # (capacity,) uint8, pinned
        self.event: torch.cuda.Event | None = None

    def reserve(self, nbytes: int) -> torch.Tensor:
        """The pinned buffer, at least ``nbytes`` long, once its previous copy has left it."""
        if self.event is not None:
            self.event.synchronize()  # normally long done; a real wait only if the ring wrapped early
        if self.buffer is None or self.buffer.numel() < nbytes:
            size = 1 << max(12, (nbytes - 1).bit_length())  # powers of two: a few growths, then none
            self.buffer = torch.empty(size, dtype=torch.uint8, pin_memory=True)
        return self.buffer


class BatchPrefetcher:
    """Uploads a step's host arrays to ``device``; see the module docstring."""

    def __init__(self, device: torch.device | str, *, slots: int = SLOTS) -> None:
        self.device = torch.device(device)
        self.enabled = self.device.type == "cuda"
        self._slots = [_Slot() for _ in range(slots)]
        self._next = 0
        self._stream = torch.cuda.Stream(self.device) if self.enabled else None
        self.bytes_uploaded = 0  # total, for benchmarks

    def upload(self, arrays: Sequence[np.ndarray]) -> list[torch.Tensor]:
        """The arrays as tensors on the device, same dtypes and shapes, ready for the current stream.

        Returns at once on CUDA (the copy runs on the side stream; the current stream waits for it on
        the device). Each array is copied as it is now: the caller may reuse it afterwards.
        """
        arrays = [np.ascontiguousarray(a) for a in arrays]
        if not self.enabled:
            return [torch.from_numpy(a) for a in arrays]
        offsets, total = [], 0
        for a in arrays:
            offsets.append(total)
            total += _aligned(a.nbytes)
        slot = self._slots[self._next]
        self._next = (self._next + 1) % len(self._slots)
        staging = slot.reserve(max(total, _ALIGN))
        host = staging.numpy()
        for a, off in zip(arrays, offsets):
            host[off : off + a.nbytes] = a.reshape(-1).view(np.uint8)
        assert self._stream is not None
        main = torch.cuda.current_stream(self.device)
        with torch.cuda.stream(self._stream):
            # Allocated on the side stream; record_stream below keeps the allocator from reusing it
            # before the compute stream is done with it.
            packed = torch.empty(max(total, _ALIGN), dtype=torch.uint8, device=self.device)
            packed.copy_(staging[: packed.numel()], non_blocking=True)
            slot.event = torch.cuda.Event()
            slot.event.record(self._stream)
        main.wait_event(slot.event)
        packed.record_stream(main)
        self.bytes_uploaded += total
        out = []
        for a, off in zip(arrays, offsets):
            dtype = torch.from_numpy(a[:0]).dtype
            view = packed[off : off + a.nbytes].view(dtype)
            out.append(view.view(a.shape))
        return out

    def one(self, array: np.ndarray) -> torch.Tensor:
        """:meth:`upload` of a single array."""
        return self.upload([array])[0]
