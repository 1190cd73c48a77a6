"""The registered model: an MLflow pyfunc that takes review text and scores it with the ONNX graph.

Logged as models from code (`text_model_code.py` holds the `set_model` call), with the exported
graph and its tokenizer as the model's artifacts and this package as its code, so MLflow's own
clients work on a registry URI: `mlflow.pyfunc.load_model(...).predict(...)`,
`mlflow models predict` / `serve`, `mlflow.models.evaluate` (and `mlflow.pyfunc.spark_udf`,
which hands the same predict pandas batches: not tested here, no Spark).

Input: a DataFrame with a `text` column, or review texts alone (a list, a one-column frame);
the signature is one unnamed string column, which is what lets a plain list through MLflow's
schema check. Output: one row per input row, in order, as `sentiment-rnn predict` writes them
without the id: `label`, `probability`, `truncated`, `unknown_fraction`, `status`; a row that
cannot be scored has an `error: ...` status and no prediction, and never fails the others.
(Before the model sees
a request, MLflow's own parsing refuses some as a whole: a text column of numbers only, or a
string pandas cannot hold, such as a lone surrogate.) Columns hold Python objects, so a
missing value is None (JSON null, not NaN). `model_config` (see `TextModelConfig`) picks the
output, the session, and the row limit of a served request.
"""

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from importlib import metadata
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
from mlflow.environment_variables import _MLFLOW_IS_IN_SERVING_ENVIRONMENT
from mlflow.exceptions import MlflowException
from mlflow.models import ModelSignature
from mlflow.pyfunc import PythonModel, PythonModelContext
from mlflow.types.schema import ColSpec, DataType, Schema

from sentiment_rnn.serving import DEFAULT_BATCH_SIZE, DEFAULT_CHUNK_ROWS
from sentiment_rnn.serving.batching import ScoringModel, infer_chunk, prepare_chunk
from sentiment_rnn.serving.io import Chunk, chunk_table, output_schema
from sentiment_rnn.serving.memory import release_freed_memory, size_tokenizer_pool
from sentiment_rnn.serving.model import load_onnx_model
from sentiment_rnn.serving.session import SessionConfig

TEXT = "text"
ONNX_ARTIFACT, TOKENIZER_ARTIFACT = "onnx", "tokenizer"
CODE_FILE = Path(__file__).with_name("text_model_code.py")  # what MLflow runs to build the model
PACKAGE_DIR = Path(__file__).resolve().parents[1]  # sentiment_rnn, logged as the model's code
OUTPUTS = ("table", "label")
INPUT_EXAMPLE = pd.DataFrame(
    {TEXT: ["A moving story, wonderfully acted.", "Dull, clumsy and far too long."]}
)
_ARROW_TO_MLFLOW = {  # floats leave `output_frame` as Python floats: doubles
    pa.string(): DataType.string,
    pa.float32(): DataType.double,
    pa.float64(): DataType.double,
    pa.bool_(): DataType.boolean,
    pa.int64(): DataType.long,
    pa.int32(): DataType.integer,
}


@dataclass(frozen=True)
class TextModelConfig:
    """The model's `model_config`: logged with these defaults, overridden at load time
    (`load_model(uri, model_config={...})`, or `MLFLOW_PYFUNC_INFERENCE_CONFIG` for a server).

    `output`: `table` (every column) or `label` (the label column alone, which
    `mlflow.models.evaluate(model_type="classifier")` needs). `max_rows`: the most rows one
    served request may hold (0: no limit); a larger request is refused with a 400, since
    MLflow's server would time it out after scoring it anyway. In-process calls have no
    limit and are scored in bounded chunks. `providers`, `threads`: the onnxruntime session,
    as `sentiment-rnn predict --providers/--threads` take them. `release_memory`: after each
    call, hand onnxruntime's arena and the C heap's free pages back to the OS, so a server's
    memory stays flat under load (as `sentiment-rnn predict --release-memory`); the next call
    then takes its memory from the OS again, which costs a served GRU a fifth to a half of
    its throughput (reports/benchmarks/serve_load*.md): false trades memory for speed.
    """

    output: str = "table"
    max_rows: int = 10_000
    providers: str = "auto"
    threads: int = 0
    batch_size: int = DEFAULT_BATCH_SIZE
    release_memory: bool = True

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> "TextModelConfig":
        """The config in `data` (MLflow passes the logged one, with any overrides)."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data or {}) - known)
        if unknown:
            raise _invalid(f"unknown model_config keys {unknown}; known: {sorted(known)}")
        cfg = cls(**(data or {}))
        if not isinstance(cfg.providers, str):
            raise _invalid(f"model_config providers must be a string, not {cfg.providers!r}")
        if cfg.output not in OUTPUTS:
            raise _invalid(
                f"model_config output must be one of {list(OUTPUTS)}, not {cfg.output!r}"
            )
        for name in ("max_rows", "threads", "batch_size"):
            value = getattr(cfg, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise _invalid(f"model_config {name} must be an integer >= 0, not {value!r}")
        if cfg.batch_size < 1:
            raise _invalid("model_config batch_size must be >= 1")
        if not isinstance(cfg.release_memory, bool):
            raise _invalid(
                f"model_config release_memory must be true or false, not {cfg.release_memory!r}"
            )
        return cfg

    def session(self) -> SessionConfig:
        providers = tuple(p.strip() for p in self.providers.split(",") if p.strip())
        return SessionConfig(providers=providers, threads=self.threads)


def default_config() -> dict[str, Any]:
    """What is logged as the model's `model_config`: every key, so each can be overridden."""
    return asdict(TextModelConfig())


