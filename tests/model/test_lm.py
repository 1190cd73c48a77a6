"""Model tier: the language models, their batches, resume, cells, generation and its ONNX twin."""

import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from sentiment_rnn.core.generate import Guided, Sampling, filtered_probs, generate, prompt_ids
from sentiment_rnn.core.lm import (
    BiLM,
    LMConfig,
    TorchStepper,
    build_lm,
    frame,
    frequency_ranks,
    load_lm,
)
from sentiment_rnn.core.lm_data import chunks, epoch_rows, join, n_chunks, rows_of
from sentiment_rnn.core.lm_training import LMTrainConfig, fit_lm
from sentiment_rnn.core.tokenizer import BOS_ID, EOS_ID, NEUTRAL_ID, PAD_ID, POSITIVE_ID, UNK_ID
from sentiment_rnn.errors import UserError
from sentiment_rnn.export.lm_onnx import export_lm_step
from sentiment_rnn.serving.lm_onnx import OnnxStepper

VOCAB = 60
CFG = LMTrainConfig(epochs=2, batch_size=4, bptt=8, lr=0.01, seed=0, device="cpu")


def _docs(n: int = 60, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [
        frame(rng.integers(7, VOCAB, rng.integers(3, 30)).astype(np.int32), "positive")
        for _ in range(n)
    ]


def _lm(arch: str = "lstm", cell: str = "fused", seed: int = 0) -> BiLM:
    counts = np.bincount(join(_docs()), minlength=VOCAB)
    cfg = LMConfig(arch=arch, vocab_size=VOCAB, embed_dim=8, hidden_size=8, cell=cell,
                   cutoffs=(10, 30), div_value=2.0, rank_of=frequency_ranks(counts))  # fmt: skip
    torch.manual_seed(seed)
    return BiLM(cfg)


@settings(max_examples=60, deadline=None)
@given(
    lengths=st.lists(st.integers(1, 40), min_size=1, max_size=30),
    rows=st.integers(1, 9),
    bptt=st.integers(1, 17),
)
def test_every_token_but_the_first_is_a_target_exactly_once(
    lengths: list[int], rows: int, bptt: int
) -> None:
    stream = np.arange(1, sum(lengths) + 1, dtype=np.int64)  # distinct, never PAD_ID (0)
    data = rows_of(stream, rows)
    targets = np.concatenate([c.targets.ravel() for c in chunks(data, bptt)])
    assert sorted(targets[targets != PAD_ID].tolist()) == stream[1:].tolist()
    for chunk in chunks(data, bptt):  # each input is the token before its target, in its row
        nxt = chunk.targets[chunk.targets != PAD_ID]
        assert (nxt == chunk.inputs[chunk.targets != PAD_ID] + 1).all()


def test_an_epoch_reads_every_review_once_and_backwards_reversed() -> None:
    docs = _docs(20)
    forward, backward = (epoch_rows(docs, 3, seed=5, backward=b) for b in (False, True))
    read = forward[:, :-1].ravel()
    assert (
        np.bincount(read[read != PAD_ID], minlength=VOCAB).tolist()
        == np.bincount(join(docs), minlength=VOCAB).tolist()
    )
    stream = join(docs, np.random.default_rng(5).permutation(len(docs)))
    assert rows_of(stream[::-1].copy(), 3).tolist() == backward.tolist()


def test_training_lowers_held_out_perplexity_and_is_deterministic() -> None:
    docs = _docs()
    a, b = _lm(), _lm()
    ra, rb = (fit_lm(m, docs, docs[:10], 100, CFG) for m in (a, b))
    assert ra.history[-1].val_ppl < ra.history[0].val_ppl < VOCAB
    assert [h.val_loss for h in ra.history] == [h.val_loss for h in rb.history]
    assert ra.history[-1].val_word_ppl > 0


class Killed(Exception):
    pass


def test_resume_mid_epoch_after_a_kill_matches_an_uninterrupted_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from sentiment_rnn.core import lm_training

    docs = _docs()
    cfg = replace(CFG, checkpoint_every=3)
    full = _lm()
    expected = fit_lm(full, docs, docs[:10], 100, cfg)
    first_epoch = n_chunks(epoch_rows(docs, cfg.batch_size, cfg.seed, False), cfg.bptt)
    original, calls = lm_training.step_loss, {"n": 0}

    def dies_in_the_second_epoch(*args, **kwargs):  # after its 7th chunk; checkpoint at 6
        calls["n"] += 1
        if calls["n"] > 2 * (first_epoch + 7):  # two directions per chunk
            raise Killed
        return original(*args, **kwargs)

    checkpoint = tmp_path / "lm.pt"
    with monkeypatch.context() as patch:
        patch.setattr(lm_training, "step_loss", dies_in_the_second_epoch)
        with pytest.raises(Killed):
            fit_lm(_lm(), docs, docs[:10], 100, cfg, checkpoint)
    resumed_model = _lm(seed=99)  # other weights: the checkpoint must win
    resumed = fit_lm(resumed_model, docs, docs[:10], 100, cfg, checkpoint)
    assert resumed.resumed_from == (1, 6)
    assert [h.val_loss for h in resumed.history] == [h.val_loss for h in expected.history]
    for k, v in full.state_dict().items():
        torch.testing.assert_close(resumed_model.state_dict()[k], v, atol=0, rtol=0)


def _copy_fused_into_reference(fused: BiLM, reference: BiLM) -> None:
    reference.load_state_dict(fused.state_dict(), strict=False)
    for layer, ref in zip(fused.directions, reference.directions, strict=True):
        cell = {"rnn": nn.RNNCell, "lstm": nn.LSTMCell, "gru": nn.GRUCell}[fused.cfg.arch](8, 8)
        with torch.no_grad():
            for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
                getattr(cell, name).copy_(getattr(layer, f"{name}_l0"))
        ref.cell.copy_from(cell)


@pytest.mark.parametrize("arch", ["rnn", "lstm", "gru"])
def test_the_textbook_cells_make_the_same_language_model(arch: str) -> None:
    fused, reference = _lm(arch), _lm(arch, cell="reference")
    _copy_fused_into_reference(fused, reference)
    fused.eval(), reference.eval()
    ids = torch.from_numpy(join(_docs(4))[None, :40])
    for direction in (0, 1):
        with torch.no_grad():
            f, f_state = fused.features(ids[:, :20], direction)
            f2, _ = fused.features(ids[:, 20:], direction, f_state)
            r, r_state = reference.features(ids[:, :20], direction)
            r2, _ = reference.features(ids[:, 20:], direction, r_state)
        torch.testing.assert_close(r, f, atol=1e-5, rtol=0)
        torch.testing.assert_close(r2, f2, atol=1e-5, rtol=0)  # the carried state too


def test_generation_is_deterministic_per_seed_and_stops_at_the_end_token() -> None:
    model = _lm()
    fit_lm(model, _docs(), _docs(5), 50, replace(CFG, epochs=1))
    stepper = TorchStepper(model)
    start = prompt_ids([10, 11], "positive")
    one, two = (generate(stepper, start, 30, 3, Sampling(), seed=4) for _ in range(2))
    assert [s.ids for s in one] == [s.ids for s in two]
    other = generate(stepper, start, 30, 3, Sampling(), seed=5)
    assert [s.ids for s in other] != [s.ids for s in one]
    for sample in one:
        assert EOS_ID not in sample.ids and len(sample.ids) <= 30
        assert sample.ended or len(sample.ids) == 30
        assert not set(sample.ids) & {PAD_ID, UNK_ID, BOS_ID, POSITIVE_ID}


def test_sampling_filters_keep_only_the_nucleus_and_the_top_k() -> None:
    # ids 0-2 and 4-6 are specials that are never drawn; 3 is the end of the review
    raw = np.array([[0.01, 0.01, 0.01, 0.05, 0.01, 0.01, 0.01, 0.5, 0.25, 0.15]])
    log_probs = np.log(raw)
    probs = filtered_probs(log_probs, Sampling(temperature=1.0, top_p=0.75))
    assert np.flatnonzero(probs[0] > 0).tolist() == [7, 8]  # 0.5 + 0.25 >= 0.75
    probs = filtered_probs(log_probs, Sampling(temperature=1.0, top_k=3, top_p=1.0))
    assert np.flatnonzero(probs[0] > 0).tolist() == [7, 8, 9]
    assert probs.sum() == pytest.approx(1.0)
    cooler = filtered_probs(log_probs, Sampling(temperature=0.5, top_p=1.0))
    assert cooler[0, 7] > filtered_probs(log_probs, Sampling(temperature=1.0, top_p=1.0))[0, 7]


@pytest.mark.parametrize("arch", ["rnn", "lstm", "gru"])
def test_onnx_generation_equals_torch_greedy_and_sampled(arch: str, tmp_path: Path) -> None:
    model = _lm(arch)
    fit_lm(model, _docs(), _docs(5), 50, replace(CFG, epochs=1))
    export_lm_step(model, tmp_path / "lm.onnx", "ab" * 32)
    onnx = OnnxStepper(tmp_path / "lm.onnx")
    start = prompt_ids([12, 13, 14], "negative")
    guided = Sampling(temperature=0.9, top_p=0.95, guidance=3.0)
    for sampling in (Sampling(top_k=1), Sampling(temperature=0.9, top_p=0.95), guided):
        torch_out = generate(TorchStepper(model), start, 25, 4, sampling, seed=1)
        onnx_out = generate(onnx, start, 25, 4, sampling, seed=1)
        assert [s.ids for s in onnx_out] == [s.ids for s in torch_out]


def test_guidance_moves_away_from_the_neutral_reading_and_stays_a_distribution() -> None:
    model = _lm()
    fit_lm(model, _docs(), _docs(5), 50, replace(CFG, epochs=1))
    inner = TorchStepper(model)
    tokens = np.array([BOS_ID, POSITIVE_ID])
    guided, _ = Guided(inner, 2.0).step(tokens, Guided(inner, 2.0).start(2))
    asked, _ = inner.step(tokens, None)
    plain, _ = inner.step(np.array([BOS_ID, NEUTRAL_ID]), None)
    expected = asked + 2.0 * (asked - plain)
    expected -= np.logaddexp.reduce(expected.astype(np.float64), axis=1, keepdims=True)
    np.testing.assert_allclose(guided, expected, atol=1e-5)
    np.testing.assert_allclose(guided[0], asked[0], atol=1e-5)  # no sentiment read: unchanged
    np.testing.assert_allclose(np.exp(guided).sum(axis=1), 1.0, atol=1e-6)
    start = prompt_ids([10, 11], "positive")
    off = generate(inner, start, 20, 3, Sampling(guidance=0.0), seed=2)
    on = generate(inner, start, 20, 3, Sampling(guidance=5.0), seed=2)
    again = generate(inner, start, 20, 3, Sampling(guidance=5.0), seed=2)
    assert [s.ids for s in on] == [s.ids for s in again] != [s.ids for s in off]
    neutral = prompt_ids([10, 11], "neutral")  # nothing asked: guidance has nothing to push
    assert [s.ids for s in generate(inner, neutral, 20, 3, Sampling(guidance=5.0), seed=2)] == [
        s.ids for s in generate(inner, neutral, 20, 3, Sampling(guidance=0.0), seed=2)
    ]


def test_word_vectors_of_another_shape_are_refused_by_the_language_model() -> None:
    with pytest.raises(UserError, match="set lm.<arch>.model.embed_dim to embeddings.dim"):
        build_lm(_lm().cfg, 0, np.zeros((VOCAB, 5), dtype=np.float32))


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"temperature": 0.0}, "--temperature must be > 0"),
        ({"temperature": -1.0}, "--temperature must be > 0"),
        ({"top_p": 0.0}, r"--top-p must be in \(0, 1\]"),
        ({"top_p": 1.5}, r"--top-p must be in \(0, 1\]"),
        ({"top_k": -1}, "--top-k must be >= 0"),
        ({"guidance": -0.5}, "--guidance must be >= 0"),
    ],
)
def test_bad_sampling_settings_are_refused(change: dict, message: str) -> None:
    with pytest.raises(UserError, match=message):
        Sampling(**change)


