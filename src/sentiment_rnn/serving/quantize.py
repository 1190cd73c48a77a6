"""int8 dynamic quantization of an exported model (weights int8, activations quantized per call).

onnxruntime quantizes the LSTM nodes (`DynamicQuantizeLSTM`), the head (`MatMulInteger`) and
the embedding table (int8 + `DequantizeLinear`, a quarter of the file). It has no quantized
GRU or RNN kernel, so for those only the file shrinks. Serving metadata is copied over (the
quantizer drops it) and marked with `quantization`; check the accuracy cost before serving
it (benchmarks/predict_bench.py reports it).
"""

import logging
import tempfile
from pathlib import Path

import onnx

from sentiment_rnn.serving.contract import metadata_props

log = logging.getLogger(__name__)

QUANTIZATION_KEY = "quantization"
INT8_DYNAMIC = "int8-dynamic"


def quantize_int8(src: Path, dst: Path) -> Path:
    """Write an int8 dynamically quantized copy of `src` to `dst`, metadata included."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    props = metadata_props(onnx.load(str(src), load_external_data=False))
    with tempfile.TemporaryDirectory(prefix="quantize-") as tmp:
        raw = Path(tmp) / "int8.onnx"
        quantize_dynamic(str(src), str(raw), weight_type=QuantType.QInt8)
        proto = onnx.load(str(raw))
    onnx.helper.set_model_props(proto, props | {QUANTIZATION_KEY: INT8_DYNAMIC})
    onnx.save(proto, str(dst))
    log.info(
        "quantized %s -> %s (%d -> %d bytes)", src, dst, src.stat().st_size, dst.stat().st_size
    )
    return dst
