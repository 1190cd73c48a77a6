"""The registered text model through MLflow's Python clients: pyfunc, evaluate, the registry.

One tiny model is registered per module in a throwaway store; its predictions are compared with
`sentiment-rnn predict` on the same ONNX file (`serving.predict.predict_file`).
"""

import math
from collections.abc import Iterator
from pathlib import Path

import mlflow
import mlflow.pyfunc
import pandas as pd
import pyarrow.parquet as pq
import pytest
from mlflow.exceptions import MlflowException
from packaging.requirements import Requirement

from sentiment_rnn.errors import UserError
from sentiment_rnn.serving.model import load_model
from sentiment_rnn.serving.predict import PredictOptions, predict_file
from sentiment_rnn.tracking import registry, runs, text_model
from tests.code.mlflow_helpers import URI, TinyRegistry, review_frame, tiny_registry
from tests.model.predict_helpers import CPU_ONE_THREAD, make_tokenizer

COLUMNS = ["label", "probability", "truncated", "unknown_fraction", "status"]
ONE_THREAD = {"threads": 1, "providers": "cpu"}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TinyRegistry]:
    with tiny_registry(tmp_path_factory.mktemp("text-model")) as registered:
        yield registered


@pytest.fixture(scope="module")
def pyfunc(tiny: TinyRegistry) -> mlflow.pyfunc.PyFuncModel:
    return mlflow.pyfunc.load_model(URI, model_config=ONE_THREAD)


def predicted_file(tiny: TinyRegistry, frame: pd.DataFrame, tmp_path: Path) -> pd.DataFrame:
    """What `sentiment-rnn predict` writes for `frame` with the same ONNX file."""
    frame.to_parquet(tmp_path / "in.parquet", index=False)
    model = load_model(str(tiny.onnx_file), None, CPU_ONE_THREAD)
    predict_file(model, tmp_path / "in.parquet", tmp_path / "out.parquet", PredictOptions())
    return pq.read_table(tmp_path / "out.parquet").to_pandas()


def test_a_text_column_scores_as_predict_does(
    tiny: TinyRegistry, pyfunc: mlflow.pyfunc.PyFuncModel, tmp_path: Path
) -> None:
    reviews = review_frame()
    out = pyfunc.predict(reviews[["text"]])
    expected = predicted_file(tiny, reviews[["text"]], tmp_path)
    assert list(out.columns) == COLUMNS and len(out) == len(reviews)
    assert out["status"].tolist() == ["ok"] * len(reviews)
    assert out["label"].tolist() == expected["label"].tolist()
    assert out["truncated"].tolist() == expected["truncated"].tolist()
    assert out["truncated"].any()  # the long review
    assert out["probability"].tolist() == pytest.approx(expected["probability"].tolist())
    assert pyfunc.predict(reviews).equals(out)  # other columns (the label) are left alone


def test_a_list_of_texts_scores_as_the_frame_does(pyfunc: mlflow.pyfunc.PyFuncModel) -> None:
    texts = review_frame()["text"].tolist()
    assert pyfunc.predict(texts).equals(pyfunc.predict(pd.DataFrame({"text": texts})))
    assert pyfunc.predict(texts[0]).equals(pyfunc.predict(texts[:1]))


def test_bad_rows_get_their_status_and_the_others_are_scored(
    pyfunc: mlflow.pyfunc.PyFuncModel,
) -> None:
    texts = ["A wonderful film.", "", "   ", None, 5, "caf\udce9", "Dull and boring."]
    out = pyfunc.predict(pd.DataFrame({"text": pd.Series(texts, dtype=object)}))
    assert out["status"].tolist() == [
        "ok",
        "error: empty text",
        "error: empty text",
        "error: missing text",
        "error: not text",
        "error: invalid utf-8",
        "ok",
    ]
    failed = out[out["status"] != "ok"]
    assert failed[["label", "probability", "truncated"]].isna().all().all()
    assert all(v is None for v in failed["probability"])  # None, so JSON null rather than NaN
    scored = out[out["status"] == "ok"]
    assert set(scored["label"]) <= {"negative", "positive"}
    assert all(0.0 <= p <= 1.0 and not math.isnan(p) for p in scored["probability"])


