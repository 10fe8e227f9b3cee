"""What each integration stores, against the tool's own storage, on small real training runs.

- MLflow: two runs each log a 32 MiB checkpoint that differ in 1 MiB; MLflow's file artifact store
  against the cas+file artifact repository.
- Lightning: an MLP (~1.1M parameters, AdamW) trained 5 epochs with ModelCheckpoint(save_top_k=2,
  save_last=True), into a local folder and into runs://.
- transformers: a 4-layer BERT (hidden 128) trained 40 steps with save_steps=10, save_total_limit=2,
  into output_dir alone and with CasCallback.

For each: the bytes the tool wrote over the whole run, what its folder keeps at the end, and for cas
the bytes its puts added (new_bytes) and what the store holds after `cas gc --grace 0` (for Lightning
also after `cas forget --keep-last 1`: writing last.ckpt again is a new version, and every version of
it stays until forgotten).

    python benchmarks/integrations_cost.py [--out results/integrations.json]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

MiB = 1 << 20


def folder_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def store_after_gc(store: str, run: str | None = None) -> int:
    """The store's bytes after `cas gc --grace 0`; with a run, after `cas forget RUN --keep-last 1` first
    (only the latest version of each name, as the tool's folder keeps only the last file of each name)."""
    cas = [sys.executable, "-m", "cas", "--store", store]
    if run is not None:
        subprocess.run([*cas, "forget", run, "--keep-last", "1"], check=True, capture_output=True)
    gc = subprocess.run([*cas, "--json", "gc", "--grace", "0"], check=True, capture_output=True, text=True)
    print(f"[integrations] gc of {store}: {gc.stdout.strip()}", file=sys.stderr)
    return stored(store)


def stored(store: str) -> int:
    """The store's bytes as `cas stats` reports them (a process of its own: it learns what gc did)."""
    out = subprocess.run([sys.executable, "-m", "cas", "--store", store, "--json", "stats"], check=True,
                         capture_output=True, text=True).stdout
    return int(json.loads(out)["stored_bytes"])


def new_bytes(store: str, run: str) -> int:
    from cas import Store
    return sum(v.new_bytes for v in Store.open(store).records.versions(run, live_only=False) if not v.forgotten)


def mlflow_case(work: Path) -> dict:
    os.environ["MLFLOW_ALLOW_FILE_STORE"] = "true"
    os.environ["MLFLOW_TRACKING_URI"] = f"file://{work / 'mlruns'}"
    import mlflow
    first = os.urandom(32 * MiB)
    second = first[:8 * MiB] + os.urandom(MiB) + first[9 * MiB:]
    store = str(work / "mlflow-cas")
    for location in (f"file://{work / 'mlflow-artifacts'}", f"cas+file://{store}"):
        exp = mlflow.create_experiment(location.split("/")[-1], artifact_location=location)
        for data in (first, second):
            (work / "ckpt.bin").write_bytes(data)
            with mlflow.start_run(experiment_id=exp):
                mlflow.log_artifact(str(work / "ckpt.bin"), artifact_path="model")
    return {"tool": "MLflow", "what": "2 runs × 32 MiB checkpoint, 1 MiB apart",
            "tool_written": 64 * MiB, "tool_kept": folder_bytes(work / "mlflow-artifacts"), "cas_stored": stored(store)}


def lightning_case(work: Path) -> dict:
    import lightning
    import torch

    class MLP(lightning.LightningModule):
        def __init__(self):
            super().__init__()
            self.net = torch.nn.Sequential(torch.nn.Linear(256, 1024), torch.nn.ReLU(), torch.nn.Linear(1024, 768),
                                           torch.nn.ReLU(), torch.nn.Linear(768, 1))

        def training_step(self, batch, _):
            return torch.nn.functional.mse_loss(self.net(batch[0]), batch[1])

        def validation_step(self, batch, _):
            self.log("val_loss", torch.nn.functional.mse_loss(self.net(batch[0]), batch[1]))

        def configure_optimizers(self):
            return torch.optim.AdamW(self.parameters(), lr=1e-3)

    gen = torch.Generator().manual_seed(0)
    x = torch.randn(512, 256, generator=gen)
    data = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, x[:, :1] * 2), batch_size=64)
    written = {}
    store = str(work / "lightning-cas")
    os.environ["CAS_STORE"] = store
    saves: list[str] = []

    class Count(lightning.Callback):
        def on_save_checkpoint(self, trainer, pl_module, checkpoint):
            saves.append(str(trainer.default_root_dir))

    for dirpath in (str(work / "lightning-ckpts"), "runs://mlp/ckpts"):
        torch.manual_seed(0)
        before = len(saves)
        cb = lightning.pytorch.callbacks.ModelCheckpoint(dirpath=dirpath, monitor="val_loss", save_top_k=2,
                                                         save_last=True)
        lightning.Trainer(max_epochs=5, callbacks=[cb, Count()], logger=False, enable_progress_bar=False,
                          enable_model_summary=False, accelerator="cpu", devices=1).fit(MLP(), data, data)
        written[dirpath] = len(saves) - before
    one = max(f.stat().st_size for f in (work / "lightning-ckpts").iterdir())
    return {"tool": "Lightning", "what": "MLP, 5 epochs, top 2 + last",
            "tool_written": one * written[str(work / "lightning-ckpts")],
            "tool_kept": folder_bytes(work / "lightning-ckpts"),
            "cas_new_bytes": new_bytes(store, "mlp"), "cas_stored_all_versions": store_after_gc(store),
            "cas_stored": store_after_gc(store, "mlp")}


