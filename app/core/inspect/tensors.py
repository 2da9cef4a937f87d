"""Tensors of a model read from their files, one chunk at a time, without loading the model.

A :class:`TensorSet` lists the tensors of a safetensors file, an HF folder (all its
safetensors shards), a LoRA adapter folder or a GGUF file, from the headers only
(``app.core.models.metadata`` parses and bounds-checks them; nothing here trusts a
header it did not check). :meth:`TensorSet.chunks` yields a tensor as float32 rows,
a few million values at a time: each chunk maps only its own byte range of the file
(``numpy.memmap``) and unmaps it after, so the resident memory stays at one chunk
whatever the size of the model. GGUF blocks are dequantized with the ``gguf``
package's numpy code. Never pickle, never torch.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from app.core.models.metadata import (
    InvalidModelError,
    is_gguf_file,
    read_gguf_header,
    read_safetensors_header,
    safetensors_files,
)

#: Values per chunk (16 MiB of float32): the unit of reading, statistics and memory.
CHUNK_VALUES = 4 * 1024 * 1024

#: safetensors dtype -> (numpy dtype of the stored values, bytes per value).
_ST_DTYPES: dict[str, tuple[str, int]] = {
    "F64": ("<f8", 8),
    "F32": ("<f4", 4),
    "F16": ("<f2", 2),
    "BF16": ("<u2", 2),  # converted by shifting into the high half of a float32
    "I64": ("<i8", 8),
    "I32": ("<i4", 4),
    "I16": ("<i2", 2),
    "I8": ("i1", 1),
    "U8": ("u1", 1),
    "BOOL": ("u1", 1),
}


@dataclass(frozen=True)
class TensorInfo:
    """One tensor as its file's header describes it."""

    name: str
    shape: tuple[int, ...]  # numpy order (outermost first), for GGUF too
    dtype: str  # safetensors dtype ("BF16") or GGUF type name ("Q4_K")
    nbytes: int
    file: Path
    offset: int  # absolute byte offset of the data in ``file``

    @property
    def n_elements(self) -> int:
        return math.prod(self.shape)

    @property
    def row_length(self) -> int:
        """Values per row: the innermost dimension (1 for a scalar)."""
        return self.shape[-1] if self.shape else 1

    @property
    def n_rows(self) -> int:
        return self.n_elements // self.row_length if self.row_length else 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "shape": list(self.shape),
            "dtype": self.dtype,
            "n_elements": self.n_elements,
            "nbytes": self.nbytes,
            "file": self.file.name,
        }


class UnsupportedTensorError(InvalidModelError):
    """A tensor's type cannot be read as numbers here (for example an FP8 or IQ type)."""


