"""One job per run: a lease in Redis, taken at start, renewed by a heartbeat, released on a clean stop.

Two independent ``streamtrain consume`` processes (or two torchrun jobs) on one run would each train
their own model and fence each other at the first checkpoint. The lease refuses the second one at
start instead, with a message naming the holder and when its lease expires.

Key ``<redis.key_prefix>:<run.name>:lease`` holds a JSON value (holder id, host, pid, world size,
since). ``SET NX PX`` takes it; a heartbeat thread renews it every ``ttl/3`` with a script that
extends it only while the value is still ours (and re-takes it if it expired while Redis was
unreachable and nobody else took it). A holder killed with SIGKILL stops renewing, so the key
expires after ``distributed.lease_ttl_s`` and a restart succeeds. The checkpoint fence (the
checkpoint id WATCHed in ``ns:meta``) stays behind the lease as a second line of defence.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

import redis

from streamtrain.errors import WorkerError

__all__ = ["LeaseHeldError", "RunLease", "lease_key"]

log = logging.getLogger(__name__)

# KEYS[1] lease key, ARGV[1] our value, ARGV[2] ttl ms. 1: renewed, 2: re-taken after it expired,
# 0: someone else holds it.
_RENEW = """
local v = redis.call('GET', KEYS[1])
if v == ARGV[1] then redis.call('PEXPIRE', KEYS[1], ARGV[2]) return 1 end
if not v then redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2]) return 2 end
return 0
"""
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


def lease_key(namespace: str) -> str:
    """The lease's key in the run's namespace (``<key_prefix>:<run.name>``)."""
    return f"{namespace}:lease"


class LeaseHeldError(WorkerError):
    """Another job holds the run's lease; the message names it and when the lease expires."""


class RunLease:
    """The run's lease; :meth:`acquire` at start, :meth:`release` on a clean stop."""

    def __init__(
        self,
        client: redis.Redis,
        namespace: str,
        *,
        ttl_s: float,
        world_size: int = 1,
        on_lost: Callable[[str], None] | None = None,
        on_retaken: Callable[[], None] | None = None,
    ) -> None:
        self._client = client
        self.key = lease_key(namespace)
        self.run = namespace
        self._ttl_ms = max(1, int(ttl_s * 1000))
        self.holder = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(6)}"
        self._value = json.dumps({
            "holder": self.holder, "host": socket.gethostname(), "pid": os.getpid(),
            "world_size": world_size, "since": time.time(),
        }, sort_keys=True)
        self.on_lost = on_lost  # called on the heartbeat thread when another job took the lease
        self.on_retaken = on_retaken  # called when the lease had expired and nobody had taken it (counted)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._last_renewed: float | None = None
        self.held = False

    # ------------------------------------------------------------------ start / stop
    def acquire(self, wait_s: float = 0.0) -> None:
        """Take the lease, waiting up to ``wait_s`` for a held one to expire; raises :class:`LeaseHeldError`."""
        deadline = time.monotonic() + wait_s
        while True:
            try:
                taken = self._client.set(self.key, self._value, nx=True, px=self._ttl_ms)
                if taken:
                    self.held = True
                    self._last_renewed = time.monotonic()
                    log.info("took the run's lease %s as %s (expires %.1f s after the last heartbeat)",
                             self.key, self.holder, self._ttl_ms / 1000)
                    return
                current, pttl = self._client.get(self.key), self._client.pttl(self.key)
            except redis.RedisError as exc:
                raise WorkerError(f"cannot take the run's lease {self.key} in Redis: {exc}") from exc
            if current is None:
                continue  # expired between SET and GET: try again at once
            remaining = time.monotonic() - deadline
            if remaining >= 0:
                raise LeaseHeldError(self._held_message(current, pttl))
            time.sleep(min(0.2, -remaining))

    def _held_message(self, current: bytes, pttl: int) -> str:
        try:
            other: dict[str, Any] = json.loads(current)
        except ValueError:
            other = {"holder": current.decode(errors="replace")}
        since = other.get("since")
        age = f", holding it for {time.time() - since:.0f} s" if isinstance(since, (int, float)) else ""
        expires = f"{pttl / 1000:.1f} s" if pttl and pttl > 0 else "an unknown time"
        return (
            f"run {self.run!r} is already being trained by {other.get('holder')} (world size "
            f"{other.get('world_size', '?')}{age}); its lease {self.key} expires in {expires} unless renewed. "
            "One job per run: stop that job, or use another run.name. After a kill -9 the lease expires "
            "by itself (distributed.lease_ttl_s); to scale, run more ranks of one job with torchrun"
        )

    def start_heartbeat(self) -> None:
        """Renew every ttl/3 on a daemon thread until :meth:`release`."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._beat, name="streamtrain-lease", daemon=True)
            self._thread.start()

    @property
    def value(self) -> str:
        """What the lease key holds while this job has it (the state store's commits check it)."""
        return self._value

    def renew(self) -> bool:
        """Extend our lease once; False when another holder has it (raises redis errors).

        A lease that expired with nobody taking it (this process was paused, or Redis unreachable, past
        the TTL) is taken back, logged and counted: nobody else resumed the run meanwhile, and if one did
        and let go again, the checkpoint fence still refuses this job's next commit.
        """
        since = time.monotonic()
        result = int(self._client.eval(_RENEW, 1, self.key, self._value, self._ttl_ms))
        if result == 2:
            gap = time.monotonic() - self._last_renewed if self._last_renewed is not None else float("nan")
            log.warning("the run's lease %s had expired (%.1f s since the last renewal, TTL %.1f s: paused or cut "
                        "off) and nobody had taken it: took it back", self.key, gap, self._ttl_ms / 1000)
            if self.on_retaken is not None:
                self.on_retaken()
        if result:
            self._last_renewed = since
        return bool(result)

    def _beat(self) -> None:
        interval = self._ttl_ms / 3000
        while not self._stop.wait(interval):
            try:
                if self.renew():
                    continue
            except redis.RedisError as exc:  # Redis away: keep trying; the fence still guards the checkpoint
                log.warning("could not renew the run's lease %s: %s", self.key, exc)
                continue
            self.held = False
            reason = f"lost the run's lease {self.key} to another job"
            if self.on_lost is not None:
                self.on_lost(reason)  # the worker logs it, once
            else:
                log.error("%s", reason)
            return

    def release(self) -> None:
        """Stop the heartbeat and delete the lease if it is still ours (a clean stop)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5.0)
        if not self.held:
            return
        try:
            self._client.eval(_RELEASE, 1, self.key, self._value)
        except redis.RedisError as exc:
            log.warning("could not release the run's lease %s (it expires by itself): %s", self.key, exc)
        self.held = False
