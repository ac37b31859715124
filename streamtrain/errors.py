"""The root of streamtrain's exceptions, so callers can catch everything from one place."""

__all__ = ["StreamtrainError", "ConfigError", "WorkerError", "ResumeError", "CheckpointError", "OffsetsBackwardsError", "StateStoreError", "FencedError", "LeaseLostError", "LeaseExpiredError"]


class StreamtrainError(Exception):
    """Base class of every error streamtrain raises on purpose."""


class ConfigError(StreamtrainError):
    """The configuration is invalid; the message names each bad key and how to fix it.

    The CLI turns this into exit code 2 without a traceback.
    """


class WorkerError(StreamtrainError):
    """The worker cannot go on; the message says why and what to do."""


class ResumeError(WorkerError):
    """Stored state is missing or inconsistent at start (e.g. Redis names a checkpoint file that is gone).

    Raised before any training; the CLI exits 1. ``--fresh`` discards the run's state and starts over.
    """


class CheckpointError(WorkerError):
    """One checkpoint attempt failed at a numbered step; nothing after that step happened.

    The worker keeps training in memory and retries with backoff; Kafka offsets are never committed
    past state that was not persisted.
    """

    def __init__(self, step: int, message: str) -> None:
        super().__init__(f"checkpoint step {step}: {message}")
        self.step = step


class OffsetsBackwardsError(CheckpointError):
    """A checkpoint would store a smaller next offset than the last committed one (a bug, never retried)."""


class StateStoreError(WorkerError):
    """A Redis operation failed (unreachable, timeout, bad data); ``operation`` names it for metrics."""

    def __init__(self, operation: str, message: str) -> None:
        super().__init__(f"redis {operation}: {message}")
        self.operation = operation


class FencedError(StateStoreError):
    """Another writer changed this run's checkpoint id in Redis since we last committed.

    Two workers must not share a run name; this worker stops instead of overwriting the other's state.
    """


class LeaseLostError(FencedError):
    """Another job holds the run's lease (this one was paused or cut off past ``distributed.lease_ttl_s``).

    The worker writes nothing more (no checkpoint, no Redis record, no Kafka commit) and exits non-zero;
    the holder carries on with the run.
    """

    def __init__(self, operation: str, message: str) -> None:
        WorkerError.__init__(self, message)  # not "redis <operation>: ...": Redis worked, the job lost the run
        self.operation = operation


class LeaseExpiredError(StateStoreError):
    """The run's lease expired and nobody holds it: no write until the heartbeat takes it back (retried)."""
