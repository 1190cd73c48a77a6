"""Export-time code (torch + onnx): the trained model as the ONNX graph that is served.

`onnx` converts and checks, `fast_graph` builds the folded-Scan graph of one-layer models,
`parity` gates every graph on agreement with torch, `graph` puts the three together.
"""
