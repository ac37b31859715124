"""Errors of the replay tool; all derive from :class:`~streamtrain.errors.StreamtrainError`."""

from __future__ import annotations

from typing import TYPE_CHECKING

from streamtrain.errors import StreamtrainError

if TYPE_CHECKING:
    from streamtrain.replay.producer import ProduceStats

__all__ = ["ProduceError", "ReplayError"]


class ReplayError(StreamtrainError):
    """The replay cannot start or go on: unknown format, bad option, missing optional package.

    The message says what to change; the CLI prints it and exits with status 1.
    Bad *input lines* never raise this: they are counted and reported.
    """


class ProduceError(ReplayError):
    """Producing stopped part-way (broker unreachable, send refused).

    Attributes:
        stats: what was produced before the failure; ``stats.resume_at`` is the ``--start-at``
            value that continues after the last event handed to the producer; the message says
            whether those events were all settled (delivered or counted as failed).
    """

    def __init__(self, message: str, stats: ProduceStats) -> None:
        super().__init__(message)
        self.stats = stats
