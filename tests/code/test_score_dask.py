"""Sharded scoring on Dask (flows/score.py): outputs equal `predict_file`'s, exactly once.

One local cluster of two process workers serves the whole module (starting one takes seconds
on two cores); its workers keep their loaded models between flow runs, as a long-lived cluster
would, and the records say how often each worker process loaded a model.
"""

from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from flows import score as score_flow
from sentiment_rnn.files import read_json
from sentiment_rnn.serving.model import load_model
from sentiment_rnn.serving.predict import PredictOptions, predict_file
from tests.code.test_predict_flow import prefect_api  # noqa: F401 (a fixture)
from tests.conftest import synthetic_reviews
from tests.model.predict_helpers import CPU_ONE_THREAD, make_model, make_tokenizer

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("prefect_api")]


@pytest.fixture(scope="module")
def cluster() -> Iterator[str]:
    """A local Dask cluster of 2 workers x 1 thread; yields its scheduler address."""
    from distributed import LocalCluster

    with LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None
    ) as local:
        yield local.scheduler_address


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Two tiny GRUs with the same tokenizer and other weights."""
    folder = tmp_path_factory.mktemp("dask-models")
    tokenizer = make_tokenizer(folder / "tokenizer.json")
    first, _ = make_model(folder, tokenizer, "gru", 24, name="first", seed=0)
    second, _ = make_model(folder, tokenizer, "gru", 24, name="second", seed=1)
    return first, second


def inbox(root: Path) -> Path:
    """Four shards of 60 rows in three formats, with ids."""
    folder = root / "inbox"
    folder.mkdir()
    for n in range(4):
        frame = synthetic_reviews(60, seed=10 + n)[["text"]]
        frame.insert(0, "id", [f"s{n}-{i}" for i in range(len(frame))])
        if n == 3:
            frame.to_json(folder / f"shard{n}.jsonl", orient="records", lines=True)
        elif n == 2:
            frame.to_csv(folder / f"shard{n}.csv", index=False)
        else:
            frame.to_parquet(folder / f"shard{n}.parquet", index=False)
    return folder


def run(src: Path | str, out: Path, model: Path, address: str, **kwargs: object) -> object:
    """The flow on the module's cluster; returns its final state."""
    runner = score_flow.dask_runner(address=address)
    flow = score_flow.score_folder.with_options(task_runner=runner)
    return flow(
        str(src), str(out), str(model), id_column="id", threads=1, return_state=True, **kwargs
    )


def scored_names(out: Path) -> list[str]:
    manifest = read_json(out / score_flow.MANIFEST)
    return sorted(e["shard"] for e in manifest["shards"] if e["status"] == "scored")


def test_sharded_outputs_equal_predict_file_and_each_worker_loads_once(
    tmp_path: Path, models: tuple[Path, Path], cluster: str
) -> None:
    src, out = inbox(tmp_path), tmp_path / "out"
    state = run(src, out, models[0], cluster)
    assert state.is_completed(), state.message
    records = state.result()
    assert sorted(r["shard"] for r in records) == [f"shard{n}" for n in range(4)]
    model = load_model(str(models[0]), None, CPU_ONE_THREAD)
    for record in records:
        assert record["rows_in"] == record["rows_out"] == 60
        source = Path(record["input"])
        expected = tmp_path / f"expected-{source.stem}.parquet"
        predict_file(model, source, expected, PredictOptions(id_column="id", progress=False))
        got = pd.read_parquet(out / record["output"])
        pd.testing.assert_frame_equal(got, pd.read_parquet(expected), check_exact=False)
        assert got["id"].is_unique
    workers = {r["worker"] for r in records}
    assert len(workers) == 2  # both workers took shards
    loads: dict[str, set[int]] = {}
    for r in records:
        loads.setdefault(r["worker"], set()).add(r["model_loads"])
    assert all(counts == {1} for counts in loads.values()), loads  # once per worker
    manifest = read_json(out / score_flow.MANIFEST)
    assert manifest["counts"] == {"scored": 4}
    assert {e["model_digest"] for e in manifest["shards"]} == {
        score_flow.identify_model(str(models[0])).digest
    }


