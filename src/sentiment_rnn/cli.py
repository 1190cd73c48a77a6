"""`sentiment-rnn`: one subcommand per pipeline stage, plus batch prediction.

Each stage command runs the same `run` as `dvc repro` does (`sentiment_rnn.stages.<stage>`),
which reads its own section of params.yaml once. User mistakes print a one-line `error: ...`
and exit with status 2, without a traceback.
"""

from pathlib import Path
from typing import Annotated

import typer

from sentiment_rnn.errors import UserError, exit_on_user_error
from sentiment_rnn.params import load_params
from sentiment_rnn.serving import DEFAULT_BATCH_SIZE, DEFAULT_CHUNK_ROWS
from sentiment_rnn.stages.entry import configure_logging

app = typer.Typer(
    help=__doc__, no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False
)

ParamsOpt = Annotated[Path, typer.Option("--params", help="The params file to read.")]
ArchArg = Annotated[str, typer.Argument(help="Model family: rnn, lstm or gru.")]


def _stage(module: str, params: Path, arch: str | None = None) -> None:
    """Run a stage module's `run` on params.yaml, read once, as `dvc repro` would."""
    from importlib import import_module

    run = import_module(f"sentiment_rnn.stages.{module}").run
    loaded = load_params(params)
    if arch is None:
        run(loaded)
    else:
        from sentiment_rnn.core.model import ARCHS

        if arch not in ARCHS:
            raise UserError(f"unknown arch {arch!r}: choose one of {', '.join(ARCHS)}")
        run(arch, loaded)


@app.command()
def download(params: ParamsOpt = Path("params.yaml")) -> None:
    """Load IMDB (hub id or local copy, `data.source`), validate it, carve a validation split."""
    _stage("download", params)


@app.command()
def tokenize(params: ParamsOpt = Path("params.yaml")) -> None:
    """Fit the tokenizer on the train split and encode train / val / test."""
    _stage("tokenize", params)


@app.command()
def embeddings(params: ParamsOpt = Path("params.yaml")) -> None:
    """Pretrain word vectors (PPMI + SVD) on the train and unlabelled reviews."""
    _stage("embeddings", params)


@app.command()
def train(arch: ArchArg, params: ParamsOpt = Path("params.yaml")) -> None:
    """Train one model family with early stopping on validation accuracy; log it to MLflow."""
    _stage("train", params, arch)


@app.command()
def evaluate(arch: ArchArg, params: ParamsOpt = Path("params.yaml")) -> None:
    """Report a trained model on the test split (metrics, curves, throughput); log to MLflow."""
    _stage("evaluate", params, arch)


@app.command()
def export(arch: ArchArg, params: ParamsOpt = Path("params.yaml")) -> None:
    """Export a trained model to ONNX and gate it on parity with torch (`promote` registers it)."""
    _stage("export", params, arch)


@app.command("lm-corpus")
def lm_corpus(params: ParamsOpt = Path("params.yaml")) -> None:
    """Tokenise the language models' corpus: train + unlabelled reviews, validation held out."""
    _stage("lm_corpus", params)


@app.command()
def lm(arch: ArchArg, params: ParamsOpt = Path("params.yaml")) -> None:
    """Train one family's bidirectional language model; log it to MLflow."""
    _stage("lm", params, arch)


@app.command()
def baseline(params: ParamsOpt = Path("params.yaml")) -> None:
    """Fit the TF-IDF + logistic regression baseline on the same splits, for scale."""
    _stage("baseline", params)


@app.command()
def compare(params: ParamsOpt = Path("params.yaml")) -> None:
    """Compare the three model families from their metrics files (table + figure)."""
    _stage("compare", params)


@app.command()
def promote(
    archs: Annotated[
        list[str] | None,
        typer.Argument(help="Model families to register (default: every exported one)."),
    ] = None,
    params: ParamsOpt = Path("params.yaml"),
) -> None:
    """Register each exported model in MLflow as a text model (review text in, label and
    probability out) and move `champion` to the best on validation."""
    from sentiment_rnn import paths
    from sentiment_rnn import promote as step
    from sentiment_rnn.core.model import ARCHS

    chosen = archs or [a for a in ARCHS if paths.onnx_path(a).is_file()]
    unknown = [a for a in chosen if a not in ARCHS]
    if unknown or not chosen:
        raise UserError(
            f"unknown arch(s) {unknown}: choose among {', '.join(ARCHS)}"
            if unknown
            else "no exported model in models/: run the pipeline (or dvc repro export@<arch>)"
        )
    for result in step.run(load_params(params), chosen):
        typer.echo(step.Promotion(**result).line())