def test_an_input_without_text_is_refused_with_a_message(
    pyfunc: mlflow.pyfunc.PyFuncModel,
) -> None:
    with pytest.raises(MlflowException, match=r"no 'text' column \(columns: \['review'\]\)") as e:
        pyfunc.predict(pd.DataFrame({"review": ["A fine film."]}))
    assert e.value.get_http_status_code() == 400


def test_the_row_limit_holds_for_served_requests_only(
    tiny: TinyRegistry, monkeypatch: pytest.MonkeyPatch
) -> None:
    limited = mlflow.pyfunc.load_model(URI, model_config={**ONE_THREAD, "max_rows": 3})
    texts = ["A fine film."] * 4
    assert len(limited.predict(texts)) == 4  # in process: scored in bounded chunks
    monkeypatch.setenv("_MLFLOW_IS_IN_SERVING_ENVIRONMENT", "true")  # what the server sets
    assert text_model.in_served_request()
    with pytest.raises(MlflowException, match="4 rows in one request; .* at most 3") as e:
        limited.predict(texts)
    assert e.value.get_http_status_code() == 400
    assert len(limited.predict(texts[:3])) == 3


def test_model_config_is_checked_and_reaches_the_session(tiny: TinyRegistry) -> None:
    loaded = mlflow.pyfunc.load_model(URI, model_config={"threads": 2, "providers": "cpu"})
    session = loaded.unwrap_python_model().model.session
    options = session.get_session_options()
    assert options.intra_op_num_threads == 2
    assert not options.enable_mem_pattern  # the project's tuned options, not MLflow's defaults
    assert session.get_providers() == ["CPUExecutionProvider"]
    with pytest.raises(MlflowException, match="output must be one of"):
        mlflow.pyfunc.load_model(URI, model_config={"output": "proba"})
    with pytest.raises(MlflowException, match="max_rows must be an integer >= 0"):
        mlflow.pyfunc.load_model(URI, model_config={"max_rows": -1})


