"""Model metadata read from files without loading weights: GGUF headers, HF folders, safetensors.

GGUF headers are parsed here with ``struct`` over an ``mmap`` (types and quant
sizes come from the ``gguf`` package). ``gguf.GGUFReader`` decodes every
tokenizer array element by element, which takes many seconds for a 262k-token
vocabulary; this reader skips them and also checks that the tensor data the
header promises is really in the file, so a truncated download is caught.
"""

from __future__ import annotations

import json
import mmap
import re
import struct
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from app.core.errors import DemoAIError

GGUF_MAGIC = b"GGUF"
SAFETENSORS_EXT = ".safetensors"
#: Largest safetensors JSON header we accept (the format caps it at 100 MB).
_MAX_ST_HEADER = 100 * 1024 * 1024
#: GGUF arrays longer than this are summarised by their length only.
_MAX_KEPT_ARRAY = 64


class InvalidModelError(DemoAIError):
    """A model file or folder is damaged, incomplete or not a model."""


@dataclass
class ModelMetadata:
    """What the registry records about a model, read from its files."""

    format: str  # 'hf' | 'gguf' | 'lora'
    name: str | None = None
    architecture: str | None = None
    parameters: int | None = None
    quantization: str | None = None
    context_length: int | None = None
    license: str | None = None
    chat_template: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def has_chat_template(self) -> bool:
        """True when the model ships a chat template."""
        return bool(self.chat_template)

    def to_dict(self) -> dict[str, Any]:
        """Plain dict for JSON."""
        return {**asdict(self), "has_chat_template": self.has_chat_template}


# -- GGUF ------------------------------------------------------------------------------


def is_gguf_file(path: str | Path) -> bool:
    """True when ``path`` is a file starting with the GGUF magic bytes (any extension)."""
    p = Path(path)
    try:
        with open(p, "rb") as fh:
            return fh.read(4) == GGUF_MAGIC
    except OSError:
        return False


class _Truncated(Exception):
    pass


class _Cursor:
    """Reads little- or big-endian GGUF values from a buffer, raising on overrun."""

    def __init__(self, buf: Any, size: int) -> None:
        self.buf = buf
        self.size = size
        self.pos = 0
        self.endian = "<"

    def take(self, fmt: str) -> Any:
        n = struct.calcsize(fmt)
        if self.pos + n > self.size:
            raise _Truncated
        value = struct.unpack_from(self.endian + fmt, self.buf, self.pos)[0]
        self.pos += n
        return value

    def string(self, keep: bool = True) -> str:
        n = int(self.take("Q"))
        if self.pos + n > self.size:
            raise _Truncated
        raw = bytes(self.buf[self.pos : self.pos + n]) if keep else b""
        self.pos += n
        return raw.decode("utf-8", errors="replace")


_SCALAR_FMT = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q"}
_SCALAR_FMT[12] = "d"
_STRING, _ARRAY = 8, 9


def _read_value(cur: _Cursor, vtype: int, keep: bool = True) -> Any:
    if vtype in _SCALAR_FMT:
        return cur.take(_SCALAR_FMT[vtype])
    if vtype == _STRING:
        return cur.string(keep)
    if vtype == _ARRAY:
        itype = int(cur.take("I"))
        count = int(cur.take("Q"))
        if count > cur.size:  # every item takes at least one byte
            raise _Truncated
        keep_items = keep and count <= _MAX_KEPT_ARRAY
        if itype in _SCALAR_FMT and not keep_items:
            width = struct.calcsize(_SCALAR_FMT[itype])
            if cur.pos + width * count > cur.size:
                raise _Truncated
            cur.pos += width * count
            return {"array_length": count}
        items = [_read_value(cur, itype, keep_items) for _ in range(count)]
        return items if keep_items else {"array_length": count}
    raise ValueError(f"unknown GGUF value type {vtype}")


def _gguf_error(path: Path, why: str) -> InvalidModelError:
    return InvalidModelError(
        f"{path} is not a valid GGUF file ({why}).",
        "The file is probably incomplete or damaged: re-download it (or copy it again) "
        "and check its size and sha256 against the source.",
    )


