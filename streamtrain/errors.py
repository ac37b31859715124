"""The root of streamtrain's exceptions, so callers can catch everything from one place."""

__all__ = ["StreamtrainError", "ConfigError"]


class StreamtrainError(Exception):
    """Base class of every error streamtrain raises on purpose."""


class ConfigError(StreamtrainError):
    """The configuration is invalid; the message names each bad key and how to fix it.

    The CLI turns this into exit code 2 without a traceback.
    """
