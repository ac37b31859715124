"""Replay historical interaction logs into Kafka, in event-time order, paced and resumable.

Pipeline: :func:`read_log` (one reader per format, bad lines counted) -> :meth:`EventLog.order`
(by time, or a seeded shuffle) -> :meth:`EventLog.events` (``--start-at``/``--limit``,
synthesised times) -> :func:`produce_events` (encode, key by user, pace, send). The
``streamtrain replay`` command wires these together; see ``streamtrain replay --help``.
"""

from streamtrain.replay.confluent_sink import ConfluentSink
from streamtrain.replay.confluent_sink import confluent_producer as kafka_producer
from streamtrain.replay.encoding import ChunkEncoder, EventChunk
from streamtrain.replay.errors import ReplayError
from streamtrain.replay.eventlog import EventLog, Order, ReadReport, read_log
from streamtrain.replay.kafka_sink import (
    COMPRESSIONS,
    ProducerSettings,
    kafka_python_producer,
)
from streamtrain.replay.pacing import Pacer, RatePacer, SpeedupPacer, Unpaced
from streamtrain.replay.producer import (
    BatchSink,
    DeliveryFailure,
    EventSink,
    ProduceError,
    ProduceStats,
    Progress,
    SendError,
    produce_chunks,
    produce_events,
)
from streamtrain.replay.readers import FORMATS, ReadOptions, detect_format
from streamtrain.replay.records import (
    TIME_UNITS,
    BadLine,
    BadLineReason,
    FieldMap,
    ReplayEvent,
    parse_field_map,
)

__all__ = [
    "COMPRESSIONS",
    "FORMATS",
    "TIME_UNITS",
    "BadLine",
    "BadLineReason",
    "BatchSink",
    "ChunkEncoder",
    "ConfluentSink",
    "DeliveryFailure",
    "EventChunk",
    "EventLog",
    "EventSink",
    "FieldMap",
    "Order",
    "Pacer",
    "ProduceError",
    "ProduceStats",
    "ProducerSettings",
    "Progress",
    "RatePacer",
    "ReadOptions",
    "ReadReport",
    "ReplayError",
    "ReplayEvent",
    "SendError",
    "SpeedupPacer",
    "Unpaced",
    "detect_format",
    "kafka_producer",
    "kafka_python_producer",
    "parse_field_map",
    "produce_chunks",
    "produce_events",
    "read_log",
]
