"""Batch prediction against the source model: same probabilities as torch, in input order.

Tiny randomly initialised models (the weights do not matter for agreement), exported with the
export stage's functions and served through real onnxruntime sessions.
"""

from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import torch
from tokenizers import Tokenizer

from sentiment_rnn.core.model import ModelConfig, SentimentRNN, predict_proba
from sentiment_rnn.core.tokenizer import encode
from sentiment_rnn.serving.model import load_model
from sentiment_rnn.serving.predict import PredictOptions, predict_file
from sentiment_rnn.serving.session import SessionConfig
from tests.conftest import rss_mb, synthetic_reviews
from tests.model.predict_helpers import (
    CPU,
    CPU_ONE_THREAD,
    fixed_tokenizer,
    make_model,
    make_tokenizer,
)

MAX_LENGTH = 12  # short, so that many synthetic reviews are truncated
QUIET = PredictOptions(progress=False)


@pytest.fixture(scope="module")
def tokenizer_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tokenizer(tmp_path_factory.mktemp("tok") / "tokenizer.json")


@pytest.fixture(scope="module")
def reviews(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Reviews of mixed lengths in an order unrelated to length, with string ids."""
    frame = synthetic_reviews(90, seed=11)
    frame.loc[7, "text"] = "fun"  # one token
    frame.loc[8, "text"] = " ".join(frame["text"][:40])  # far beyond MAX_LENGTH
    frame.insert(0, "review_id", [f"id-{i}" for i in range(len(frame))])
    path = tmp_path_factory.mktemp("reviews") / "reviews.parquet"
    frame.to_parquet(path, index=False)
    return path


def torch_probabilities(
    model: SentimentRNN, tokenizer: Path, texts: list[str], side: str
) -> tuple[np.ndarray, np.ndarray]:
    """The source model on the tokenize stage's encoding: (probabilities, truncated)."""
    ids, lengths, full = encode(Tokenizer.from_file(str(tokenizer)), texts, MAX_LENGTH, side)
    steps = int(lengths.max())
    probs = predict_proba(
        model, torch.from_numpy(ids[:, :steps].astype(np.int64)), torch.from_numpy(lengths)
    )
    return probs.numpy(), full > MAX_LENGTH


# Scores of `synthetic_reviews(8, seed=21)` (row 3 replaced) by the tiny models below, recorded
# from predict_file before serving was split into modules: the same graph must still score the
# same. RNN nodes go through the Scan rewrite; LSTM and GRU through onnxruntime's fused kernels.
RECORDED = {
    "rnn": [0.5468408, 0.5057973, 0.5321934, 0.4808756, 0.5506034, 0.5207715, 0.5234516, 0.5038677],
    "lstm": [
        0.4658956,
        0.4720159,
        0.4810158,
        0.4919911,
        0.4638116,
        0.4762822,
        0.4583804,
        0.4633851,
    ],
    "gru": [0.68874, 0.6672084, 0.6784365, 0.5406448, 0.6523049, 0.6526662, 0.6687835, 0.6536363],
}
RECORDED_TRUNCATED = [True, True, True, False, True, False, False, True]


@pytest.mark.parametrize("arch", ["rnn", "lstm", "gru"])
def test_scores_equal_the_recorded_scores(tmp_path: Path, arch: str) -> None:
    tokenizer = fixed_tokenizer(tmp_path / "tokenizer.json")
    onnx_file, _ = make_model(tmp_path / arch, tokenizer, arch, max_length=16, seed=0)
    frame = synthetic_reviews(8, seed=21)
    frame.loc[3, "text"] = "Not a single known wrd, zzz"
    frame.to_csv(tmp_path / "reviews.csv", index=False)
    model = load_model(str(onnx_file), None, CPU_ONE_THREAD)
    options = PredictOptions(batch_size=3, chunk_rows=5, progress=False)
    predict_file(model, tmp_path / "reviews.csv", tmp_path / "out.parquet", options)
    got = pq.read_table(tmp_path / "out.parquet")
    np.testing.assert_allclose(got.column("probability"), RECORDED[arch], rtol=0, atol=1e-7)
    assert got.column("truncated").to_pylist() == RECORDED_TRUNCATED


@pytest.mark.parametrize(
    "arch,side", [("rnn", "right"), ("lstm", "right"), ("gru", "right"), ("lstm", "left")]
)
def test_predictions_equal_torch_in_input_order(
    tmp_path: Path, tokenizer_file: Path, reviews: Path, arch: str, side: str
) -> None:
    onnx_file, torch_model = make_model(tmp_path, tokenizer_file, arch, MAX_LENGTH, side)
    model = load_model(str(onnx_file), None, CPU_ONE_THREAD)
    out = tmp_path / "out.parquet"
    options = PredictOptions(id_column="review_id", batch_size=7, chunk_rows=32, progress=False)
    summary = predict_file(model, reviews, out, options)
    got = pq.read_table(out).to_pandas()
    frame = pd.read_parquet(reviews)
    want, truncated = torch_probabilities(torch_model, tokenizer_file, frame["text"].tolist(), side)

    assert got["id"].tolist() == frame["review_id"].tolist()
    np.testing.assert_allclose(got["probability"], want, atol=1e-5)
    assert got["truncated"].tolist() == truncated.tolist()
    assert 0 < truncated.sum() < len(frame) and summary.truncated == truncated.sum()
    assert summary.ok == len(frame)


def test_truncation_side_changes_what_is_scored(tmp_path: Path, tokenizer_file: Path) -> None:
    """A long review scores differently when its start or its end is kept."""
    text = " ".join(synthetic_reviews(30, seed=4)["text"])
    src = tmp_path / "one.txt"
    src.write_text(text + "\n")
    probs = {}
    for side in ("right", "left"):
        onnx_file, _ = make_model(tmp_path / side, tokenizer_file, "gru", MAX_LENGTH, side)
        model = load_model(str(onnx_file), None, CPU_ONE_THREAD)
        predict_file(model, src, tmp_path / f"{side}.parquet", QUIET)
        row = pq.read_table(tmp_path / f"{side}.parquet").to_pylist()[0]
        assert row["truncated"] is True
        probs[side] = row["probability"]
    assert abs(probs["right"] - probs["left"]) > 1e-6


def test_batch_size_and_chunking_do_not_change_scores(
    tmp_path: Path, tokenizer_file: Path, reviews: Path
) -> None:
    onnx_file, _ = make_model(tmp_path, tokenizer_file, "lstm", MAX_LENGTH)
    model = load_model(str(onnx_file), None, CPU_ONE_THREAD)
    results = []
    for batch_size, chunk_rows in ((1, 1), (5, 13), (512, 8192)):
        out = tmp_path / f"out-{batch_size}.parquet"
        options = PredictOptions(batch_size=batch_size, chunk_rows=chunk_rows, progress=False)
        predict_file(model, reviews, out, options)
        results.append(pq.read_table(out).column("probability").to_numpy())
    np.testing.assert_allclose(results[0], results[1], atol=1e-6)
    np.testing.assert_allclose(results[0], results[2], atol=1e-6)


def test_registry_uri_finds_the_model_and_its_tokenizer(
    tmp_path: Path,
    tokenizer_file: Path,
    reviews: Path,
    mlflow_store: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`models:/<name>@<alias>`: tokenizer from the model folder, or else from the model's run."""
    import mlflow
    import mlflow.onnx
    import onnx

    onnx_file, _ = make_model(tmp_path / "m", tokenizer_file, "gru", MAX_LENGTH)
    mlflow.set_tracking_uri(mlflow_store)
    mlflow.set_experiment("predict-registry")  # not an experiment id left over from another store
    client = mlflow.MlflowClient()
    with mlflow.start_run():  # v1: the tokenizer is a run artifact
        mlflow.onnx.log_model(
            onnx.load(str(onnx_file)),
            name="onnx-model",
            registered_model_name="tiny",
            save_as_external_data=False,
        )
        mlflow.log_artifact(str(tokenizer_file), "tokenizer")
    with mlflow.start_run():  # v2: the tokenizer travels inside the model folder
        mlflow.onnx.log_model(
            onnx.load(str(onnx_file)),
            name="onnx-model",
            registered_model_name="tiny",
            save_as_external_data=False,
            extra_files=[str(tokenizer_file)],
        )
    client.set_registered_model_alias("tiny", "champion", "1")
    monkeypatch.chdir(tmp_path)  # no project tokenizer to fall back on here

    reference = load_model(str(onnx_file), None, CPU_ONE_THREAD)
    predict_file(reference, reviews, tmp_path / "ref.parquet", QUIET)
    for uri in ("models:/tiny@champion", "models:/tiny/2"):
        model = load_model(uri, None, CPU_ONE_THREAD)
        assert model.source == uri and model.meta.arch == "gru"
        predict_file(model, reviews, tmp_path / "out.parquet", QUIET)
        np.testing.assert_allclose(
            pq.read_table(tmp_path / "out.parquet").column("probability"),
            pq.read_table(tmp_path / "ref.parquet").column("probability"),
        )


@pytest.mark.parametrize("bidirectional", [True, False])
def test_rnn_rewrite_is_the_same_function(
    tmp_path: Path, tokenizer_file: Path, bidirectional: bool
) -> None:
    """RNN nodes served as Scan give the RNN op's outputs at every batch and length."""
    import onnx
    import onnxruntime as ort

    from sentiment_rnn.serving.rnn_scan import rnn_to_scan

    onnx_file, _ = make_model(
        tmp_path, tokenizer_file, "rnn", MAX_LENGTH, bidirectional=bidirectional
    )
    proto, rewritten = rnn_to_scan(onnx.load(str(onnx_file)))
    assert rewritten == (2 if bidirectional else 1)
    assert "RNN" not in {n.op_type for n in proto.graph.node}
    original = ort.InferenceSession(str(onnx_file), providers=["CPUExecutionProvider"])
    fast = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    for batch, steps in ((1, 1), (3, 7), (8, 30)):
        lengths = rng.integers(1, steps + 1, batch)
        lengths[0] = steps
        feed = {"token_ids": rng.integers(0, 100, (batch, steps)), "lengths": lengths}
        np.testing.assert_allclose(fast.run(None, feed)[1], original.run(None, feed)[1], atol=1e-5)
    lstm, _ = make_model(tmp_path / "lstm", tokenizer_file, "lstm", MAX_LENGTH)
    assert rnn_to_scan(onnx.load(str(lstm)))[1] == 0  # fused LSTM / GRU kernels are kept


def test_int8_and_parallel_serving_stay_close_to_fp32(
    tmp_path: Path, tokenizer_file: Path, reviews: Path
) -> None:
    """Serving options: parallel execution is exact; int8 moves probabilities only slightly."""
    from sentiment_rnn.serving.quantize import QUANTIZATION_KEY, quantize_int8

    onnx_file, _ = make_model(tmp_path, tokenizer_file, "lstm", MAX_LENGTH)
    outputs = {}
    parallel = SessionConfig(("cpu",), threads=1, parallel=True)
    for name, config, int8 in (
        ("fp32", CPU_ONE_THREAD, False),
        ("parallel", parallel, False),
        ("int8", CPU_ONE_THREAD, True),
    ):
        model = load_model(str(onnx_file), None, config, int8)
        predict_file(model, reviews, tmp_path / f"{name}.parquet", QUIET)
        outputs[name] = pq.read_table(tmp_path / f"{name}.parquet").column("probability").to_numpy()
    np.testing.assert_allclose(outputs["parallel"], outputs["fp32"], atol=1e-6)
    gap = np.abs(outputs["int8"] - outputs["fp32"])
    assert 0 < gap.max() < 0.05  # really quantized, and still close
    int8_file = quantize_int8(onnx_file, tmp_path / "lstm.int8.onnx")
    assert int8_file.stat().st_size < onnx_file.stat().st_size
    quantized = load_model(str(int8_file), None, CPU)  # finds lstm.tokenizer.json
    assert quantized.session.get_modelmeta().custom_metadata_map[QUANTIZATION_KEY] == "int8-dynamic"


@pytest.mark.parametrize("arch", ["rnn", "lstm", "gru"])
@pytest.mark.parametrize(
    "pooling,bidirectional",
    [
        ("max", True),
        ("mean", True),
        ("last", True),
        ("meanmax", True),
        ("last", False),
        ("max", False),
    ],
)
def test_fast_graph_is_the_same_function_as_torch(
    arch: str, pooling: str, bidirectional: bool
) -> None:
    """The folded-Scan graph against torch at several batches and lengths, every pooling."""
    import onnxruntime as ort

    from sentiment_rnn.export.fast_graph import build_fast_graph
    from sentiment_rnn.serving.contract import ServingMeta

    torch.manual_seed(3)
    model = SentimentRNN(
        ModelConfig(
            arch=arch,
            vocab_size=50,
            embed_dim=8,
            hidden_size=6,
            pooling=pooling,
            bidirectional=bidirectional,
        )
    ).eval()
    session = ort.InferenceSession(
        build_fast_graph(model, ServingMeta(arch, "0" * 64, 30, "right", 0)).SerializeToString(),
        providers=["CPUExecutionProvider"],
    )
    rng = np.random.default_rng(1)
    for batch, steps in ((1, 1), (4, 9), (7, 30)):
        lengths = rng.integers(1, steps + 1, batch)
        lengths[0] = steps
        ids = rng.integers(0, 50, (batch, steps))
        ids[np.arange(steps)[None, :] >= lengths[:, None]] = 0
        want = predict_proba(model, torch.from_numpy(ids), torch.from_numpy(lengths)).numpy()
        got = session.run(["probability"], {"token_ids": ids, "lengths": lengths})[0]
        np.testing.assert_allclose(got, want, atol=1e-6)


def test_fast_graph_file_serves_like_the_export(
    tmp_path: Path, tokenizer_file: Path, reviews: Path
) -> None:
    import onnx

    from sentiment_rnn.export.fast_graph import build_fast_graph
    from sentiment_rnn.serving.contract import ServingMeta, read_props

    onnx_file, torch_model = make_model(tmp_path, tokenizer_file, "gru", MAX_LENGTH)
    meta = ServingMeta.from_props(read_props(onnx_file), str(onnx_file))
    fast_file = tmp_path / "gru.fast.onnx"
    onnx.save(build_fast_graph(torch_model, meta), str(fast_file))
    outputs = {}
    for name, path in (("export", onnx_file), ("fast", fast_file)):
        model = load_model(str(path), None, CPU_ONE_THREAD)  # finds its tokenizer
        predict_file(model, reviews, tmp_path / f"{name}.parquet", QUIET)
        outputs[name] = pq.read_table(tmp_path / f"{name}.parquet").to_pandas()
    served = load_model(str(fast_file), None, CPU).session.get_modelmeta()
    assert served.custom_metadata_map["serving_graph"] == "folded-scan"
    np.testing.assert_allclose(
        outputs["fast"]["probability"], outputs["export"]["probability"], atol=1e-6
    )
    assert outputs["fast"]["truncated"].tolist() == outputs["export"]["truncated"].tolist()


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads RSS from /proc")
def test_release_memory_hands_the_arena_back_and_scores_stay_the_same(
    tmp_path: Path, tokenizer_file: Path
) -> None:
    """A long batch leaves onnxruntime's arena holding its largest tensors (here about 200 MB
    of gathered input projections); release_memory() returns them, and the next batches score
    exactly as before."""
    onnx_file, _ = make_model(tmp_path, tokenizer_file, arch="gru", max_length=2048, hidden=32)
    model = load_model(str(onnx_file), None, CPU_ONE_THREAD)
    rng = np.random.default_rng(0)
    long_batch = rng.integers(5, 100, size=(256, 2048), dtype=np.int64)
    lengths = np.full(256, 2048, dtype=np.int64)
    first = model(long_batch, lengths)
    held = rss_mb()
    model.release_memory()
    assert held - rss_mb() > 100, "release_memory returned less than 100 MB of the arena"
    np.testing.assert_array_equal(model(long_batch, lengths), first)
