"""Errors of the replay tool; all derive from :class:`~streamtrain.errors.StreamtrainError`."""

from __future__ import annotations

from streamtrain.errors import StreamtrainError

__all__ = ["ReplayError"]


class ReplayError(StreamtrainError):
    """The replay cannot start or go on: unknown format, bad option, missing optional package.

    The message says what to change; the CLI prints it and exits with status 1.
    Bad *input lines* never raise this: they are counted and reported.
    """