@app.command()
def generate(
    prompt: Annotated[str, typer.Option(help="The review's beginning ('' starts afresh).")] = "",
    max_tokens: Annotated[int, typer.Option(help="Tokens to write at most per sample.")] = 80,
    samples: Annotated[int, typer.Option(help="How many reviews to write.")] = 1,
    seed: Annotated[int, typer.Option(help="The same seed writes the same text.")] = 0,
    sentiment: Annotated[
        str, typer.Option(help="positive, negative or neutral: the review asked for.")
    ] = "neutral",
    temperature: Annotated[float, typer.Option(help="> 0; lower is safer, higher wilder.")] = 0.9,
    top_k: Annotated[
        int, typer.Option(help="Draw among the k likeliest tokens (0: off; 1: greedy).")
    ] = 0,
    top_p: Annotated[
        float,
        typer.Option(
            help="Nucleus: the likeliest tokens holding this much probability, in (0, 1]."
        ),
    ] = 0.95,
    guidance: Annotated[
        float | None,
        typer.Option(
            help="How hard to push toward --sentiment (classifier-free guidance, >= 0; 0: off)."
            " Default: off; on the pipeline's LSTM LM it did not raise agreement (README)."
        ),
    ] = None,
    steer: Annotated[
        float | None,
        typer.Option(
            help="How hard to lean toward --sentiment with a word lexicon learnt from the train"
            " reviews (>= 0; 0: off). Default: the strength chosen in README."
        ),
    ] = None,
    model: Annotated[
        Path | None,
        typer.Option(help="A language model lm.pt or lm.onnx; default: models/lm-lstm/lm.pt."),
    ] = None,
    output: Annotated[
        Path | None, typer.Option(help="Write JSON Lines here (one sample per line) instead.")
    ] = None,
) -> None:
    """Write movie reviews with a language model of the pipeline (`lm` stage)."""
    from sentiment_rnn import generate as step
    from sentiment_rnn.core.generate import Sampling

    chosen = {} if guidance is None else {"guidance": guidance}
    steering = {} if steer is None else {"steer": steer}
    request = step.Request(prompt, max_tokens, samples, seed, sentiment,
                           Sampling(temperature, top_k, top_p, **chosen), **steering)  # fmt: skip
    found = step.run_generate(model, request)
    if output is None:
        typer.echo(step.as_text(found))
    else:
        step.write_jsonl(found, output)
        typer.echo(f"{len(found)} samples -> {output}")


@app.command()
def predict(
    model: Annotated[
        str,
        typer.Option(
            "--model",
            "-m",
            help="An exported .onnx file, or models:/<name>@<alias> (or /<version>).",
        ),
    ],
    input_path: Annotated[
        Path,
        typer.Option(
            "--input", "-i", help="Reviews: .csv, .jsonl, .parquet, or .txt (one review per line)."
        ),
    ],
    output_path: Annotated[
        Path,
        typer.Option(
            "--output", "-o", help="Predictions: .csv, .jsonl or .parquet; its folder must exist."
        ),
    ],
    text_column: Annotated[str, typer.Option(help="Column (or JSON key) of the review.")] = "text",
    id_column: Annotated[
        str | None,
        typer.Option(
            help="Column copied to the output `id`; default: the input's `id` column when "
            "it has one, else the 0-based row number."
        ),
    ] = None,
    input_format: Annotated[
        str | None, typer.Option(help="csv, jsonl, parquet or text; default: from the extension.")
    ] = None,
    output_format: Annotated[
        str | None, typer.Option(help="csv, jsonl or parquet; default: from the extension.")
    ] = None,
    batch_size: Annotated[
        int, typer.Option(help="Reviews per onnxruntime call.")
    ] = DEFAULT_BATCH_SIZE,
    chunk_rows: Annotated[
        int, typer.Option(help="Rows read, length-sorted and scored at a time (bounds memory).")
    ] = DEFAULT_CHUNK_ROWS,
    providers: Annotated[
        str,
        typer.Option(
            help="Comma-separated execution providers (cuda, cpu, or full names); "
            "auto: CUDA when it loads, else CPU."
        ),
    ] = "auto",
    threads: Annotated[
        int,
        typer.Option(
            help="Threads for onnxruntime and for the tokenizer (0: their defaults, one per "
            "core). Fewer threads, less memory."
        ),
    ] = 0,
    parallel: Annotated[
        bool,
        typer.Option(help="Run independent nodes (the two directions) at once, one thread each."),
    ] = False,
    int8: Annotated[
        bool, typer.Option(help="Serve an int8 dynamically quantized copy (made on the fly).")
    ] = False,
    tokenizer: Annotated[
        Path | None,
        typer.Option(
            help="The model's tokenizer.json; default: beside the model, or from its MLflow run."
        ),
    ] = None,
    progress: Annotated[bool, typer.Option(help="Show a progress bar (on a terminal).")] = True,
    release_memory: Annotated[
        bool,
        typer.Option(
            help="Shrink onnxruntime's arena after each chunk: less memory held between "
            "chunks, the same peak, somewhat slower."
        ),
    ] = False,
) -> None:
    """Score a file of reviews with an exported ONNX model; one output row per input row."""
    from sentiment_rnn.serving.predict import PredictOptions, run_predict
    from sentiment_rnn.serving.session import SessionConfig

    options = PredictOptions(
        text_column=text_column,
        id_column=id_column,
        input_format=input_format,
        output_format=output_format,
        batch_size=batch_size,
        chunk_rows=chunk_rows,
        progress=progress,
        release_memory=release_memory,
    )
    session = SessionConfig(
        providers=tuple(p.strip() for p in providers.split(",") if p.strip()),
        threads=threads,
        parallel=parallel,
    )
    summary = run_predict(
        model, input_path, output_path, options, session, tokenizer=tokenizer, int8=int8
    )
    typer.echo(summary.line())


def main() -> None:
    """Console entry point: run the app, turning user errors into one-line messages."""
    configure_logging()
    with exit_on_user_error():
        app()


if __name__ == "__main__":
    main()
