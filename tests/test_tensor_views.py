"""The tensors of stored checkpoints: `cas show`, `cas diff` by tensor, `cas cat --tensor`,
`tracker.load_tensor` and `tracker.safe_open`, each reading only the chunks it needs."""

from __future__ import annotations

import numpy as np
import torch
from conftest import one_error_line
from safetensors.torch import save_file

import tracker
from cas import Store


def _model_file(path, seed: int = 0, *, changed: tuple[str, ...] = ()) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    tensors = {f"h.{i}.weight": torch.randn(256, 256) * 0.02 for i in range(4)}
    tensors["h.0.bias"] = torch.zeros(256)
    tensors["head"] = (torch.randn(300, 200) * 0.02).to(torch.bfloat16)
    for name in changed:
        tensors[name] = tensors[name].clone()
        tensors[name].view(-1)[:10] += 1  # 10 elements change
    save_file(tensors, path, metadata={"step": str(seed)})
    return tensors


def _bytes(t: torch.Tensor) -> bytes:
    return t.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()


def test_show_lists_every_tensor_with_dtype_and_shape(cli, store_dir, tmp_path):
    tensors = _model_file(tmp_path / "m.safetensors")
    torch.manual_seed(1)
    model = torch.nn.Sequential(torch.nn.Linear(32, 64), torch.nn.LayerNorm(64))
    torch.save({"model": model.state_dict(), "epoch": 2}, tmp_path / "ckpt.pt")
    assert cli("put", str(tmp_path / "m.safetensors"), str(tmp_path / "ckpt.pt")).code == 0
    shown = cli("--json", "show", str(tmp_path / "m.safetensors")).json()
    assert shown["format"] == "safetensors"
    assert {t["name"]: (t["dtype"], tuple(t["shape"])) for t in shown["tensors"]} == \
        {n: ({torch.float32: "F32", torch.bfloat16: "BF16"}[t.dtype], tuple(t.shape)) for n, t in tensors.items()}
    shown = cli("--json", "show", str(tmp_path / "ckpt.pt")).json()
    assert shown["format"] == "torch"
    assert {t["name"]: tuple(t["shape"]) for t in shown["tensors"]} == \
        {f"model.{k}": tuple(v.shape) for k, v in model.state_dict().items()}
    text = cli("show", str(tmp_path / "ckpt.pt")).out
    assert "model.0.weight" in text and "F32" in text and "[64, 32]" in text
    (tmp_path / "notes.txt").write_text("plain text\n")
    cli("put", str(tmp_path / "notes.txt"))
    plain = cli("--json", "show", str(tmp_path / "notes.txt"))
    assert plain.code == 0 and plain.json()["format"] is None and plain.json()["tensors"] == []


def test_diff_names_exactly_the_tensors_whose_bytes_differ(cli, store_dir, tmp_path):
    _model_file(tmp_path / "a.safetensors")
    _model_file(tmp_path / "b.safetensors", changed=("h.2.weight", "head"))
    cli("put", str(tmp_path / "a.safetensors"), str(tmp_path / "b.safetensors"))
    result = cli("--json", "diff", str(tmp_path / "a.safetensors"), str(tmp_path / "b.safetensors")).json()
    changed = {t["name"]: t for t in result["tensors"]}
    assert set(changed) == {"h.2.weight", "head"} and all(t["status"] == "changed" for t in changed.values())
    assert 1 <= changed["h.2.weight"]["changed_bytes"] <= 40 and changed["h.2.weight"]["size"] == 256 * 256 * 4
    text = cli("diff", str(tmp_path / "a.safetensors"), str(tmp_path / "b.safetensors")).out
    assert "2 of 6 tensors differ" in text and "h.2.weight" in text and "h.1.weight" not in text
    # added and removed
    torch.manual_seed(5)
    save_file({"h.0.bias": torch.zeros(256), "new": torch.ones(3)}, tmp_path / "c.safetensors")
    cli("put", str(tmp_path / "c.safetensors"))
    result = cli("--json", "diff", str(tmp_path / "a.safetensors"), str(tmp_path / "c.safetensors")).json()
    status = {t["name"]: t["status"] for t in result["tensors"]}
    assert status == {"new": "added", "h.0.weight": "removed", "h.1.weight": "removed", "h.2.weight": "removed",
                      "h.3.weight": "removed", "head": "removed"}