def _invalid(message: str) -> MlflowException:
    """MLflow's server answers this with a 400 and the message."""
    return MlflowException.invalid_parameter_value(message)


def in_served_request() -> bool:
    """True inside `mlflow models serve` (and `mlflow models predict`, which mimics it):
    MLflow's scoring server sets this flag for the models it serves."""
    return bool(_MLFLOW_IS_IN_SERVING_ENVIRONMENT.get())


def input_texts(model_input: pd.DataFrame) -> list[Any]:
    """The review of each row: the `text` column, or the only column of review texts alone
    (MLflow names the column of a list 0)."""
    columns = list(model_input.columns)
    if TEXT in columns:
        return model_input[TEXT].tolist()
    if len(columns) == 1 and not isinstance(columns[0], str):
        return model_input.iloc[:, 0].tolist()
    raise _invalid(
        f"the input has no {TEXT!r} column (columns: {columns}): send rows with a {TEXT!r} "
        f'field, e.g. {{"dataframe_records": [{{"{TEXT}": "..."}}]}}, or review texts alone, '
        'e.g. {"inputs": ["..."]}'
    )


def score_texts(
    model: ScoringModel,
    texts: Sequence[Any],
    batch_size: int = DEFAULT_BATCH_SIZE,
    chunk_rows: int = DEFAULT_CHUNK_ROWS,
) -> pa.Table:
    """One output row per text, in order: `sentiment-rnn predict`'s columns but the id.

    Scored `chunk_rows` at a time, as predict scores a file, so memory stays bounded.
    """
    schema = output_schema(False)
    tables = []
    for first in range(0, len(texts), chunk_rows):
        chunk = Chunk(first, list(texts[first : first + chunk_rows]))
        scored = infer_chunk(model, prepare_chunk(model, chunk), batch_size)
        tables.append(chunk_table(chunk, scored, model.meta.label_names, schema))
    table = pa.concat_tables(tables) if tables else schema.empty_table()
    return table.drop_columns(["id"])


def output_frame(table: pa.Table) -> pd.DataFrame:
    """Object columns, so a missing value stays None; float32 as its shortest decimal."""
    columns = {}
    for field, column in zip(table.schema, table.columns, strict=True):
        if pa.types.is_floating(field.type):
            # through text, so 0.7312345 (float32) is 0.7312345, not 0.73123449087
            column = column.cast(pa.string()).cast(pa.float64())
        columns[field.name] = pd.Series(column.to_pylist(), dtype=object)
    return pd.DataFrame(columns)


def signature() -> ModelSignature:
    """Review texts in (one string column: `text` in a frame, or the texts alone); the
    serving output schema out, less the id."""
    schema = output_schema(False)
    outputs = [
        ColSpec(_ARROW_TO_MLFLOW[f.type], f.name, required=f.name == "status")
        for f in schema
        if f.name != "id"
    ]
    return ModelSignature(inputs=Schema([ColSpec(DataType.string)]), outputs=Schema(outputs))


def requirements() -> list[str]:
    """Pinned to this environment, without torch; onnxruntime-gpu on Linux (it runs on the CPU
    where no GPU is found), onnxruntime elsewhere (onnxruntime-gpu has no macOS build)."""
    ort = _version("onnxruntime-gpu") or _version("onnxruntime")
    pins = [f"{dist}=={_version(dist)}" for dist in ("mlflow", "onnx", "tokenizers", "numpy")]
    pins += [f"{dist}=={_version(dist)}" for dist in ("pandas", "pyarrow")]
    return pins + [
        f'onnxruntime-gpu=={ort}; sys_platform == "linux"',
        f'onnxruntime=={ort}; sys_platform != "linux"',
    ]


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


class SentimentTextModel(PythonModel):
    """Review text in, label and positive probability out (see the module docstring)."""

    def load_context(self, context: PythonModelContext) -> None:
        """Open the graph with its tokenizer: the pairing check and the project's session."""
        self.config = TextModelConfig.from_dict(context.model_config)
        size_tokenizer_pool(self.config.threads)
        onnx_file = Path(context.artifacts[ONNX_ARTIFACT])
        self.model = load_onnx_model(
            onnx_file, Path(context.artifacts[TOKENIZER_ARTIFACT]), self.config.session()
        )

    def predict(
        self,
        context: PythonModelContext,
        model_input: pd.DataFrame,
        params: dict[str, Any] | None = None,
    ) -> pd.DataFrame | pd.Series:
        """One output row per input row; the label column alone if `output` is `label`."""
        texts = input_texts(model_input)
        limit = self.config.max_rows
        if limit and len(texts) > limit and in_served_request():
            raise _invalid(
                f"{len(texts):,} rows in one request; this model takes at most {limit:,} "
                "(model_config max_rows): split the request, or score a file with "
                "`sentiment-rnn predict`"
            )
        frame = output_frame(score_texts(self.model, texts, self.config.batch_size))
        if self.config.release_memory:
            release_freed_memory(self.model)
        return frame["label"] if self.config.output == "label" else frame
