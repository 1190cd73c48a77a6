"""One module per DVC stage, named after it: read params and inputs, call the core, write outputs.

Each is run by `dvc.yaml` as `python -m sentiment_rnn.stages.<stage> [ARCH]` and by the CLI as
`sentiment-rnn <stage> [ARCH]`; both read `params.yaml` once and call the stage's `run`.
"""
