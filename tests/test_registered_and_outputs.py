"""Seed parity: registered objects (ClearML's register_artifact) logged again when they change, and a
run's outputs folder (Polyaxon's get_outputs_path) logged when the run ends."""

from __future__ import annotations

import io
import os
import shutil

import numpy as np
import pandas as pd
import pytest
from conftest import one_error_line

import tracker
from cas import Store
from cas.errors import CasError, InvalidInput


def _frame(rows: int, start: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(start)
    return pd.DataFrame({"step": np.arange(start, start + rows), "loss": rng.random(rows), "grad": rng.random(rows),
                         "split": np.where(np.arange(start, start + rows) % 3, "train", "val")})


def _read(store: Store, ref: str, fmt: str) -> pd.DataFrame:
    data = io.BytesIO(store.read_bytes(ref))
    return pd.read_parquet(data) if fmt == "parquet" else pd.read_csv(data, index_col=0)


@pytest.mark.parametrize("parquet", [True, False])
def test_a_registered_frame_is_logged_at_each_change(cli, store_dir, parquet, monkeypatch):
    if not parquet:  # as without pyarrow: CSV
        monkeypatch.setattr("tracker.registered.parquet_available", lambda: False)
    df = _frame(1000)
    seen = []
    with tracker.init("r", store=store_dir) as run:
        run.register_artifact("train", df, metadata={"source": "loader"}, interval=3600)
        assert run.registered_artifacts() == {"train": df}
        for k in range(3):
            df.loc[len(df)] = [5000 + k, 0.5, 0.25, "val"]  # appended to
            seen.append(df.copy())
            if k < 2:
                run.sync_registered()  # two syncs in between; the end logs the third
    store = Store.open(store_dir)
    versions = store.records.versions("r", "train")
    fmt = "parquet" if parquet else "csv"
    assert [v.step for v in versions] == [1, 2, 3] and all(v.metadata == {"source": "loader", "format": fmt}
                                                           for v in versions)
    for v, frame in zip(versions, seen):
        got = _read(store, v.uri, fmt)
        pd.testing.assert_frame_equal(got.reset_index(drop=True), frame.reset_index(drop=True), check_dtype=False)
    assert [row["step"] for row in cli("--json", "log", "r").json()] == [1, 2, 3]


def test_a_growing_50_mb_table_costs_only_its_growth(store_dir):
    df = _frame(int(os.environ.get("CAS_TABLE_ROWS", "2400000")))
    store = Store.open(store_dir)
    with tracker.init("grow", store=store) as run:
        run.register_artifact("table", df, interval=3600)
        run.sync_registered()
        size = store.records.versions("grow", "table")[-1].size
        assert size > 48 << 20  # parquet of 2.4M rows: about 50 MB
        before = store.stats()["stored_bytes"]
        for k in range(3):
            df = pd.concat([df, _frame(len(df) // 100, start=10_000_000 * (k + 1))], ignore_index=True)
            run.unregister_artifact("table")
            run.register_artifact("table", df, interval=3600)
            run.sync_registered()
            after = store.stats()["stored_bytes"]
            print(f"[grow] version {k + 2}: {size / 2**20:.1f} MiB table, +{(after - before) / size:.2%} of it stored")
            assert after - before <= 0.05 * size, (k, (after - before) / size)
            before = after
    assert len(store.records.versions("grow", "table")) == 4


def test_a_failed_background_sync_is_raised_by_the_next_call(store_dir, tmp_path):
    run = tracker.init("r", store=store_dir)
    run.register_artifact("cfg", {"a": 1}, interval=0.05)
    shutil.rmtree(store_dir)  # the store is gone: a file where its folder was
    with open(store_dir, "w") as f:
        f.write("not a store")
    deadline = 200
    while run._watcher._error is None and deadline:
        import time
        time.sleep(0.05)
        deadline -= 1
    with pytest.raises(CasError) as raised:
        run.log_text("x", "x.txt")
    assert "\n" not in str(raised.value)
    with pytest.raises(InvalidInput, match="pandas DataFrame, a dict or a numpy array"):
        run.register_artifact("bad", object())


def test_outputs_are_logged_when_the_run_ends_and_unchanged_cost_nothing(cli, store_dir, tmp_path):
    (tmp_path / "report.csv").write_text("a,b\n1,2\n")
    with tracker.init("px", store=store_dir) as run:
        folder = run.outputs_path("model", is_dir=True)
        with open(os.path.join(folder, "weights.bin"), "wb") as f:
            f.write(os.urandom(2 << 20))
        with open(run.outputs_path("notes/summary.txt"), "w") as f:
            f.write("done")
        run.log_artifact(tmp_path / "report.csv", name="report", rel_path="csv_files/new")
        assert run.artifacts_path().endswith(os.path.join("runs", "px"))
    out = tracker.download("runs:/px/outputs", tmp_path / "restored", store=store_dir)
    assert sorted(os.path.relpath(os.path.join(p, f), out) for p, _, fs in os.walk(out) for f in fs) == [
        "csv_files/new/report.csv", "model/weights.bin", "notes/summary.txt"]
    assert open(os.path.join(out, "model", "weights.bin"), "rb").read() == open(
        os.path.join(folder, "weights.bin"), "rb").read()
    counts = lambda: {k: v for k, v in Store.open(store_dir).stats().items() if k in ("chunks", "packs")}  # noqa: E731
    before = counts()
    again = tracker.init("px", store=store_dir)
    again.end()  # a second end with the same files: no new chunks, no new version
    assert counts() == before and before["chunks"] > 0
    assert [v.step for v in Store.open(store_dir).records.versions("px", "outputs")] == [1]
    with pytest.raises(InvalidInput):
        again.outputs_path("../escape")
    r = cli("get", "runs:/px/outputs/model/weights.bin", "-o", str(tmp_path / "w.bin"))
    assert r.code == 0 and (tmp_path / "w.bin").stat().st_size == 2 << 20
    assert one_error_line(cli("get", "runs:/px/outputs/nope", "-o", str(tmp_path / "n")).err)