def test_rerun_after_a_kill_scores_only_the_unfinished_shard(
    tmp_path: Path, models: tuple[Path, Path], cluster: str
) -> None:
    src, out = inbox(tmp_path), tmp_path / "out"
    assert run(src, out, models[0], cluster).is_completed()
    before = {p.name: p.read_bytes() for p in out.glob("*.predictions.parquet")}
    # A kill while shard1 was written: no output, a temporary file, a record half written.
    (out / "shard1.predictions.parquet").unlink()
    (out / ".shard1.predictions.parquet.abc123.tmp").write_bytes(b"PAR1 partial")
    (out / score_flow.RECORDS / "shard1.json").write_text('{"shard": "shard1", "input_')
    # A kill between shard2's output and its record: the output does not count.
    (out / score_flow.RECORDS / "shard2.json").unlink()
    (out / score_flow.RECORDS / ".shard2.json.xyz.tmp").write_text("{")
    state = run(src, out, models[0], cluster)
    assert state.is_completed(), state.message
    assert scored_names(out) == ["shard1", "shard2"]
    after = {p.name: p.read_bytes() for p in out.glob("*.predictions.parquet")}
    assert after == before  # the same bytes, nothing more
    assert sorted(p.name for p in out.rglob("*.tmp")) == []
    assert run(src, out, models[0], cluster).is_completed()
    assert scored_names(out) == []  # all complete now


def test_a_changed_input_rescores_it_and_a_changed_model_all(
    tmp_path: Path, models: tuple[Path, Path], cluster: str
) -> None:
    src, out = inbox(tmp_path), tmp_path / "out"
    assert run(src, out, models[0], cluster).is_completed()
    frame = pd.read_parquet(src / "shard0.parquet")
    frame.iloc[:30].to_parquet(src / "shard0.parquet", index=False)  # new content
    assert run(src, out, models[0], cluster).is_completed()
    assert scored_names(out) == ["shard0"]
    assert len(pd.read_parquet(out / "shard0.predictions.parquet")) == 30
    first = pd.read_parquet(out / "shard1.predictions.parquet")
    assert run(src, out, models[1], cluster).is_completed()
    assert scored_names(out) == [f"shard{n}" for n in range(4)]
    second = pd.read_parquet(out / "shard1.predictions.parquet")
    assert not first["probability"].equals(second["probability"])  # other weights


def test_a_bad_shard_is_named_and_the_others_finish(
    tmp_path: Path, models: tuple[Path, Path], cluster: str
) -> None:
    src, out = inbox(tmp_path), tmp_path / "out"
    pd.DataFrame({"review": ["no text column here"]}).to_csv(src / "bad.csv", index=False)
    (src / "broken.parquet").write_bytes(b"not parquet at all")
    state = run(src, out, models[0], cluster)
    assert state.is_failed()
    assert "bad.csv" in state.message and "broken.parquet" in state.message
    manifest = read_json(out / score_flow.MANIFEST)
    status = {e["shard"]: e["status"] for e in manifest["shards"]}
    assert status["bad"].startswith("failed:") and "'text'" in status["bad"]
    assert status["broken"].startswith("failed:")
    assert [status[f"shard{n}"] for n in range(4)] == ["scored"] * 4
    assert sorted(p.name for p in out.glob("*.predictions.*")) == [
        f"shard{n}.predictions.parquet" for n in range(4)
    ]


