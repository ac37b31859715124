"""The streaming worker behind ``streamtrain consume``: Kafka → micro-batches → training, exact restarts.

Start with :mod:`streamtrain.worker.worker` (the loop), :mod:`streamtrain.ingest.source` (consumer
thread) and :mod:`streamtrain.state.checkpoint` (the documented commit order).
Heavy dependencies (torch, kafka) load with the submodules, not here.
"""

__all__: list[str] = []