class TensorSet:
    """The tensors of one model (file or folder), by name, in file order."""

    def __init__(self, path: Path, kind: str, tensors: list[TensorInfo], meta: dict[str, Any]):
        self.path = path
        self.kind = kind  # 'safetensors' | 'gguf'
        self.tensors = tensors
        self.meta = meta  # GGUF key/values, or the safetensors __metadata__ of the first file
        self._by_name = {t.name: t for t in tensors}
        #: Values per chunk read by :meth:`chunks` (tests lower it to exercise chunking).
        self.chunk_values = CHUNK_VALUES

    def __len__(self) -> int:
        return len(self.tensors)

    def __contains__(self, name: object) -> bool:
        return name in self._by_name

    def get(self, name: str) -> TensorInfo:
        return self._by_name[name]

    @property
    def files(self) -> list[Path]:
        return sorted({t.file for t in self.tensors})

    # -- reading ---------------------------------------------------------------------

    def rows_per_chunk(self, info: TensorInfo, values: int | None = None) -> int:
        return max(1, (values or self.chunk_values) // max(1, info.row_length))

    def read_rows(self, info: TensorInfo, start: int, count: int) -> np.ndarray:
        """Rows ``start .. start+count`` of ``info`` as a float32 array (count, row_length)."""
        if self.kind == "gguf":
            return _read_gguf_rows(info, start, count)
        return _read_st_rows(info, start, count)

    def chunks(self, info: TensorInfo, values: int | None = None) -> Iterator[np.ndarray]:
        """The tensor as consecutive float32 row blocks of about ``values`` values each."""
        step = self.rows_per_chunk(info, values)
        for start in range(0, info.n_rows, step):
            yield self.read_rows(info, start, min(step, info.n_rows - start))

    def read(self, info: TensorInfo) -> np.ndarray:
        """The whole tensor as float32 in its numpy shape (for small tensors and LoRA factors)."""
        return self.read_rows(info, 0, info.n_rows).reshape(info.shape)


def _map(info: TensorInfo, byte_start: int, nbytes: int, dtype: str) -> np.ndarray:
    if nbytes == 0:
        return np.zeros(0, dtype=dtype)
    return np.memmap(
        info.file,
        dtype=dtype,
        mode="r",
        offset=info.offset + byte_start,
        shape=(nbytes // np.dtype(dtype).itemsize,),
    )


def _read_st_rows(info: TensorInfo, start: int, count: int) -> np.ndarray:
    try:
        np_dtype, width = _ST_DTYPES[info.dtype]
    except KeyError:
        raise UnsupportedTensorError(
            f"Tensor {info.name!r} has type {info.dtype}, which the inspector cannot read.",
            "Its shape and size are shown; statistics skip it.",
        ) from None
    row = info.row_length
    raw = _map(info, start * row * width, count * row * width, np_dtype)
    if info.dtype == "BF16":
        out = (raw.astype(np.uint32) << 16).view(np.float32)
    elif info.dtype == "F32":
        # No copy: a view of this chunk's own mapping, unmapped when the chunk is dropped.
        out = np.asarray(raw).view(np.float32)
    else:
        out = raw.astype(np.float32)
    del raw
    return out.reshape(count, row)


def _read_gguf_rows(info: TensorInfo, start: int, count: int) -> np.ndarray:
    import gguf

    qtype = gguf.GGMLQuantizationType[info.dtype]
    block, type_size = gguf.GGML_QUANT_SIZES[qtype]
    row = info.row_length
    if row % block:
        raise InvalidModelError(
            f"Tensor {info.name!r} has rows of {row} values, not a multiple of {block} ({info.dtype})."
        )
    row_bytes = row // block * type_size
    raw = _map(info, start * row_bytes, count * row_bytes, "u1").reshape(count, row_bytes)
    try:
        if qtype == gguf.GGMLQuantizationType.F32:
            out = np.array(raw.view(np.float32))
        else:
            out = gguf.quants.dequantize(np.asarray(raw), qtype)
    except NotImplementedError:
        raise UnsupportedTensorError(
            f"Tensor {info.name!r} has type {info.dtype}, which gguf cannot dequantize.",
            "Its shape and size are shown; statistics skip it.",
        ) from None
    finally:
        del raw
    return np.asarray(out, dtype=np.float32).reshape(count, row)


# -- opening ---------------------------------------------------------------------------


def _st_tensors(path: Path) -> tuple[list[TensorInfo], dict[str, Any]]:
    header = read_safetensors_header(path)
    with open(path, "rb") as fh:
        data_start = 8 + struct.unpack("<Q", fh.read(8))[0]
    out: list[TensorInfo] = []
    meta = header.get("__metadata__") if isinstance(header.get("__metadata__"), dict) else {}
    for name, item in header.items():
        if name == "__metadata__":
            continue
        shape = item.get("shape") if isinstance(item, dict) else None
        dtype = item.get("dtype") if isinstance(item, dict) else None
        if not (
            isinstance(shape, list)
            and len(shape) <= 8
            and all(isinstance(d, int) and 0 <= d < 2**48 for d in shape)
            and isinstance(dtype, str)
        ):
            raise InvalidModelError(
                f"{path} is damaged: tensor {name!r} has an invalid shape or dtype.",
                "Re-download or re-export the file.",
            )
        begin, end = (int(v) for v in item["data_offsets"])
        width = _ST_DTYPES.get(dtype, ("", 0))[1]
        if begin < 0 or end < begin or (width and end - begin != math.prod(shape) * width):
            raise InvalidModelError(
                f"{path} is damaged: tensor {name!r} claims {end - begin} bytes for shape "
                f"{shape} of {dtype}.",
                "Re-download or re-export the file.",
            )
        out.append(TensorInfo(name, tuple(shape), dtype, end - begin, path, data_start + begin))
    out.sort(key=lambda t: t.offset)
    return out, dict(meta or {})


def _gguf_tensors(path: Path) -> tuple[list[TensorInfo], dict[str, Any]]:
    kv, raw = read_gguf_header(path)  # checked: every tensor lies inside the file
    alignment = int(kv.get("general.alignment", 32) or 32)
    data_start = -(-_gguf_header_end(path) // alignment) * alignment
    out = [
        TensorInfo(
            t["name"],
            tuple(reversed(t["shape"])),
            t["type_name"],
            int(t["nbytes"]),
            path,
            data_start + int(t["offset"]),
        )
        for t in raw
    ]
    out.sort(key=lambda t: t.offset)
    return out, kv


def _gguf_header_end(path: Path) -> int:
    """Byte offset just past the last tensor info of a GGUF file ``read_gguf_header`` accepted."""
    import mmap

    from app.core.models.metadata import _Cursor, _read_value

    with open(path, "rb") as fh, mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as buf:
        cur = _Cursor(buf, len(buf))
        cur.pos = 4
        version = int(cur.take("I"))
        if version & 0xFFFF == 0 and version > 0xFFFF:  # written big-endian
            cur.endian = ">"
        n_tensors = int(cur.take("Q"))
        n_kv = int(cur.take("Q"))
        for _ in range(n_kv):
            cur.string(keep=False)
            _read_value(cur, int(cur.take("I")), keep=False)
        for _ in range(n_tensors):
            cur.string(keep=False)
            n_dims = int(cur.take("I"))
            cur.pos += 8 * n_dims + 4 + 8  # dims, type, offset
        return cur.pos


def open_tensors(path: str | Path) -> TensorSet:
    """The tensors of a GGUF file, a safetensors file, or an HF model / LoRA adapter folder."""
    p = Path(path)
    if p.is_dir():
        files = safetensors_files(p)
        if not files:
            files = safetensors_files(p, prefix="adapter_")
        if not files:
            raise InvalidModelError(
                f"{p} has no .safetensors weights to inspect.",
                "Only safetensors and GGUF weights are read (pickle checkpoints never are).",
            )
        tensors: list[TensorInfo] = []
        meta: dict[str, Any] = {}
        for f in files:
            ts, m = _st_tensors(f)
            tensors.extend(ts)
            meta = meta or m
        return TensorSet(p, "safetensors", tensors, meta)
    if not p.is_file():
        raise InvalidModelError(f"There is no model at {p}.")
    if is_gguf_file(p):
        ts, kv = _gguf_tensors(p)
        return TensorSet(p, "gguf", ts, kv)
    if p.suffix == ".safetensors":
        ts, m = _st_tensors(p)
        return TensorSet(p, "safetensors", ts, m)
    raise InvalidModelError(
        f"{p} is neither a GGUF nor a safetensors file.",
        "Inspect a .gguf file, a .safetensors file or a Hugging Face model folder.",
    )
