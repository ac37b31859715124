"""Reading trained checkpoints outside the worker: load, export to a serving format, recommend.

* :mod:`streamtrain.serving.checkpoint_model`: a worker checkpoint file → model + id vocabularies.
* :mod:`streamtrain.serving.export_format`: the export directory (format documented there).
* :mod:`streamtrain.serving.recommend`: top-k items for a user from an export.
* :mod:`streamtrain.serving.ann`: the FAISS HNSW index and its recall against exact search.
* :mod:`streamtrain.serving.publish`: versioned exports after committed checkpoints, ``latest`` flip.

Overview: docs/algorithms.md, section 6.
"""
