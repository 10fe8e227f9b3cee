"""transformers' Trainer on a 2-layer BERT made in the test, logging through CasCallback: each saved
checkpoint folder is a version, save_total_limit's rotation is followed, the last restores byte for byte."""

from __future__ import annotations

import filecmp
import os

import pytest
import torch

import tracker
from cas import Store

transformers = pytest.importorskip("transformers")


class _Tokens(torch.utils.data.Dataset):
    def __init__(self, n: int = 32):
        gen = torch.Generator().manual_seed(0)
        self.ids = torch.randint(0, 100, (n, 12), generator=gen)
        self.labels = torch.randint(0, 2, (n,), generator=gen)

    def __len__(self):
        return len(self.ids)

    def __getitem__(self, i):
        return {"input_ids": self.ids[i], "attention_mask": torch.ones(12, dtype=torch.long), "labels": self.labels[i]}


def _trainer(output_dir: str, callback) -> transformers.Trainer:
    config = transformers.BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                     intermediate_size=64, max_position_embeddings=16, num_labels=2)
    torch.manual_seed(0)
    args = transformers.TrainingArguments(output_dir=output_dir, save_steps=5, max_steps=20, save_total_limit=2,
                                          per_device_train_batch_size=4, report_to=[], use_cpu=True,
                                          logging_steps=100, disable_tqdm=True)
    return transformers.Trainer(model=transformers.BertForSequenceClassification(config), args=args,
                                train_dataset=_Tokens(), callbacks=[callback])


def test_save_total_limit_leaves_the_last_two_checkpoints_live_and_the_last_restores(store_dir, tmp_path):
    from tracker.integrations.hf import CasCallback
    out = str(tmp_path / "out")
    _trainer(out, CasCallback(run="bert", store=store_dir)).train()
    store = Store.open(store_dir)
    live = store.records.versions("bert", "checkpoint")
    assert [v.step for v in live] == [15, 20] and all(v.object_type == "tree" for v in live)
    assert sorted(os.listdir(out)) == ["checkpoint-15", "checkpoint-20"]
    dest = tracker.download("runs:/bert/checkpoint@20", tmp_path / "restored", store=store_dir)
    compared = filecmp.dircmp(os.path.join(out, "checkpoint-20"), dest)
    assert compared.left_list == compared.right_list and not compared.diff_files
    assert all(filecmp.cmp(os.path.join(out, "checkpoint-20", f), os.path.join(dest, f), shallow=False)
               for f in compared.common_files)


def test_weights_only_logs_the_weight_files(store_dir, tmp_path):
    from tracker.integrations.hf import CasCallback
    _trainer(str(tmp_path / "out"), CasCallback(run="bert", store=store_dir, weights_only=True)).train()
    store = Store.open(store_dir)
    tree = store.load_manifest(*store.resolve("runs:/bert/checkpoint@20"))
    assert [e.path for e in tree.entries] == ["model.safetensors"]
