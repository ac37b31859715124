"""Interaction events: the v1 schema, the columnar EventBatch and the total decoders (per message, per batch)."""

from streamtrain.events.batch import EventBatch, normalize_id
from streamtrain.events.batch_decoder import decode_batch
from streamtrain.events.decoder import (
    DEFAULT_MAX_BYTES,
    DecodeResult,
    decode_values,
    encode_event,
)
from streamtrain.events.reasons import Rejection, RejectReason
from streamtrain.events.schema import SCHEMA_VERSION, InvalidEventError, normalize_event

__all__ = [
    "DEFAULT_MAX_BYTES",
    "SCHEMA_VERSION",
    "DecodeResult",
    "EventBatch",
    "InvalidEventError",
    "RejectReason",
    "Rejection",
    "decode_batch",
    "decode_values",
    "encode_event",
    "normalize_event",
    "normalize_id",
]
