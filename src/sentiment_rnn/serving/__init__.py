"""Batch prediction through onnxruntime and tokenizers; no torch, and MLflow only through
`tracking.registry` for a registry URI.

`contract` (what an exported graph carries), `session` (onnxruntime sessions), `model` (a model
and its tokenizer), `encoding` and `io` (text in, rows out), `batching` (the chunk pipeline),
`memory`, `quantize` and `rnn_scan` (serving-time graph changes), `predict` (the entry).
"""

DEFAULT_BATCH_SIZE = 256  # reviews per onnxruntime call
DEFAULT_CHUNK_ROWS = 8192  # rows read, length-sorted and scored at a time: bounds memory
