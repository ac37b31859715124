"""Which incarnation of the input topic the run's offsets belong to: Kafka's topic id.

Kafka gives every created topic a UUID (the topic id, since 2.8). A topic deleted and recreated under
the same name gets a new id and offsets that restart at 0, so the run's stored offsets point into a
log that no longer exists: resuming at them would silently skip the new log's head (stored offset
inside the new log) or jump to its end (past it). Each checkpoint therefore records the id beside the
name (``ns:meta`` field ``topic_ids`` and the file's restore point), and resume compares it with the
broker's. A different id is a decision, by ``kafka.on_topic_recreated``:

* ``fail`` (default): stop before training, naming the ids and the two ways on;
* ``restart``: read every partition of the new topic from its start; logged and counted
  (``streamtrain_topic_recreated_total{decision}``). The committed offsets of the old incarnation are
  replaced, so the checkpoint's "offsets never go backwards" rule does not refuse the first commit.

A state without an id (written before ids were recorded, or when the broker could not be asked) is
accepted as is, and the current id is recorded from the next checkpoint on.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

from streamtrain.metrics import Metrics
from streamtrain.errors import ResumeError
from streamtrain.state.resume import ResumePoint
from streamtrain.events.records import EARLIEST

__all__ = ["describe_topic_id", "reconcile_topic"]

log = logging.getLogger(__name__)


def describe_topic_id(admin: Any, topic: str) -> str | None:
    """The topic's id from a kafka-python ``KafkaAdminClient``; None when the topic does not exist (yet) or
    the broker cannot say (the check is then skipped, with a warning)."""
    try:
        described = admin.describe_topics([topic])
    except Exception as exc:  # broker down, no such topic: the consumer reports those on its own
        log.warning("cannot read the id of topic %s (%s); its identity is not checked this time", topic, exc)
        return None
    for entry in described or ():
        if entry.get("name") == topic and not entry.get("error_code"):
            topic_id = entry.get("topic_id")
            # An all-zero id means "unknown" (a broker older than 2.8).
            if topic_id and str(topic_id).strip("0-"):
                return str(topic_id)
    return None


def reconcile_topic(start: ResumePoint, topic: str, current: str | None, policy: str, metrics: Metrics) -> ResumePoint:
    """``start`` with ``topic_ids`` set to the current id, and its offsets reset when the topic was recreated
    and ``policy`` is ``restart``.

    Raises:
        ResumeError: the topic was recreated and ``policy`` is ``fail``.
    """
    stored = start.topic_ids.get(topic)
    ids = dict(start.topic_ids)
    if current is not None:
        ids[topic] = current
    if start.fresh or stored is None or current is None or stored == current:
        return dataclasses.replace(start, topic_ids=ids)
    offsets = {k: v for k, v in start.offsets.items() if k[0] == topic}
    metrics.topic_recreated.labels(topic=topic, decision=policy).inc()
    if policy != "restart":
        raise ResumeError(
            f"topic {topic} was deleted and recreated: its id is {current}, the run's checkpoint "
            f"{start.checkpoint_id} recorded {stored} (offsets {sorted(offsets.values())} are of the old log). "
            "Set kafka.on_topic_recreated=restart to train the new topic from its start, keeping the model, or "
            "use --fresh to discard the run"
        )
    log.error("topic %s was deleted and recreated (id %s, the checkpoint recorded %s): kafka.on_topic_recreated="
              "restart, so every partition of the new topic is read from its start; the old offsets %s are dropped",
              topic, current, stored, dict(sorted(offsets.items())))
    reset = {**start.offsets, **dict.fromkeys(offsets, EARLIEST)}
    return dataclasses.replace(start, offsets=reset, topic_ids=ids)
