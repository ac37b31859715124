"""One log line per cause per interval for the Kafka clients' chatter, with a count of what was held back.

During a broker outage librdkafka logs ``Connect to … failed`` every 50 ms and kafka-python a reconnect line
per attempt: ~830 identical lines in 45 s drowned the worker's own. :class:`RepeatFilter` sits on the
log handlers and passes the first record of each *cause* (logger, level and message with its numbers
masked, so ports, offsets and retry counts do not make a new cause), holds back the repeats for
``interval_s``, and appends ``[N more like this in the last S s]`` to the next one it passes. Records of
other loggers pass untouched. ``on_suppressed`` counts each held-back line by the prefix it matched (the
worker's ``streamtrain_log_lines_suppressed_total{logger}``).
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable

__all__ = ["CLIENT_LOGGERS", "RepeatFilter", "limit_client_logs"]

# kafka-python, the librdkafka logger the ingest processes pass to confluent-kafka, and the retry warnings
# streamtrain itself writes on every failed poll or fetch.
CLIENT_LOGGERS = ("kafka", "streamtrain.ingest.fetch_confluent", "streamtrain.ingest.child", "streamtrain.ingest.source")

_NUMBERS = re.compile(r"\d+(\.\d+)?")
_MAX_CAUSES = 512


class RepeatFilter(logging.Filter):
    """Pass one record per cause per ``interval_s`` from loggers under ``prefixes``; count the rest."""

    def __init__(self, interval_s: float, prefixes: Iterable[str] = CLIENT_LOGGERS, *,
                 on_suppressed: Callable[[str], None] | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__()
        self.interval_s = interval_s
        self._prefixes = tuple(prefixes)
        self.on_suppressed = on_suppressed
        self._clock = clock
        self._lock = threading.Lock()
        self._causes: OrderedDict[tuple[str, int, str], list[float]] = OrderedDict()  # cause -> [passed at, held]

    def _prefix(self, name: str) -> str | None:
        return next((p for p in self._prefixes if name == p or name.startswith(p + ".")), None)

    def filter(self, record: logging.LogRecord) -> bool:
        prefix = self._prefix(record.name)
        if prefix is None:
            return True
        message = record.getMessage()
        cause = (record.name, record.levelno, _NUMBERS.sub("#", message)[:300])
        now = self._clock()
        with self._lock:
            entry = self._causes.get(cause)
            if entry is not None and now - entry[0] < self.interval_s:
                entry[1] += 1
                held = True
            else:
                held = False
                repeats = int(entry[1]) if entry is not None else 0
                self._causes[cause] = [now, 0]
                self._causes.move_to_end(cause)
                while len(self._causes) > _MAX_CAUSES:
                    self._causes.popitem(last=False)
        if held:
            if self.on_suppressed is not None:
                self.on_suppressed(prefix)  # the prefix, not the logger: a bounded label set
            return False
        if repeats:
            record.msg, record.args = f"{message} [{repeats} more like this in the last {now - entry[0]:.0f} s]", None
        return True


def limit_client_logs(interval_s: float, *, on_suppressed: Callable[[str], None] | None = None,
                      handlers: Iterable[logging.Handler] | None = None) -> RepeatFilter | None:
    """Install one :class:`RepeatFilter` on ``handlers`` (default: the root logger's); None when ``interval_s``
    is 0 (every line kept)."""
    if interval_s <= 0:
        return None
    repeat = RepeatFilter(interval_s, on_suppressed=on_suppressed)
    for handler in handlers if handlers is not None else logging.getLogger().handlers:
        handler.addFilter(repeat)
    return repeat