def test_cat_tensor_load_tensor_and_safe_open_return_exactly_the_tensor(cli, store_dir, tmp_path):
    tensors = _model_file(tmp_path / "m.safetensors")
    cli("put", str(tmp_path / "m.safetensors"))
    ref = str(tmp_path / "m.safetensors")
    got = cli("cat", ref, "--tensor", "h.3.weight")
    assert got.code == 0 and got.raw == _bytes(tensors["h.3.weight"])
    missing = cli("cat", ref, "--tensor", "nope")
    assert missing.code != 0 and one_error_line(missing.err) and "no tensor 'nope'" in missing.err
    store = Store.open(store_dir)
    arr = tracker.load_tensor(ref, "h.1.weight", store=store)
    assert isinstance(arr, np.ndarray) and np.array_equal(arr, tensors["h.1.weight"].numpy())
    head = tracker.load_tensor(ref, "head", store=store)  # BF16: float32 in numpy, exactly
    assert head.dtype == np.float32 and np.array_equal(head, tensors["head"].float().numpy())
    pt = tracker.load_tensor(ref, "head", framework="pt", store=store)
    assert pt.dtype == torch.bfloat16 and torch.equal(pt, tensors["head"])
    with tracker.safe_open(ref, framework="pt", store=store) as f:
        assert sorted(f.keys()) == sorted(tensors) and f.metadata() == {"step": "0"}
        assert torch.equal(f.get_tensor("h.0.bias"), tensors["h.0.bias"])


def test_one_tensor_on_s3_fetches_its_chunks_and_the_header_only(s3_store, tmp_path, monkeypatch):
    monkeypatch.setenv("CAS_CACHE_DIR", str(tmp_path / "cache"))
    tensors = _model_file(tmp_path / "m.safetensors")
    big = {"big": torch.randn(2048, 1024) * 0.02, **tensors}  # 8 MiB: 32 chunks of its own
    save_file(big, tmp_path / "m.safetensors")
    digest = bytes.fromhex(Store.open(s3_store).put_file(tmp_path / "m.safetensors", pin="m").digest)
    store = Store.open(s3_store, cache_dir=str(tmp_path / "reader-cache"))  # another machine
    fetched: list[tuple[str, int]] = []
    real_get = store.backend.get

    def counting_get(key, start=0, end=None):
        data = real_get(key, start, end)
        fetched.append((key, len(data)))
        return data
    monkeypatch.setattr(store.backend, "get", counting_get)
    with tracker.safe_open(digest.hex(), store=store) as f:
        header_end = 8 + int.from_bytes(open(tmp_path / "m.safetensors", "rb").read(8), "little")
        tensor = next(t for t in f._ckpt.tensors if t.name == "h.1.weight")
        assert np.array_equal(f.get_tensor("h.1.weight"), tensors["h.1.weight"].numpy())
    pack_bytes = sum(n for key, n in fetched if key.startswith("packs/"))
    manifest = store.file_manifest(digest)
    offsets = manifest.offsets()
    end = tensor.offset + tensor.size
    needed = {manifest.chunk_id(i) for i in range(len(manifest))  # the header's chunks, then the tensor's
              if offsets[i] < header_end or (offsets[i] < end and offsets[i + 1] > tensor.offset)}
    stored = sum(store.index.chunk(c).stored_len for c in needed) + store.index.manifest(digest).stored_len
    assert pack_bytes == stored, (pack_bytes, stored)  # nothing of the 8 MiB tensor or the others
    assert tensor.size <= 256 * 1024 and header_end < tensor.offset
