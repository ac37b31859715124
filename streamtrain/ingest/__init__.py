"""Ingest processes: Kafka fetch → decode → stable id keys → micro-batches in shared memory.

The trainer process owns the consumer-group membership (:mod:`streamtrain.ingest.pooled_source`) and
hands each of ``ingest.processes`` children a disjoint set of partitions with start offsets; the
children fetch with ``kafka.client`` (:mod:`streamtrain.ingest.fetch`), decode, cut micro-batches and
write them into a ring of fixed-size shared-memory slots (:mod:`streamtrain.ingest.slots`). Nothing
here imports torch.
"""

__all__: list[str] = []
