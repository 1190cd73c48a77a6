"""The registered text model through MLflow's command-line clients, in subprocesses:
`mlflow models predict` on a CSV of reviews, and `mlflow models serve` (one server on a free
loopback port for the module) answering review text, and hostile requests with a 4xx while it
stays up. The server is started and probed with `benchmarks/serve_load.py`'s own functions.
"""

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import mlflow.pyfunc
import pandas as pd
import pytest

from benchmarks.serve_load import Server, hostile_requests, send_hostile, serve
from tests.code.mlflow_helpers import URI, TinyRegistry, review_frame, tiny_registry

pytestmark = pytest.mark.slow
MLFLOW = str(Path(sys.executable).with_name("mlflow"))


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TinyRegistry]:
    with tiny_registry(tmp_path_factory.mktemp("clients")) as registered:
        yield registered


@pytest.fixture(scope="module")
def expected(tiny: TinyRegistry) -> list[dict[str, Any]]:
    """In-process predictions of `review_frame()`, as records."""
    model = mlflow.pyfunc.load_model(URI, model_config={"threads": 1, "providers": "cpu"})
    return model.predict(review_frame()[["text"]]).to_dict(orient="records")


@pytest.fixture(scope="module")
def server(tiny: TinyRegistry, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    log = tmp_path_factory.mktemp("server") / "server.log"
    with serve(URI, log, {"MLFLOW_TRACKING_URI": tiny.store}) as running:
        yield running


def strict_json(text: str) -> Any:
    """JSON as RFC 8259 has it: NaN or Infinity (which Python writes by default) refused."""

    def refuse(constant: str) -> None:
        raise ValueError(f"not JSON: {constant}")

    return json.loads(text, parse_constant=refuse)


def same_predictions(got: list[dict[str, Any]], expected: list[dict[str, Any]]) -> None:
    assert [(r["label"], r["truncated"], r["status"]) for r in got] == [
        (r["label"], r["truncated"], r["status"]) for r in expected
    ]
    assert [r["probability"] for r in got] == pytest.approx([r["probability"] for r in expected])


def test_mlflow_models_predict_scores_a_csv_of_reviews(
    tiny: TinyRegistry, tmp_path: Path, expected: list[dict[str, Any]]
) -> None:
    review_frame().to_csv(tmp_path / "reviews.csv", index=False)  # text and label columns
    command = [MLFLOW, "models", "predict", "-m", URI, "-i", str(tmp_path / "reviews.csv")]
    command += ["-t", "csv", "--env-manager", "local", "-o", str(tmp_path / "out.json")]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    same_predictions(strict_json((tmp_path / "out.json").read_text())["predictions"], expected)


def test_the_server_scores_review_text_in_each_request_format(
    server: Server, expected: list[dict[str, Any]]
) -> None:
    texts = review_frame()["text"].tolist()
    bodies = {
        "dataframe_records": {"dataframe_records": [{"text": t} for t in texts]},
        "inputs": {"inputs": texts},
        "dataframe_split": {"dataframe_split": {"columns": ["text"], "data": [[t] for t in texts]}},
    }
    for name, body in bodies.items():
        response = httpx.post(f"{server.url}/invocations", json=body, timeout=120)
        assert response.status_code == 200, (name, response.text[:500])
        same_predictions(strict_json(response.text)["predictions"], expected)
    csv = pd.DataFrame({"text": texts}).to_csv(index=False)
    response = httpx.post(
        f"{server.url}/invocations", content=csv, headers={"content-type": "text/csv"}
    )
    assert response.status_code == 200, response.text[:500]
    same_predictions(strict_json(response.text)["predictions"], expected)


@pytest.mark.parametrize("case", hostile_requests(), ids=lambda case: case.name)
def test_a_hostile_request_gets_its_answer_and_the_server_stays_up(
    server: Server, case: Any
) -> None:
    result = send_hostile(server, case)
    assert result.status == case.expect, result.message
    assert result.statuses_ok, "the rows' statuses differ"
    assert result.alive_after
    if case.expect >= 400:
        assert result.message  # the client is told what is wrong