def test_each_call_hands_the_arena_back_unless_told_not_to(
    tiny: TinyRegistry, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A served model releases onnxruntime's arena after each request: flat memory."""
    released: list[object] = []
    monkeypatch.setattr(text_model, "release_freed_memory", released.append)
    texts = review_frame(5, seed=4)[["text"]]
    kept = mlflow.pyfunc.load_model(URI, model_config={**ONE_THREAD, "release_memory": False})
    first = kept.predict(texts)
    assert released == []
    loaded = mlflow.pyfunc.load_model(URI, model_config=ONE_THREAD)
    pd.testing.assert_frame_equal(loaded.predict(texts), first)
    assert released == [loaded.unwrap_python_model().model]
    with pytest.raises(MlflowException, match="release_memory must be true or false"):
        mlflow.pyfunc.load_model(URI, model_config={"release_memory": "yes"})


# A random tiny model may call every review negative: precision is then undefined.
@pytest.mark.filterwarnings("ignore::sklearn.exceptions.UndefinedMetricWarning")
def test_evaluate_logs_classifier_metrics_to_the_run(tiny: TinyRegistry) -> None:
    data = review_frame(40, seed=8)
    with runs.start_run("text-model", "evaluate", {}) as run:
        result = mlflow.models.evaluate(
            URI,
            data,
            targets="label",
            model_type="classifier",
            model_config={**ONE_THREAD, "output": "label"},
        )
    predicted = mlflow.pyfunc.load_model(URI, model_config=ONE_THREAD).predict(data)["label"]
    accuracy = (predicted == data["label"]).mean()
    logged = mlflow.MlflowClient().get_run(run.info.run_id).data.metrics
    assert result.metrics["accuracy_score"] == pytest.approx(accuracy)
    assert logged["accuracy_score"] == pytest.approx(accuracy)
    assert {"f1_score", "precision_score", "recall_score"} <= set(logged)


def test_the_logged_model_describes_text_and_installs_without_torch(tiny: TinyRegistry) -> None:
    info = mlflow.models.get_model_info(URI)
    assert info.signature.inputs.input_types() == [mlflow.types.DataType.string]
    assert info.signature.outputs.input_names() == COLUMNS
    folder = Path(mlflow.artifacts.download_artifacts(URI))
    example = pd.read_json(folder / "input_example.json", orient="split")
    assert list(example.columns) == ["text"]
    lines = (folder / "requirements.txt").read_text().splitlines()
    reqs = [Requirement(line) for line in lines if line and not line.startswith("-")]
    names = {r.name for r in reqs}
    assert {"mlflow", "onnx", "tokenizers", "numpy", "pandas", "pyarrow"} <= names
    assert "torch" not in names
    for platform, runtime, other in (
        ("linux", "onnxruntime-gpu", "onnxruntime"),
        ("darwin", "onnxruntime", "onnxruntime-gpu"),
    ):
        env = {"sys_platform": platform}
        chosen = {r.name for r in reqs if r.marker is None or r.marker.evaluate(env)}
        assert runtime in chosen and other not in chosen
    version = mlflow.MlflowClient().get_model_version("tiny-gru", str(tiny.version))
    assert version.tags[registry.TEXT_INPUT_TAG[0]] == registry.TEXT_INPUT_TAG[1]


def test_the_pairing_check_runs_when_the_model_loads(tiny: TinyRegistry, tmp_path: Path) -> None:
    folder = Path(mlflow.artifacts.download_artifacts(URI, dst_path=str(tmp_path)))
    _, tokenizer = registry.model_artifacts(folder)
    assert tokenizer is not None and tokenizer.parent.name == "artifacts"
    make_tokenizer(tokenizer, vocab_size=120)  # another tokenizer under the same name
    with pytest.raises(UserError, match="is not the one .* was trained with"):
        mlflow.pyfunc.load_model(str(folder))


def test_predict_with_a_registry_uri_reads_the_models_artifacts(
    tiny: TinyRegistry, tmp_path: Path
) -> None:
    onnx_file, tokenizer = registry.download_registered(URI, tmp_path)
    assert onnx_file.name == "gru.onnx" and onnx_file.parent.name == "artifacts"
    assert tokenizer is not None and tokenizer.read_bytes() == tiny.tokenizer.read_bytes()
    assert onnx_file.read_bytes() == tiny.onnx_file.read_bytes()  # the plain graph, kept
    reviews = review_frame()[["text"]]
    reviews.to_parquet(tmp_path / "in.parquet")
    registered = load_model(URI, None, CPU_ONE_THREAD)
    predict_file(registered, tmp_path / "in.parquet", tmp_path / "out.parquet", PredictOptions())
    got = pq.read_table(tmp_path / "out.parquet").to_pandas()
    (tmp_path / "local").mkdir()
    assert got.equals(predicted_file(tiny, reviews, tmp_path / "local"))


def test_champion_skips_versions_that_do_not_take_text(tiny: TinyRegistry) -> None:
    """A version registered before the text model (ONNX flavor, token ids) never becomes the
    champion, however good its score."""
    import mlflow.onnx
    import onnx

    with runs.start_run("text-model", "old", {}):
        runs.log_metrics({"best_val_acc": 0.99})
        mlflow.onnx.log_model(
            onnx.load(str(tiny.onnx_file)),
            name="onnx-model",
            registered_model_name="tiny-gru",
            save_as_external_data=False,
        )
    assert registry.update_champion("tiny-gru") == tiny.version
    assert registry.version_with_tags("tiny-gru", dict([registry.TEXT_INPUT_TAG])) == tiny.version