def read_gguf_header(path: str | Path) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The key/value metadata and tensor infos of a GGUF file; InvalidModelError if damaged.

    Large arrays (the tokenizer's vocabulary) are summarised as ``{"array_length": n}``.
    Each tensor info has ``name``, ``shape``, ``type``, ``n_elements``, ``nbytes``, ``offset``.
    """
    import gguf

    p = Path(path)
    try:
        size = p.stat().st_size
        fh = open(p, "rb")
    except OSError as exc:
        raise InvalidModelError(f"Cannot read {p}: {exc.strerror or exc}.") from exc
    with fh:
        if size < 24 or fh.read(4) != GGUF_MAGIC:
            raise _gguf_error(p, "it does not start with the GGUF magic bytes")
        with mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as buf:
            cur = _Cursor(buf, size)
            cur.pos = 4
            try:
                version = int(cur.take("I"))
                if version & 0xFFFF == 0 and version > 0xFFFF:  # written big-endian
                    cur.endian = ">"
                    cur.pos = 4
                    version = int(cur.take("I"))
                if version not in (2, 3):
                    raise _gguf_error(p, f"unsupported GGUF version {version}")
                n_tensors = int(cur.take("Q"))
                n_kv = int(cur.take("Q"))
                if n_tensors > size or n_kv > size:
                    raise _gguf_error(p, "the header counts are impossible")
                kv: dict[str, Any] = {}
                for _ in range(n_kv):
                    key = cur.string()
                    vtype = int(cur.take("I"))
                    kv[key] = _read_value(cur, vtype)
                tensors: list[dict[str, Any]] = []
                for _ in range(n_tensors):
                    name = cur.string()
                    n_dims = int(cur.take("I"))
                    if n_dims > 8:
                        raise _gguf_error(p, f"tensor {name!r} has {n_dims} dimensions")
                    shape = [int(cur.take("Q")) for _ in range(n_dims)]
                    ttype = int(cur.take("I"))
                    offset = int(cur.take("Q"))
                    tensors.append({"name": name, "shape": shape, "type": ttype, "offset": offset})
            except _Truncated:
                raise _gguf_error(p, "the file ends inside its header") from None
            except (ValueError, UnicodeDecodeError) as exc:
                raise _gguf_error(p, f"unreadable header: {exc}") from None
            alignment = int(kv.get("general.alignment", 32) or 32)
            data_start = -(-cur.pos // alignment) * alignment
    end = data_start
    for t in tensors:
        n = 1
        for d in t["shape"]:
            n *= d
        t["n_elements"] = n
        try:
            qtype = gguf.GGMLQuantizationType(t["type"])
            block, type_size = gguf.GGML_QUANT_SIZES[qtype]
        except (ValueError, KeyError):
            raise _gguf_error(p, f"tensor {t['name']!r} has unknown type {t['type']}") from None
        t["type_name"] = qtype.name
        t["nbytes"] = n // block * type_size
        end = max(end, data_start + t["offset"] + t["nbytes"])
    if end > size:
        raise _gguf_error(
            p, f"the header promises {end:,} bytes of tensor data but the file has {size:,} bytes"
        )
    return kv, tensors


def _as_int(value: Any) -> int | None:
    return int(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def gguf_quantization_name(file_type: int | None, tensors: list[dict[str, Any]]) -> str | None:
    """``general.file_type`` as a name such as ``Q4_K_M``; else the most common tensor type."""
    import gguf

    if file_type is not None:
        try:
            name = gguf.LlamaFileType(file_type).name
        except ValueError:
            name = None
        if name:
            return name.removeprefix("MOSTLY_").removeprefix("ALL_")
    counts: dict[str, int] = {}
    for t in tensors:
        counts[t["type_name"]] = counts.get(t["type_name"], 0) + t["n_elements"]
    return max(counts, key=lambda k: counts[k]) if counts else None


def read_gguf_metadata(path: str | Path) -> ModelMetadata:
    """Architecture, parameters, quantization, context, license and chat template of a GGUF file."""
    kv, tensors = read_gguf_header(path)
    arch = kv.get("general.architecture")
    arch = arch if isinstance(arch, str) else None
    template = kv.get("tokenizer.chat_template")
    license_ = kv.get("general.license")
    name = kv.get("general.name")
    extra: dict[str, Any] = {
        "tensor_count": len(tensors),
        "file_type": _as_int(kv.get("general.file_type")),
        "size_label": kv.get("general.size_label"),
        "tokenizer_model": kv.get("tokenizer.ggml.model"),
    }
    if arch:
        for key in ("block_count", "embedding_length", "attention.head_count"):
            if f"{arch}.{key}" in kv:
                extra[key.replace(".", "_")] = _as_int(kv[f"{arch}.{key}"])
    extra = {k: v for k, v in extra.items() if v is not None}
    return ModelMetadata(
        format="gguf",
        name=name if isinstance(name, str) else None,
        architecture=arch,
        parameters=sum(int(t["n_elements"]) for t in tensors),
        quantization=gguf_quantization_name(_as_int(kv.get("general.file_type")), tensors),
        context_length=_as_int(kv.get(f"{arch}.context_length")) if arch else None,
        license=license_ if isinstance(license_, str) else None,
        chat_template=template if isinstance(template, str) and template.strip() else None,
        extra=extra,
    )


# -- safetensors -----------------------------------------------------------------------


def read_safetensors_header(path: str | Path) -> dict[str, Any]:
    """The JSON header of a safetensors file (tensor name -> dtype, shape, offsets)."""
    p = Path(path)
    try:
        size = p.stat().st_size
        with open(p, "rb") as fh:
            raw_len = fh.read(8)
            if len(raw_len) < 8:
                raise InvalidModelError(f"{p} is not a valid safetensors file (too short).")
            n = struct.unpack("<Q", raw_len)[0]
            if n > min(_MAX_ST_HEADER, size - 8):
                raise InvalidModelError(
                    f"{p} is not a valid safetensors file (header length {n} is impossible).",
                    "Re-download or re-export the file.",
                )
            header = json.loads(fh.read(n))
    except OSError as exc:
        raise InvalidModelError(f"Cannot read {p}: {exc.strerror or exc}.") from exc
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InvalidModelError(
            f"{p} is not a valid safetensors file (unreadable header).",
            "Re-download or re-export the file.",
        ) from exc
    if not isinstance(header, dict):
        raise InvalidModelError(f"{p} is not a valid safetensors file (header is not an object).")
    data_len = size - 8 - n
    for name, info in header.items():
        if name == "__metadata__":
            continue
        offsets = info.get("data_offsets") if isinstance(info, dict) else None
        if not (isinstance(offsets, list) and len(offsets) == 2 and offsets[1] <= data_len):
            raise InvalidModelError(
                f"{p} is truncated or damaged (tensor {name!r} lies outside the file).",
                "Re-download or re-export the file.",
            )
    return header


def safetensors_parameter_count(paths: list[Path]) -> tuple[int, dict[str, int]]:
    """Total tensor elements over safetensors files, and element counts by dtype."""
    total = 0
    by_dtype: dict[str, int] = {}
    for path in paths:
        for name, info in read_safetensors_header(path).items():
            if name == "__metadata__":
                continue
            n = 1
            for d in info.get("shape", []):
                n *= int(d)
            total += n
            dtype = str(info.get("dtype", "?"))
            by_dtype[dtype] = by_dtype.get(dtype, 0) + n
    return total, by_dtype


def safetensors_files(folder: Path, prefix: str = "") -> list[Path]:
    """The safetensors weight files of a folder; those listed by an index file when there is one."""
    for index_name in (f"{prefix}model.safetensors.index.json", "model.safetensors.index.json"):
        index = folder / index_name
        if index.is_file():
            try:
                weight_map = json.loads(index.read_text("utf-8")).get("weight_map", {})
            except (OSError, json.JSONDecodeError) as exc:
                raise InvalidModelError(f"{index} is not valid JSON: {exc}.") from exc
            names = sorted(set(weight_map.values()))
            missing = [n for n in names if not (folder / n).is_file()]
            if missing:
                raise InvalidModelError(
                    f"{folder} is incomplete: shards listed in {index.name} are missing "
                    f"({', '.join(missing[:5])}).",
                    "Download the missing files, then import again.",
                )
            return [folder / n for n in names]
    return sorted(p for p in folder.glob(f"{prefix}*{SAFETENSORS_EXT}") if p.is_file())


# -- HF folders ------------------------------------------------------------------------


def _load_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text("utf-8"))
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InvalidModelError(f"{path} is not valid JSON: {exc}.") from exc
    if not isinstance(data, dict):
        raise InvalidModelError(f"{path} does not hold a JSON object.")
    return data


_FRONT_MATTER = re.compile(r"\A---\s*\n(.*?)\n---\s*(\n|\Z)", re.S)


def readme_license(folder: Path) -> str | None:
    """``license:`` (or ``license_name:``) from the YAML front matter of README.md."""
    readme = folder / "README.md"
    if not readme.is_file():
        return None
    try:
        text = readme.read_text("utf-8", errors="replace")[:65536]
    except OSError:
        return None
    m = _FRONT_MATTER.match(text)
    if not m:
        return None
    found: dict[str, str] = {}
    for line in m.group(1).splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip() in ("license", "license_name") and value.strip():
            found[key.strip()] = value.strip().strip("'\"")
    lic = found.get("license")
    if lic == "other" and "license_name" in found:
        return found["license_name"]
    return lic


def read_chat_template(folder: Path) -> tuple[str | None, dict[str, str]]:
    """The default chat template of an HF folder and any named extra templates."""
    named: dict[str, str] = {}
    jinja = folder / "chat_template.jinja"
    if jinja.is_file():
        return jinja.read_text("utf-8"), named
    cj = folder / "chat_template.json"
    if cj.is_file():
        tmpl = _load_json(cj).get("chat_template")
        if isinstance(tmpl, str) and tmpl.strip():
            return tmpl, named
    tc = folder / "tokenizer_config.json"
    if tc.is_file():
        tmpl = _load_json(tc).get("chat_template")
        if isinstance(tmpl, str) and tmpl.strip():
            return tmpl, named
        if isinstance(tmpl, list):  # [{"name": ..., "template": ...}, ...]
            for item in tmpl:
                if isinstance(item, dict) and isinstance(item.get("template"), str):
                    named[str(item.get("name", "default"))] = item["template"]
            default = named.pop("default", None)
            return default, named
    return None, named


def _text_config(cfg: dict[str, Any]) -> dict[str, Any]:
    sub = cfg.get("text_config")
    return sub if isinstance(sub, dict) else {}


def read_hf_metadata(folder: str | Path) -> ModelMetadata:
    """Metadata of an HF model or LoRA adapter folder, weights untouched (headers only)."""
    d = Path(folder)
    if (d / "adapter_config.json").is_file():
        return _read_adapter_metadata(d)
    cfg_path = d / "config.json"
    if not cfg_path.is_file():
        raise InvalidModelError(
            f"{d} has no config.json, so it is not a Hugging Face model folder.",
            "Choose the folder that holds config.json and the weights, or import a .gguf file.",
        )
    cfg = _load_json(cfg_path)
    text = _text_config(cfg)
    files = safetensors_files(d)
    params, by_dtype = safetensors_parameter_count(files) if files else (None, {})
    ctx_len = None
    for key in ("max_position_embeddings", "n_positions", "max_seq_len", "seq_length"):
        ctx_len = _as_int(cfg.get(key)) or _as_int(text.get(key))
        if ctx_len:
            break
    qcfg = cfg.get("quantization_config")
    quant = None
    if isinstance(qcfg, dict):
        quant = str(qcfg.get("quant_method") or "quantized")
        if qcfg.get("load_in_4bit"):
            quant += "-4bit"
        elif qcfg.get("load_in_8bit"):
            quant += "-8bit"
        elif qcfg.get("bits"):
            quant += f"-{qcfg['bits']}bit"
    template, named = read_chat_template(d)
    archs = cfg.get("architectures")
    dtype = cfg.get("torch_dtype") or cfg.get("dtype") or text.get("torch_dtype")
    extra: dict[str, Any] = {
        "architectures": archs if isinstance(archs, list) else [],
        "dtype": dtype if isinstance(dtype, str) else None,
        "weights": [p.name for p in files],
        "tensor_dtypes": by_dtype,
        "vocab_size": _as_int(cfg.get("vocab_size")) or _as_int(text.get("vocab_size")),
    }
    if named:
        extra["named_chat_templates"] = named
    model_type = cfg.get("model_type")
    return ModelMetadata(
        format="hf",
        name=d.name,
        architecture=model_type if isinstance(model_type, str) else None,
        parameters=params,
        quantization=quant,
        context_length=ctx_len,
        license=readme_license(d),
        chat_template=template,
        extra={k: v for k, v in extra.items() if v not in (None, [], {})},
    )


def _read_adapter_metadata(d: Path) -> ModelMetadata:
    cfg = _load_json(d / "adapter_config.json")
    files = safetensors_files(d, prefix="adapter_")
    params, by_dtype = safetensors_parameter_count(files) if files else (None, {})
    template, _ = read_chat_template(d)
    extra: dict[str, Any] = {
        "base_model": cfg.get("base_model_name_or_path"),
        "peft_type": cfg.get("peft_type"),
        "task_type": cfg.get("task_type"),
        "r": cfg.get("r"),
        "lora_alpha": cfg.get("lora_alpha"),
        "target_modules": cfg.get("target_modules"),
        "weights": [p.name for p in files],
        "tensor_dtypes": by_dtype,
    }
    peft_type = cfg.get("peft_type")
    return ModelMetadata(
        format="lora",
        name=d.name,
        architecture=str(peft_type).lower() if peft_type else "lora",
        parameters=params,
        license=readme_license(d),
        chat_template=template,
        extra={k: v for k, v in extra.items() if v not in (None, [], {})},
    )


def read_metadata(path: str | Path) -> ModelMetadata:
    """Metadata of a GGUF file or an HF model/adapter folder."""
    p = Path(path)
    if p.is_dir():
        return read_hf_metadata(p)
    return read_gguf_metadata(p)
