"""The MLflow model registry: register exported models, promote the champion, resolve, download.

A registered version is the text model of `text_model` (an MLflow pyfunc over the exported
ONNX graph and its tokenizer, which are its artifacts). A registered model is named by a
registry URI, `models:/<name>@<alias>` or `models:/<name>/<version>`; `sentiment-rnn predict`
resolves one to its version and downloads its graph and tokenizer (`download_registered`).
Serving imports this module only for a registry URI, so scoring a local file never imports
MLflow.
"""

import os
from pathlib import Path
from typing import Any

import mlflow
import mlflow.pyfunc
from mlflow.exceptions import MlflowException
from mlflow.models import Model

from sentiment_rnn.errors import UserError
from sentiment_rnn.serving.session import quiet_onnxruntime
from sentiment_rnn.tracking import text_model
from sentiment_rnn.tracking.runs import tracking_uri

CHAMPION = "champion"
REGISTRY_SCHEME = "models:/"
TEXT_INPUT_TAG = ("input", "text")  # on every version of the text model; older ONNX ones lack it


def log_text_model(
    onnx_file: Path, tokenizer: Path, registered_name: str, tags: dict[str, str]
) -> int:
    """Log the text model over `onnx_file` + `tokenizer` to the active run and register it;
    returns the new version number, tagged with `tags` and `TEXT_INPUT_TAG`."""
    # MLflow loads the model to check the input example: where CUDA cannot load, the session
    # falls back to the CPU (and says so in one log line).
    with quiet_onnxruntime():
        info = mlflow.pyfunc.log_model(
            name="model",
            python_model=str(text_model.CODE_FILE),
            artifacts={
                text_model.ONNX_ARTIFACT: str(onnx_file),
                text_model.TOKENIZER_ARTIFACT: str(tokenizer),
            },
            code_paths=[str(text_model.PACKAGE_DIR)],
            signature=text_model.signature(),
            input_example=text_model.INPUT_EXAMPLE,
            pip_requirements=text_model.requirements(),
            model_config=text_model.default_config(),
            registered_model_name=registered_name,
        )
    version = int(info.registered_model_version)
    client = mlflow.MlflowClient()
    for key, value in {**tags, TEXT_INPUT_TAG[0]: TEXT_INPUT_TAG[1]}.items():
        client.set_model_version_tag(registered_name, str(version), key, value)
    return version


def describe(registered_name: str, version: int, model_text: str, version_text: str) -> None:
    """The registered model's description and this version's (MLflow renders both as Markdown)."""
    client = mlflow.MlflowClient()
    client.update_registered_model(registered_name, description=model_text)
    client.update_model_version(registered_name, str(version), description=version_text)


def version_with_tags(registered_name: str, tags: dict[str, str]) -> int | None:
    """The newest registered version carrying every tag of `tags`, if any."""
    client = mlflow.MlflowClient()
    clauses = [f"name='{registered_name}'"] + [f"tags.{k}='{v}'" for k, v in tags.items()]
    try:
        found = client.search_model_versions(" and ".join(clauses))
    except MlflowException:  # no such registered model yet
        return None
    return max((int(v.version) for v in found), default=None)


def choose_champion(candidates: dict[int, float | None]) -> int | None:
    """The version with the best validation accuracy; the newest wins a tie; None if no scores."""
    scored = [(acc, version) for version, acc in candidates.items() if acc is not None]
    return max(scored)[1] if scored else None


def version_scores(
    client: Any, registered_name: str, metric: str = "best_val_acc"
) -> dict[int, float | None]:
    """Each text-model version's `metric`, read from the run that produced it. Versions
    registered before the text model (ONNX flavor, token ids in) cannot compete."""
    key, value = TEXT_INPUT_TAG
    scores: dict[int, float | None] = {}
    for mv in client.search_model_versions(f"name='{registered_name}' and tags.{key}='{value}'"):
        try:
            scores[int(mv.version)] = client.get_run(mv.run_id).data.metrics.get(metric)
        except MlflowException:  # the source run was deleted: it cannot compete
            scores[int(mv.version)] = None
    return scores


