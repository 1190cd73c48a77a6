"""Model tier, GPU only: the CUDA provider really loads and scores as the CPU provider does.

Skipped where no CUDA provider can start (no GPU, or onnxruntime-gpu without CUDA 13 / cuDNN 9).
"""

from pathlib import Path

import numpy as np
import pytest

from sentiment_rnn.errors import UserError
from sentiment_rnn.serving.session import CUDA, SessionConfig, create_session
from tests.model.predict_helpers import make_model, make_tokenizer

pytestmark = pytest.mark.gpu


@pytest.mark.parametrize("arch", ["rnn", "lstm", "gru"])
def test_the_cuda_provider_runs_first_and_matches_the_cpu(tmp_path: Path, arch: str) -> None:
    onnx_file, _ = make_model(tmp_path, make_tokenizer(tmp_path / "tok.json"), arch, 64)
    try:
        gpu = create_session(onnx_file, SessionConfig(providers=("cuda",)))
    except UserError as exc:
        pytest.skip(f"no CUDA provider here: {exc}")
    assert gpu.get_providers()[0] == CUDA
    cpu = create_session(onnx_file, SessionConfig(providers=("cpu",)))
    rng = np.random.default_rng(0)
    lengths = rng.integers(1, 65, 32)
    feed = {"token_ids": rng.integers(0, 150, (32, 64)), "lengths": lengths}
    np.testing.assert_allclose(gpu.run(None, feed)[1], cpu.run(None, feed)[1], atol=1e-4)