def test_an_empty_prompt_starts_from_the_review_start_and_unknown_words_are_refused() -> None:
    assert prompt_ids([], "neutral")[:1] == [BOS_ID]
    with pytest.raises(UserError, match="only words the tokenizer does not know"):
        prompt_ids([UNK_ID, UNK_ID], "positive")


def test_saved_language_model_loads_with_its_identity(tmp_path: Path) -> None:
    from sentiment_rnn.core.lm import save_lm

    model = _lm("gru")
    save_lm(model, tmp_path / "lm.pt", {"tokenizer_sha256": "cd" * 32})
    loaded, info = load_lm(tmp_path / "lm.pt")
    assert info["tokenizer_sha256"] == "cd" * 32 and loaded.cfg == model.cfg
    for k, v in model.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[k], v)


# --- the stages on the tiny project: corpus, language model, generation, pretrained classifier


@pytest.fixture(scope="module")
def lm_project(tokenized_project: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the tiny project after lm_corpus and lm@lstm, as the working directory."""
    from sentiment_rnn.stages import lm, lm_corpus

    root = tmp_path_factory.mktemp("lm") / "p"
    shutil.copytree(tokenized_project, root)
    params = yaml.safe_load((root / "params.yaml").read_text())
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root / 'mlflow.db'}")
        mp.chdir(root)
        lm_corpus.run(params)
        lm.run("lstm", params)
    return root


def test_the_corpus_never_holds_test_or_validation_text(lm_project: Path) -> None:
    import pandas as pd

    from sentiment_rnn.core.lm_data import LMCorpus
    from sentiment_rnn.files import read_json

    meta = read_json(lm_project / "data/lm/meta.json")
    train = pd.read_parquet(lm_project / "data/raw/train.parquet")
    unlabelled = pd.read_parquet(lm_project / "data/raw/unsupervised.parquet")
    assert meta["train_reviews"] == len(train) + len(unlabelled)
    corpus = LMCorpus.load(lm_project / "data/lm/train.npz")
    docs = corpus.docs()
    assert all(d[0] == BOS_ID and d[-1] == EOS_ID for d in docs)
    val = LMCorpus.load(lm_project / "data/lm/val.npz")
    assert len(val) == len(pd.read_parquet(lm_project / "data/raw/val.parquet"))


def test_lm_stage_writes_model_onnx_metrics_and_mlflow_run(lm_project: Path) -> None:
    import mlflow

    from sentiment_rnn.files import read_json

    metrics = read_json(lm_project / "reports/metrics/lm-lstm.json")
    assert metrics["epochs_run"] == 2 and metrics["val_ppl"] > 1 and metrics["val_word_ppl"] > 1
    folder = lm_project / "models/lm-lstm"
    assert {"lm.pt", "lm.onnx", "tokenizer.json", "info.json", "samples.md"} <= {
        p.name for p in folder.iterdir()
    }
    _, info = load_lm(folder / "lm.pt")
    client = mlflow.MlflowClient(f"sqlite:///{lm_project / 'mlflow.db'}")
    run = client.get_run(info["mlflow_run_id"])
    assert [m.step for m in client.get_metric_history(run.info.run_id, "val/ppl")] == [0, 1]
    samples = {a.path for a in client.list_artifacts(run.info.run_id, "samples")}
    assert samples == {"samples/epoch-0.md", "samples/epoch-1.md"}
    logged = {a.path for a in client.list_artifacts(run.info.run_id, "model")}
    assert logged == {f"model/{n}" for n in ("lm.pt", "lm.onnx", "tokenizer.json", "info.json")}


def test_the_lm_stage_run_again_gives_the_same_weights(
    lm_project: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The stage seeds the model's initialisation (torch seeds each process at random)."""
    from sentiment_rnn.stages import lm

    root = tmp_path / "again"
    shutil.copytree(lm_project, root)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root / 'mlflow.db'}")
    monkeypatch.chdir(root)
    torch.manual_seed(12345)  # whatever the process's generator holds must not matter
    lm.run("lstm", yaml.safe_load((root / "params.yaml").read_text()))
    first, _ = load_lm(lm_project / "models/lm-lstm/lm.pt")
    again, _ = load_lm(root / "models/lm-lstm/lm.pt")
    for (name, a), b in zip(first.state_dict().items(), again.state_dict().values(), strict=True):
        assert torch.equal(a, b), name


