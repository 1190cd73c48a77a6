"""`sentiment-rnn`: one subcommand per pipeline stage, plus batch prediction.

Each stage command reads its own section of params.yaml once and passes plain values down.
User mistakes print a one-line `error: ...` and exit with status 2, without a traceback.
"""

import logging
import sys
from pathlib import Path
from typing import Annotated

import typer

from sentiment_rnn import paths
from sentiment_rnn.errors import UserError
from sentiment_rnn.params import load_params, section

app = typer.Typer(help=__doc__, no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)

ParamsOpt = Annotated[Path, typer.Option("--params", help="The params file to read.")]
ARCH_HELP = "Model family: rnn, lstm or gru."


@app.command()
def download(params: ParamsOpt = Path("params.yaml")) -> None:
    """Load IMDB (hub id or local copy, `data.source`), validate it, carve a validation split."""
    from sentiment_rnn.download import run_download

    cfg = section(load_params(params), "data")
    run_download(
        source=str(cfg["source"]), val_fraction=float(cfg["val_fraction"]), seed=int(cfg["seed"]),
        out_dir=paths.RAW_DIR, metrics_path=paths.METRICS_DIR / "data.json",
    )


@app.command()
def tokenize(params: ParamsOpt = Path("params.yaml")) -> None:
    """Train the WordPiece tokenizer on the train split and encode train / val / test."""
    from sentiment_rnn.tokenize import TokenizeConfig, run_tokenize

    cfg = TokenizeConfig(**section(load_params(params), "tokenize"))
    run_tokenize(cfg, paths.RAW_DIR, paths.TOKENS_DIR, paths.METRICS_DIR / "tokenize.json")


@app.command()
def train(arch: Annotated[str, typer.Argument(help=ARCH_HELP)], params: ParamsOpt = Path("params.yaml")) -> None:
    """Train one model family with early stopping on validation accuracy; log it to MLflow."""
    from sentiment_rnn.train import run_train

    all_params = load_params(params)
    run_train(arch, section(all_params, f"train.{arch}"), str(section(all_params, "mlflow")["experiment"]))


def main() -> None:
    """Console entry point: run the app, turning user errors into one-line messages."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        app()
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
