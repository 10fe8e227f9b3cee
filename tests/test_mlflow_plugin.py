"""MLflow (the real library, file tracking store) keeping its artifacts in a cas store through the
cas+file artifact repository, registered by entry point: no import or registration in user code."""

from __future__ import annotations

import os

import pytest

from cas import Store

mlflow = pytest.importorskip("mlflow")


@pytest.fixture
def tracking(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"file://{tmp_path / 'mlruns'}")
    yield mlflow.tracking.MlflowClient()
    mlflow.end_run()


def test_two_runs_logging_near_identical_checkpoints_cost_one_plus_the_change(tracking, store_dir, tmp_path):
    exp = mlflow.create_experiment("dedup", artifact_location=f"cas+file://{store_dir}")
    first = os.urandom(32 << 20)
    second = first[:8 << 20] + os.urandom(1 << 20) + first[9 << 20:]
    (tmp_path / "eval").mkdir()
    (tmp_path / "eval" / "scores.json").write_text('{"acc": 0.9}')
    runs = []
    for data in (first, second):
        (tmp_path / "ckpt.bin").write_bytes(data)
        with mlflow.start_run(experiment_id=exp) as run:
            mlflow.log_artifact(str(tmp_path / "ckpt.bin"), artifact_path="model")
            mlflow.log_artifacts(str(tmp_path / "eval"), artifact_path="eval")
            runs.append(run.info.run_id)
    store = Store.open(store_dir)
    assert store.stats()["stored_bytes"] <= 36 << 20
    assert {v.name for v in store.records.versions(runs[1])} == {"model/ckpt.bin", "eval/scores.json"}

    listed = {(f.path, f.is_dir, f.file_size) for f in tracking.list_artifacts(runs[1])}
    assert listed == {("model", True, None), ("eval", True, None)}
    assert [(f.path, f.file_size) for f in tracking.list_artifacts(runs[1], "model")] == [("model/ckpt.bin", 32 << 20)]
    out = tracking.download_artifacts(runs[1], "", str(tmp_path / "down"))
    assert open(os.path.join(out, "model", "ckpt.bin"), "rb").read() == second
    assert open(os.path.join(out, "eval", "scores.json")).read() == '{"acc": 0.9}'

    repo = mlflow.store.artifact.artifact_repository_registry.get_artifact_repository(
        tracking.get_run(runs[0]).info.artifact_uri)
    repo.delete_artifacts("model")
    assert [f.path for f in tracking.list_artifacts(runs[0])] == ["eval"]
    assert [v.name for v in store.records.versions(runs[0])] == ["eval/scores.json"]  # forgotten: gc frees it


def test_artifact_uris_name_the_store_the_run_and_the_path():
    from tracker.integrations.mlflow import split_uri
    run = "0123456789abcdef0123456789abcdef"
    assert split_uri(f"cas+file:///data/store/{run}/artifacts") == ("/data/store", run, "")
    assert split_uri(f"cas+file:/data/store/{run}/artifacts/") == ("/data/store", run, "")
    assert split_uri(f"cas+s3://bucket/team/{run}/artifacts/model/x") == ("s3://bucket/team", run, "model/x")
    with pytest.raises(ValueError, match="not a cas artifact URI"):
        split_uri("s3://bucket/x")