def test_generate_command_writes_json_lines_with_the_same_text_per_seed(
    lm_project: Path, tmp_path: Path
) -> None:
    import json

    from typer.testing import CliRunner

    from sentiment_rnn.cli import app

    runner = CliRunner()
    out = [tmp_path / f"{i}.jsonl" for i in range(2)]
    for path, model in zip(out, ("lm.pt", "lm.onnx"), strict=True):
        args = ["generate", "--prompt", "The film", "--samples", "3", "--seed", "7",
                "--max-tokens", "12", "--sentiment", "positive", "--model",
                str(lm_project / "models/lm-lstm" / model), "--output", str(path)]  # fmt: skip
        result = runner.invoke(app, args)
        assert result.exit_code == 0, result.output
    rows = [[json.loads(line) for line in p.read_text().splitlines()] for p in out]
    assert [r["text"] for r in rows[0]] == [r["text"] for r in rows[1]]  # torch and onnx
    assert all(r["text"].startswith("the film") and r["sentiment"] == "positive" for r in rows[0])


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--max-tokens", "0"], "--max-tokens must be between 1"),
        (["--max-tokens", "100000"], "--max-tokens must be between 1"),
        (["--temperature", "0"], "--temperature must be > 0"),
        (["--top-p", "1.2"], "--top-p must be in"),
        (["--prompt", "日本語の映画"], "only words the tokenizer does not know"),
        (["--sentiment", "ecstatic"], "--sentiment must be one of"),
        (["--sentiment", "positive", "--steer", "-1"], "--steer must be >= 0"),
    ],
)
def test_generate_refuses_bad_input_in_one_line(
    lm_project: Path, args: list[str], message: str
) -> None:
    import subprocess
    import sys

    model = str(lm_project / "models/lm-lstm/lm.onnx")
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "sentiment_rnn.cli",
            "generate",
            "--model",
            model,
            "--max-tokens",
            "10",
            *args,
        ],  # fmt: skip
        capture_output=True,
        text=True,
    )
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], lines


