"""Trainer side of the ingest processes: start them, split partitions among them, collect their batches.

Partitions are dealt to the processes in (topic, partition) order, round robin, so each process reads
a disjoint set. A collector thread waits on every process's pipe: ``batch`` messages become
:class:`MicroBatch` objects whose columns are views into that process's shared-memory slots, with a
``release`` that hands the slot back; statuses update :attr:`pending` and :attr:`last_message_at`;
counters are added to the trainer's metrics. A process that dies or reports a fatal error sets
:attr:`fatal` (the worker stops, checkpoints what it trained, and exits non-zero).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from multiprocessing import get_context
from multiprocessing.connection import Connection, wait
from multiprocessing.shared_memory import SharedMemory
from typing import Any

from streamtrain.ingest import child as child_main
from streamtrain.ingest.counters import CounterSink
from streamtrain.ingest.slots import SlotLayout, unpack
from streamtrain.metrics import Metrics
from streamtrain.events.records import MicroBatch, PartitionKey
from streamtrain.errors import WorkerError

__all__ = ["IngestPool", "deal"]

log = logging.getLogger(__name__)


def deal(positions: Mapping[PartitionKey, int], processes: int) -> list[dict[PartitionKey, int]]:
    """Partitions → processes, round robin in sorted order (disjoint; some may get none)."""
    shares: list[dict[PartitionKey, int]] = [{} for _ in range(processes)]
    for i, key in enumerate(sorted(positions)):
        shares[i % processes][key] = positions[key]
    return shares


class _Child:
    def __init__(self, index: int, process: Any, conn: Connection, shm: SharedMemory, layout: SlotLayout,
                 count: int) -> None:
        self.index, self.process, self.conn, self.shm = index, process, conn, shm
        self.slots = [layout.view(shm.buf, i) for i in range(count)]
        self.lock = threading.Lock()  # Connection.send is not thread-safe
        self.pending = False
        self.last_message_at: float | None = None
        self.poll_ok = True
        self.error = ""
        self.acked = -1  # last generation whose first fetch this process finished

    def send(self, msg: tuple[Any, ...]) -> None:
        with self.lock:
            try:
                self.conn.send(msg)
            except OSError:
                pass  # the process is gone; the collector reports it


class IngestPool:
    """``processes`` ingest processes for one topic; see the module docstring."""

    def __init__(self, processes: int, *, topic: str, settings: dict[str, Any], layout: SlotLayout,
                 slots_per_process: int, metrics: Metrics,
                 on_batch: Callable[[MicroBatch], None], on_reset: Callable[..., None],
                 on_health: Callable[[bool, str], None]) -> None:
        if processes < 1:
            raise ValueError(f"processes must be >= 1, got {processes}")
        self.processes = processes
        self.topic = topic
        self._settings = settings
        self._layout = layout
        self._count = slots_per_process
        self._counters = CounterSink(metrics)
        self._on_batch, self._on_reset, self._on_health = on_batch, on_reset, on_health
        self._children: list[_Child] = []
        self._stop = threading.Event()
        self._stopped = False
        self._thread = threading.Thread(target=self._collect, name="streamtrain-ingest-collector", daemon=True)
        self.fatal: BaseException | None = None
        self._acked_at: dict[int, float] = {}

    # ------------------------------------------------------------------ control
    def start(self) -> None:
        ctx = get_context("spawn")  # no inherited threads or locks, no torch in the children
        for i in range(self.processes):
            shm = SharedMemory(create=True, size=max(1, self._layout.slot_bytes * self._count))
            mine, theirs = ctx.Pipe(duplex=True)
            process = ctx.Process(target=child_main.main, name=f"streamtrain-ingest-{i}", daemon=True,
                                  args=(i, theirs, shm.name, self._layout, self._count, self._settings))
            process.start()
            theirs.close()
            self._children.append(_Child(i, process, mine, shm, self._layout, self._count))
        self._thread.start()
        log.info("%d ingest processes started (client %s, %d slots of %.1f MiB each)", self.processes,
                 self._settings["client"], self._count, self._layout.slot_bytes / 2**20)

    def assign(self, generation: int, positions: Mapping[PartitionKey, int]) -> None:
        """Replace every process's partitions (``{}``: stop reading); batches of older generations are stale."""
        for child, share in zip(self._children, deal(positions, self.processes)):
            child.send(("assign", generation, share))

    def reading_since(self, generation: int) -> float | None:
        """When every process had finished its first fetch of ``generation`` (monotonic), else None."""
        if all(c.acked >= generation for c in self._children):
            return self._acked_at.get(generation)
        return None

    def flush(self) -> None:
        """Ask every process to close its open batch now (idle exit)."""
        for child in self._children:
            child.pending = True  # until its next status says otherwise
            child.send(("flush",))

    def pending(self) -> bool:
        return any(c.pending for c in self._children)

    @property
    def last_message_at(self) -> float | None:
        times = [c.last_message_at for c in self._children if c.last_message_at is not None]
        return max(times) if times else None

    def stop(self, timeout_s: float = 10.0) -> None:
        """Stop the processes and free their shared memory; a second call is a no-op (callers stop
        in a ``finally`` too)."""
        if self._stopped:
            return
        self._stopped = True
        self._stop.set()
        for child in self._children:
            child.send(("stop",))
        deadline = time.monotonic() + timeout_s
        for child in self._children:
            child.process.join(max(0.1, deadline - time.monotonic()))
            if child.process.is_alive():
                log.warning("ingest process %d did not stop; terminating it", child.index)
                child.process.terminate()
                child.process.join(2.0)
        self._thread.join(2.0)
        for child in self._children:
            child.conn.close()
            child.slots = []
            try:
                child.shm.close()
            except BufferError:  # a batch view still alive somewhere: the unlink below still frees it at exit
                pass
            child.shm.unlink()

    # ------------------------------------------------------------------ collector thread
    def _release(self, child: _Child, slot: int) -> Callable[[], None]:
        done = threading.Event()

        def release() -> None:
            if not done.is_set():
                done.set()
                child.send(("free", slot))

        return release

    def _collect(self) -> None:
        by_conn = {c.conn: c for c in self._children}
        try:
            while not self._stop.is_set():
                for conn in wait(list(by_conn), timeout=0.1):
                    child = by_conn[conn]  # type: ignore[index]
                    try:
                        msg = conn.recv()  # type: ignore[union-attr]
                    except (EOFError, OSError):
                        if self._stop.is_set():
                            return
                        raise WorkerError(f"ingest process {child.index} exited "
                                          f"(exit code {child.process.exitcode})") from None
                    self._dispatch(child, msg)
        except BaseException as exc:
            log.error("ingest failed: %s", exc)
            self.fatal = exc

    def _dispatch(self, child: _Child, msg: tuple[Any, ...]) -> None:
        kind = msg[0]
        if kind == "batch":
            slot = msg[1]
            batch = child.slots[slot].read(self.topic)
            self._on_batch(_with_release(batch, self._release(child, slot)))
        elif kind == "packed":
            self._on_batch(unpack(msg[1]))
        elif kind == "status":
            _, child.pending, last, poll_ok, error, counters = msg
            if last is not None:
                child.last_message_at = last
            if poll_ok != child.poll_ok or (not poll_ok and error != child.error):
                self._on_health(poll_ok, error)
            child.poll_ok, child.error = poll_ok, error
            self._counters.apply(child.index, counters)
        elif kind == "ack":
            child.acked = max(child.acked, msg[1])
            if all(c.acked >= msg[1] for c in self._children):
                self._acked_at.setdefault(msg[1], time.monotonic())
        elif kind == "reset":
            self._on_reset(*msg[1:])  # key, stored, new, log start
        elif kind == "fatal":
            raise WorkerError(msg[1])


def _with_release(batch: MicroBatch, release: Callable[[], None]) -> MicroBatch:
    return MicroBatch(batch.events, batch.ranges, batch.messages, batch.generation, batch.closed_by, release)
