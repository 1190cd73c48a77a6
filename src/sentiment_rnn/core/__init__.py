"""The pure core: models, cells, tokenizer, batching, training, metrics.

Nothing here imports MLflow, Prefect, DVC or the project's file layout (`paths`), so it runs on
a bare GPU machine with torch, numpy, scipy, scikit-learn and tokenizers only
(`tests/code/test_layers.py` enforces it).
"""