def test_a_language_model_of_another_tokenizer_is_refused(lm_project: Path, tmp_path: Path) -> None:
    from sentiment_rnn.generate import Request, run_generate

    copy = tmp_path / "lm-lstm"
    shutil.copytree(lm_project / "models/lm-lstm", copy)
    (copy / "tokenizer.json").write_text((copy / "tokenizer.json").read_text() + " ")
    with pytest.raises(UserError, match="is not the one"):
        run_generate(copy / "lm.pt", Request(prompt="a film", max_tokens=10))


def test_generation_steered_by_the_train_lexicon_is_the_same_from_torch_and_onnx(
    lm_project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from sentiment_rnn.generate import Request, run_generate

    monkeypatch.chdir(lm_project)  # the lexicon comes from the project's data/tokens
    folder = lm_project / "models/lm-lstm"
    request = Request(prompt="the film", max_tokens=15, samples=4, seed=5, sentiment="positive")
    plain = run_generate(folder / "lm.pt", replace(request, steer=0.0))
    steered = [run_generate(folder / m, replace(request, steer=4.0)) for m in ("lm.pt", "lm.onnx")]
    assert [s.text for s in steered[0]] == [s.text for s in steered[1]]
    assert [s.text for s in steered[0]] != [s.text for s in plain]


def test_steering_without_its_lexicon_is_refused_when_asked_and_skipped_by_default(
    lm_project: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    from sentiment_rnn import generate as step

    model = lm_project / "models/lm-lstm/lm.pt"
    request = step.Request(max_tokens=5, sentiment="negative")
    monkeypatch.chdir(tmp_path)  # no data/tokens here
    with pytest.raises(UserError, match="run dvc repro tokenize, or pass --steer 0"):
        step.run_generate(model, replace(request, steer=1.0))
    monkeypatch.setattr(step, "DEFAULT_STEER", 1.0)
    assert step.run_generate(model, request)  # the default: generated, not steered
    assert "not steered toward negative" in caplog.text
    shutil.copytree(lm_project / "data/tokens", tmp_path / "data/tokens")
    meta = tmp_path / "data/tokens/meta.json"
    meta.write_text(meta.read_text().replace('"tokenizer_sha256": "', '"tokenizer_sha256": "0'))
    with pytest.raises(UserError, match="another tokenizer than the language model"):
        step.run_generate(model, replace(request, steer=1.0))


def test_a_classifier_starts_from_its_language_model(
    lm_project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each direction of the classifier's first layer and its embedding start as the LM's."""
    from sentiment_rnn.core.model import ModelConfig, SentimentRNN
    from sentiment_rnn.stages.train import start_from_lm

    lm, info = load_lm(lm_project / "models/lm-lstm/lm.pt")
    cfg = ModelConfig(arch="lstm", vocab_size=lm.cfg.vocab_size, embed_dim=16, hidden_size=16)
    classifier = SentimentRNN(cfg)
    monkeypatch.chdir(lm_project)
    start_from_lm(classifier, "lstm", info["tokenizer_sha256"])
    torch.testing.assert_close(classifier.embedding.weight, lm.embedding.weight)
    for direction in (0, 1):
        for name, value in lm.directions[direction].state_dict().items():
            torch.testing.assert_close(classifier.layers[0][direction].state_dict()[name], value)
    with pytest.raises(UserError, match="another tokenizer"):
        start_from_lm(classifier, "lstm", "0" * 64)


def test_the_train_stage_fine_tunes_from_the_lm_and_the_result_exports(
    lm_project: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """End to end on the tiny project: lm@lstm, then train@lstm with `lm_init` and the
    fine-tuning recipe (slanted schedule, discriminative rates, gradual unfreezing), then
    export@lstm: the weights moved from the LM's, and the ONNX graph passes the parity gate."""
    from sentiment_rnn.stages import common, export, train

    root = tmp_path / "p"
    shutil.copytree(lm_project, root)
    monkeypatch.chdir(root)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root / 'mlflow.db'}")
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["train"]["lstm"] |= {
        "lm_init": True, "schedule": "slanted", "discriminative_lr": 2.6,
        "gradual_unfreezing": True, "epochs": 3, "patience": 3,
    }  # fmt: skip
    from sentiment_rnn.core import training

    trained: list[set[str]] = []  # the layer groups with gradients, per epoch

    def freeze(model: torch.nn.Module, cfg: object, epoch: int) -> None:
        freeze_for_epoch(model, cfg, epoch)
        names = [n for n, p in model.named_parameters() if p.requires_grad]
        trained.append({training.layer_group(n) for n in names})

    freeze_for_epoch = training.freeze_for_epoch
    monkeypatch.setattr(training, "freeze_for_epoch", freeze)
    result = train.run("lstm", params)
    assert trained == [{"head"}, {"head", "recurrent"}, {"head", "recurrent", "embedding"}]
    assert [stats.epoch for stats in result.history] == [0, 1, 2]
    lm, _ = load_lm(root / "models/lm-lstm/lm.pt")
    tuned, _ = common.trained_model("lstm")
    # gradual unfreezing: the recurrent layers train from epoch 1, the embedding from epoch 2,
    # so the kept (best-epoch) weights moved from the LM's exactly when that epoch was reached
    recurrent_moved = any(
        not torch.equal(value, lm.directions[0].state_dict()[name])
        for name, value in tuned.layers[0][0].state_dict().items()
    )
    assert recurrent_moved == (result.best_epoch >= 1)
    embedding_moved = not torch.equal(tuned.embedding.weight, lm.embedding.weight)
    assert embedding_moved == (result.best_epoch >= 2)
    parity = export.run("lstm", params)["parity"]
    assert parity["max_abs_diff"] <= parity["tolerance"]