def test_one_parquet_file_is_split_by_row_groups(
    tmp_path: Path, models: tuple[Path, Path], cluster: str
) -> None:
    reviews = synthetic_reviews(100, seed=4)
    table = pa.table({"id": [f"r{i}" for i in range(100)], "text": reviews["text"].tolist()})
    big = tmp_path / "big.parquet"
    pq.write_table(table, big, row_group_size=20)  # 5 row groups
    out = tmp_path / "out"
    state = run(big, out, models[0], cluster, row_groups_per_shard=2)
    assert state.is_completed(), state.message
    names = sorted(r["shard"] for r in state.result())
    assert names == ["big.rg00000-00001", "big.rg00002-00003", "big.rg00004-00004"]
    parts = pd.concat(pd.read_parquet(out / f"{n}.predictions.parquet") for n in names)
    whole = tmp_path / "whole.parquet"
    model = load_model(str(models[0]), None, CPU_ONE_THREAD)
    predict_file(model, big, whole, PredictOptions(id_column="id", progress=False))
    expected = pd.read_parquet(whole)
    pd.testing.assert_frame_equal(parts.reset_index(drop=True), expected, check_exact=False)

    swapped = table.slice(60).take([1, 0, *range(2, 40)])  # rows 60 and 61 change places
    pq.write_table(pa.concat_tables([table.slice(0, 60), swapped]), big, row_group_size=20)
    assert run(big, out, models[0], cluster, row_groups_per_shard=2).is_completed()
    assert scored_names(out) == ["big.rg00002-00003"]  # row group 3 changed, 4 did not


def test_a_registry_alias_is_resolved_once_and_a_moved_alias_rescores(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """In process (the default runner): the registry part is the same on any runner."""
    from sentiment_rnn.tracking import registry, runs
    from tests.code.mlflow_helpers import NAME, URI, tiny_registry

    resolved: list[str] = []
    resolve = registry.resolve_version
    monkeypatch.setattr(
        registry, "resolve_version", lambda uri: resolved.append(uri) or resolve(uri)
    )
    with tiny_registry(tmp_path) as tiny:
        src, out = inbox(tmp_path), tmp_path / "out"
        records = score_flow.score_folder(str(src), str(out), URI, id_column="id")
        assert resolved == [URI]  # once for the run, not once per shard
        assert {r["model"] for r in records} == {f"models:/{NAME}/{tiny.version}"}
        assert len(records) == 4
        # A new version takes the alias: every shard is rescored with it.
        onnx_file, _ = make_model(tmp_path / "v2", tiny.tokenizer, "gru", 12, name="gru", seed=5)
        with runs.start_run("text-model", "gru v2", {"arch": "gru"}):
            runs.log_metrics({"best_val_acc": 0.9})
            version = registry.log_text_model(
                onnx_file, tmp_path / "v2/gru.tokenizer.json", NAME, {"arch": "gru", "v": "2"}
            )
        assert registry.update_champion(NAME) == version != tiny.version
        again = score_flow.score_folder(str(src), str(out), URI, id_column="id")
        assert {r["model"] for r in again} == {f"models:/{NAME}/{version}"}
        assert scored_names(out) == [f"shard{n}" for n in range(4)]


def test_the_command_line_scores_on_an_existing_cluster_by_its_address(
    tmp_path: Path, models: tuple[Path, Path], cluster: str
) -> None:
    """`python flows/score.py --address ADDR`: the user's way onto a running cluster."""
    src, out = inbox(tmp_path), tmp_path / "out"
    score_flow.main(
        ["--input-dir", str(src), "--output-dir", str(out), "--model", str(models[0]),
         "--id-column", "id", "--address", cluster]
    )  # fmt: skip
    manifest = read_json(out / score_flow.MANIFEST)
    assert manifest["counts"] == {"scored": 4}
    assert {e["rows_in"] for e in manifest["shards"]} == {60}
    workers = {record["worker"] for record in map(read_json, (out / "_records").glob("*.json"))}
    assert len(workers) == 2  # the cluster's own workers scored them, not this process


def test_workers_and_address_together_are_refused_in_one_line() -> None:
    from sentiment_rnn.errors import UserError

    with pytest.raises(UserError, match="--workers .* or --address"):
        score_flow.dask_runner(workers=2, address="tcp://127.0.0.1:8786")