def update_champion(registered_name: str) -> int | None:
    """Point the `champion` alias at the best registered version; returns that version."""
    client = mlflow.MlflowClient()
    best = choose_champion(version_scores(client, registered_name))
    if best is not None:
        client.set_registered_model_alias(registered_name, CHAMPION, str(best))
    return best


def _first_file(folder: Path, pattern: str) -> Path | None:
    return next(iter(sorted(folder.rglob(pattern))), None)


def model_artifacts(folder: Path) -> tuple[Path | None, Path | None]:
    """(graph, tokenizer) of a downloaded model folder: the text model's artifacts as its
    MLmodel names them, else (a version logged with the ONNX flavor) any `*.onnx` and
    `*tokenizer.json` in it."""
    if (folder / "MLmodel").is_file():
        pyfunc = Model.load(str(folder)).flavors.get("python_function", {})
        artifacts = pyfunc.get("artifacts") or {}
        if text_model.ONNX_ARTIFACT in artifacts:
            onnx_file = folder / artifacts[text_model.ONNX_ARTIFACT]["path"]
            entry = artifacts.get(text_model.TOKENIZER_ARTIFACT)
            return onnx_file, folder / entry["path"] if entry else None
    return _first_file(folder, "*.onnx"), _first_file(folder, "*tokenizer.json")


def download_registered(uri: str, dst: Path) -> tuple[Path, Path | None]:
    """Download a registered model's folder; returns (its .onnx file, a tokenizer or None).

    The tokenizer is the one inside the model folder (an artifact of the text model, or an
    `extra_files` entry of an older ONNX-flavor version), else one among the artifacts of the
    run that logged the model version.
    """
    mlflow.set_tracking_uri(tracking_uri())
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # bars: noise
    try:
        local = mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=str(dst / "m"))
        onnx_file, tokenizer = model_artifacts(Path(local))
        if onnx_file is None:
            raise UserError(f"{uri} holds no .onnx file (is it an ONNX model?)")
        tokenizer = tokenizer or run_tokenizer(uri, dst / "run")
    except MlflowException as exc:
        raise UserError(f"cannot load {uri} from {tracking_uri()}: {exc.message}") from None
    return onnx_file, tokenizer


def resolve_version(uri: str) -> str:
    """`models:/<name>@<alias>` as the fixed `models:/<name>/<version>` it points at now.

    A run that scores many shards resolves the alias once, so a `champion` moved meanwhile
    does not give it two models; a version URI is returned as it is, once checked to exist.
    """
    mlflow.set_tracking_uri(tracking_uri())
    try:
        version = _model_version(mlflow.MlflowClient(), uri)
    except MlflowException as exc:
        raise UserError(f"cannot resolve {uri} in {tracking_uri()}: {exc.message}") from None
    return f"{REGISTRY_SCHEME}{version.name}/{version.version}"


def _model_version(client: Any, uri: str) -> Any:
    """The registry entry for `models:/<name>@<alias>` or `models:/<name>/<version>`."""
    ref = uri.removeprefix(REGISTRY_SCHEME)
    if "@" in ref:
        name, alias = ref.split("@", 1)
        return client.get_model_version_by_alias(name, alias)
    name, _, version = ref.partition("/")
    return client.get_model_version(name, version)


def run_tokenizer(uri: str, dst: Path) -> Path | None:
    """A `*tokenizer.json` logged in the run that produced the model version, downloaded."""
    client = mlflow.MlflowClient()
    run_id = _model_version(client, uri).run_id
    if not run_id:
        return None
    pending = [""]
    while pending:  # breadth-first over the run's artifact folders
        for item in client.list_artifacts(run_id, pending.pop(0) or None):
            if item.is_dir:
                pending.append(item.path)
            elif item.path.endswith("tokenizer.json"):
                local = mlflow.artifacts.download_artifacts(
                    run_id=run_id, artifact_path=item.path, dst_path=str(dst)
                )
                return Path(local)
    return None
