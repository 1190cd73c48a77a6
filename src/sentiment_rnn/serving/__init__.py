"""Serving: batch prediction through onnxruntime (model loading, text encoding, file I/O)."""
