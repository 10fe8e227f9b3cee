"""Turn logged Python objects into file bytes by the artifact file's extension: text, dicts, tables, images, arrays.

Optional libraries (numpy, pandas, pyarrow, Pillow, PyYAML) are imported only when a call needs them,
with an install hint when they are missing.
"""

from __future__ import annotations

import io
import json
import struct
import zlib

from cas.errors import InvalidInput


def _need(module: str, package: str, what: str):
    import importlib
    try:
        return importlib.import_module(module)
    except ImportError:
        raise InvalidInput(f"{what} needs {package}: pip install {package}", subject=module) from None


def _ext(artifact_file: str) -> str:
    base = artifact_file.rsplit("/", 1)[-1]
    return base.rsplit(".", 1)[-1].lower() if "." in base else ""


def text_bytes(text: str) -> bytes:
    if not isinstance(text, str):
        raise InvalidInput(f"log_text takes a str, not {type(text).__name__}", subject="text")
    return text.encode("utf-8")


def dict_bytes(obj, artifact_file: str) -> bytes:
    if not isinstance(obj, dict):
        raise InvalidInput(f"log_dict takes a dict, not {type(obj).__name__}", subject=artifact_file)
    if _ext(artifact_file) in ("yaml", "yml"):
        yaml = _need("yaml", "PyYAML", "logging a dict as YAML")
        return yaml.safe_dump(obj, sort_keys=False).encode("utf-8")
    try:
        return (json.dumps(obj, indent=2, default=_json_default) + "\n").encode("utf-8")
    except (TypeError, ValueError) as exc:
        raise InvalidInput(f"cannot write {artifact_file} as JSON: {exc}", subject=artifact_file) from None


def _json_default(value):
    if hasattr(value, "tolist"):  # numpy scalars and arrays
        return value.tolist()
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def _columns(data, artifact_file: str) -> dict[str, list]:
    """A table as an ordered dict of equally long columns (from a pandas DataFrame or a dict of sequences)."""
    if hasattr(data, "to_dict") and hasattr(data, "columns"):
        return {str(c): list(data[c].tolist() if hasattr(data[c], "tolist") else data[c]) for c in data.columns}
    if isinstance(data, dict):
        cols = {str(k): list(v.tolist() if hasattr(v, "tolist") else v) for k, v in data.items()}
        if len({len(v) for v in cols.values()}) > 1:
            raise InvalidInput(f"cannot write table {artifact_file}: columns differ in length", subject=artifact_file)
        return cols
    raise InvalidInput(f"log_table takes a pandas DataFrame or a dict of columns, not {type(data).__name__}",
                       subject=artifact_file)


def table_bytes(data, artifact_file: str) -> bytes:
    ext = _ext(artifact_file)
    if ext == "parquet":
        pa = _need("pyarrow", "pyarrow", "logging a table as parquet")
        pq = _need("pyarrow.parquet", "pyarrow", "logging a table as parquet")
        buf = io.BytesIO()
        pq.write_table(pa.table(_columns(data, artifact_file)), buf)
        return buf.getvalue()
    cols = _columns(data, artifact_file)
    rows = list(zip(*cols.values())) if cols else []
    if ext == "csv":
        import csv
        text = io.StringIO()
        writer = csv.writer(text, lineterminator="\n")
        writer.writerow(cols.keys())
        writer.writerows(rows)
        return text.getvalue().encode("utf-8")
    if ext == "json":  # MLflow's layout: {"columns": [...], "data": [[row], ...]}
        return json.dumps({"columns": list(cols), "data": [list(r) for r in rows]},
                          default=_json_default).encode("utf-8")
    raise InvalidInput(f"cannot write table {artifact_file}: use .json, .csv or .parquet", subject=artifact_file)


def image_bytes(image, artifact_file: str) -> bytes:
    """PNG bytes of a PIL image or a numpy array (H×W gray, H×W×3 RGB, H×W×4 RGBA; uint8, or floats in [0, 1])."""
    if _ext(artifact_file) != "png":
        raise InvalidInput(f"cannot write image {artifact_file}: images are stored as .png", subject=artifact_file)
    if hasattr(image, "save") and hasattr(image, "mode"):  # a PIL image
        buf = io.BytesIO()
        image.save(buf, format="PNG")
        return buf.getvalue()
    np = _need("numpy", "numpy", "logging an image array")
    arr = np.asarray(image)
    if arr.dtype.kind == "f":
        arr = (np.clip(arr, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    if arr.dtype != np.uint8 or arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[2] not in (1, 3, 4)):
        raise InvalidInput(f"cannot write image {artifact_file}: need an H×W, H×W×3 or H×W×4 array of uint8 "
                           f"or floats in [0, 1], got {arr.dtype} {arr.shape}", subject=artifact_file)
    return _png(np.ascontiguousarray(arr.reshape(arr.shape[0], arr.shape[1], -1)))


def _png(arr) -> bytes:
    """A minimal PNG encoder (8-bit gray, RGB or RGBA; filter 0), so numpy images need no Pillow."""
    height, width, channels = arr.shape
    color = {1: 0, 3: 2, 4: 6}[channels]
    raw = b"".join(b"\x00" + arr[y].tobytes() for y in range(height))

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)
    header = struct.pack(">IIBBBBB", width, height, 8, color, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw, 6)) + chunk(b"IEND", b"")


def numpy_bytes(value, artifact_file: str) -> bytes:
    np = _need("numpy", "numpy", "log_numpy")
    ext = _ext(artifact_file)
    buf = io.BytesIO()
    if ext == "npy":
        if isinstance(value, dict):
            raise InvalidInput(f"cannot write a dict of arrays to {artifact_file}: use .npz", subject=artifact_file)
        np.save(buf, np.asarray(value), allow_pickle=False)
    elif ext == "npz":
        arrays = value if isinstance(value, dict) else {"arr_0": value}
        np.savez(buf, **{str(k): np.asarray(v) for k, v in arrays.items()})
    else:
        raise InvalidInput(f"cannot write {artifact_file}: use .npy or .npz", subject=artifact_file)
    return buf.getvalue()
