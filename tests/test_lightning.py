"""Lightning's ModelCheckpoint writing to runs:// with no Lightning-specific code: checkpoints are
versions, what save_top_k removes is forgotten, and training resumes from the best one."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from cas import Store

lightning = pytest.importorskip("lightning")


class TinyModel(lightning.LightningModule):
    def __init__(self):
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 1))

    def training_step(self, batch, _):
        x, y = batch
        return torch.nn.functional.mse_loss(self.net(x), y)

    def validation_step(self, batch, _):
        x, y = batch
        self.log("val_loss", torch.nn.functional.mse_loss(self.net(x), y))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.05)


def _loader(seed: int):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(64, 8, generator=gen)
    y = x.sum(dim=1, keepdim=True)
    return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=16)


def _trainer(epochs: int, callbacks):
    return lightning.Trainer(max_epochs=epochs, callbacks=callbacks, logger=False, enable_progress_bar=False,
                             enable_model_summary=False, accelerator="cpu", devices=1)


def test_top_2_of_5_epochs_leaves_two_live_versions_and_training_resumes_from_the_best(store_dir, monkeypatch):
    monkeypatch.setenv("CAS_STORE", store_dir)
    torch.manual_seed(0)
    checkpoint = lightning.pytorch.callbacks.ModelCheckpoint(dirpath="runs://exp/ckpts", monitor="val_loss",
                                                             save_top_k=2)
    model = TinyModel()
    _trainer(5, [checkpoint]).fit(model, _loader(0), _loader(1))
    live = Store.open(store_dir).records.versions("exp")
    assert len(live) == 2 and {f"runs://exp/{v.name}" for v in live} == set(checkpoint.best_k_models)
    assert checkpoint.best_model_path.startswith("runs://exp/ckpts/")

    epochs: list[int] = []

    class Epochs(lightning.Callback):
        def on_train_epoch_start(self, trainer, pl_module):
            epochs.append(trainer.current_epoch)

    best = torch.load(Store.open(store_dir).open_file("runs:/exp/" + checkpoint.best_model_path[len("runs://exp/"):]),
                      weights_only=False)
    again = lightning.pytorch.callbacks.ModelCheckpoint(dirpath="runs://exp/resumed", monitor="val_loss",
                                                        save_top_k=1)
    _trainer(6, [again, Epochs()]).fit(TinyModel(), _loader(0), _loader(1), ckpt_path=checkpoint.best_model_path)
    assert epochs == list(range(best["epoch"] + 1, 6))  # went on from the best epoch, not from scratch
    assert len(Store.open(store_dir).records.versions("exp", kind=None)) == 3  # the 2 kept, 1 more


HOLD = """
import os, sys, fsspec
from cas import Store
fs = fsspec.filesystem("runs")
with fs.open("runs://exp/best.ckpt", "rb") as f:
    f.read()
fs.rm("runs://exp/best.ckpt")
print(sorted(p.label for p in Store.open(os.environ["CAS_STORE"]).pins()))
"""


def test_a_version_the_run_read_is_held_until_the_process_exits(store_dir, tmp_path, monkeypatch):
    """What a training process resumed from is pinned when its name is forgotten, and unpinned at exit."""
    monkeypatch.setenv("CAS_STORE", store_dir)
    import fsspec
    with fsspec.open("runs://exp/best.ckpt", "wb") as f:
        f.write(os.urandom(1 << 20))
    out = subprocess.run([sys.executable, "-c", HOLD], capture_output=True, text=True, env=os.environ, check=True)
    assert out.stdout.strip().startswith("['hold/exp/best.ckpt@1/")  # held while the process lived
    store = Store.open(store_dir)
    assert store.records.versions("exp") == [] and store.pins() == []  # released when it ended