def transformers_case(work: Path) -> dict:
    import torch
    import transformers

    from tracker.integrations.hf import CasCallback

    class Tokens(torch.utils.data.Dataset):
        def __len__(self):
            return 64

        def __getitem__(self, i):
            gen = torch.Generator().manual_seed(i)
            return {"input_ids": torch.randint(0, 1000, (32,), generator=gen), "labels": torch.tensor(i % 2)}

    store = str(work / "hf-cas")
    kept, saves = {}, 4
    for name, callbacks in (("plain", []), ("cas", [CasCallback(run="bert", store=store)])):
        torch.manual_seed(0)
        config = transformers.BertConfig(vocab_size=1000, hidden_size=128, num_hidden_layers=4, num_attention_heads=4,
                                         intermediate_size=512, max_position_embeddings=64, num_labels=2)
        out = work / f"hf-output-{name}"
        args = transformers.TrainingArguments(output_dir=str(out), save_steps=10, max_steps=40, save_total_limit=2,
                                              per_device_train_batch_size=8, report_to=[], use_cpu=True,
                                              logging_steps=1000, disable_tqdm=True)
        transformers.Trainer(model=transformers.BertForSequenceClassification(config), args=args,
                             train_dataset=Tokens(), callbacks=callbacks).train()
        kept[name] = folder_bytes(out)
    return {"tool": "transformers", "what": "BERT 4×128, 40 steps, save every 10, limit 2",
            "tool_written": saves * kept["plain"] // 2, "tool_kept": kept["plain"],
            "cas_new_bytes": new_bytes(store, "bert"), "cas_stored": store_after_gc(store)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=str(Path(__file__).resolve().parent / "results" / "integrations.json"))
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="cas-integrations-") as tmp:
        os.environ["CAS_CACHE_DIR"] = os.path.join(tmp, "cache")
        results = [case(Path(tmp)) for case in (mlflow_case, lightning_case, transformers_case)]
    Path(args.out).write_text(json.dumps(results, indent=2) + "\n")
    for r in results:
        added = r.get("cas_new_bytes", r["cas_stored"])
        print(f"{r['tool']:<13} {r['what']:<45} written {r['tool_written'] / MiB:7.1f} MiB, kept "
              f"{r['tool_kept'] / MiB:7.1f} MiB; cas new chunks {added / MiB:7.1f} MiB, "
              f"keeps {r['cas_stored'] / MiB:7.1f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
