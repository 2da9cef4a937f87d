"""The model inspector: statistics against numpy, dequantization, LoRA norms, comparisons, bad headers."""

from __future__ import annotations

import json
import math
import shutil
import struct
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from app.core.inspect.stats import K_MAX, K_MIN, N_BINS, N_MAG, model_stats
from app.core.inspect.tensors import open_tensors
from app.core.models.metadata import InvalidModelError
from tests.support.ci import needs_converter

# --------------------------------------------------------------------------- helpers


def _reference_histogram(x: np.ndarray) -> np.ndarray:
    """The inspector's bins computed another way: frexp for the power of two, then the sign."""
    x = x.astype(np.float32).reshape(-1)
    _, e = np.frexp(np.abs(x).astype(np.float64))  # |x| = m * 2**e, m in [0.5, 1)
    k = e - 1
    bins = np.full(x.shape, N_MAG, dtype=np.int64)
    big = (np.abs(x) >= 2.0**K_MIN) | ~np.isfinite(x)
    kk = np.where(np.isfinite(x), np.clip(k, K_MIN, K_MAX), K_MAX) - K_MIN
    neg = np.signbit(x)
    bins[big & ~neg] = N_MAG + 1 + kk[big & ~neg]
    bins[big & neg] = N_MAG - 1 - kk[big & neg]
    return np.bincount(bins, minlength=N_BINS)


def _check_stats(row: dict[str, Any], x: np.ndarray) -> None:
    d = x.astype(np.float64).reshape(-1)
    assert row["n"] == d.size
    assert row["mean"] == pytest.approx(d.mean(), rel=1e-6, abs=1e-9)
    assert row["std"] == pytest.approx(d.std(), rel=1e-6, abs=1e-9)
    assert row["min"] == d.min() and row["max"] == d.max()
    assert row["l2"] == pytest.approx(np.linalg.norm(d), rel=1e-6)
    assert row["near_zero"] == pytest.approx(np.mean(np.abs(d) < 2.0**-26), abs=1e-12)
    assert row["histogram"] == _reference_histogram(x).tolist()


def _write_safetensors(path: Path, tensors: dict[str, tuple[str, list[int], bytes]]) -> Path:
    """A safetensors file written by hand (so bf16 and broken headers are possible)."""
    header: dict[str, Any] = {}
    blobs = b""
    for name, (dtype, shape, data) in tensors.items():
        header[name] = {
            "dtype": dtype,
            "shape": shape,
            "data_offsets": [len(blobs), len(blobs) + len(data)],
        }
        blobs += data
    raw = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + blobs)
    return path


# --------------------------------------------------------------------------- statistics


def test_stats_equal_numpy_on_the_tiny_model(tiny_llama_dir: Path, tmp_path: Path) -> None:
    from safetensors.numpy import load_file

    ts = open_tensors(tiny_llama_dir)
    report = model_stats(ts, cache_dir=tmp_path / "cache")
    direct = load_file(str(tiny_llama_dir / "model.safetensors"))
    rows = {r["name"]: r for r in report["tensors"]}
    assert set(rows) == set(direct) and len(rows) == 21
    for name, x in direct.items():
        _check_stats(rows[name], x)
    assert report["cached"] is False
    # Every q_proj has about the same norm: none is flagged; the norms (all ones) neither.
    assert not any(r["outlier"] for r in report["tensors"])
    again = model_stats(open_tensors(tiny_llama_dir), cache_dir=tmp_path / "cache")
    assert again["cached"] is True and again["tensors"] == report["tensors"]


def test_stats_chunked_dtypes_edges_and_outliers(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    f32 = rng.normal(3.0, 1e-3, size=(70, 33)).astype(np.float32)  # mean far from zero
    f32[0, :6] = [0.0, -0.0, 1e-40, 2.0**K_MIN, -(2.0**-20), 2.0**K_MAX * 3]
    # bf16: float32 values with the low half zero, stored as the high 16 bits
    bf = (rng.normal(0, 0.05, size=(17, 8)).astype(np.float32).view(np.uint32) & 0xFFFF0000).view(
        np.float32
    )
    f16 = rng.normal(0, 2, size=(5, 7)).astype(np.float16)
    layers = {
        f"model.layers.{i}.mlp.w.weight": rng.normal(0, 1, 64).astype(np.float32) for i in range(5)
    }
    layers["model.layers.3.mlp.w.weight"] *= 10  # one layer's norm ten times the others
    tensors = {
        "a": ("F32", [70, 33], f32.tobytes()),
        "b": ("BF16", [17, 8], (bf.view(np.uint32) >> 16).astype("<u2").tobytes()),
        "c": ("F16", [5, 7], f16.astype("<f2").tobytes()),
        **{k: ("F32", [64], v.tobytes()) for k, v in layers.items()},
    }
    path = _write_safetensors(tmp_path / "m.safetensors", tensors)
    ts = open_tensors(path)
    ts.chunk_values = 100  # many small chunks: the streamed sums must equal numpy's one pass
    rows = {r["name"]: r for r in model_stats(ts)["tensors"]}
    _check_stats(rows["a"], f32)
    _check_stats(rows["b"], bf)
    _check_stats(rows["c"], f16.astype(np.float32))
    assert rows["a"]["std"] == pytest.approx(np.float64(f32).std(), rel=1e-6)
    flagged = [n for n, r in rows.items() if r["outlier"]]
    assert flagged == ["model.layers.3.mlp.w.weight"]
    assert rows["model.layers.3.mlp.w.weight"]["outlier_ratio"] > 3


def test_stats_stop_between_chunks_when_cancelled(tiny_llama_dir: Path, tmp_path: Path) -> None:
    from app.core.jobs.context import Cancelled

    ts = open_tensors(tiny_llama_dir)
    ts.chunk_values = 1024
    seen: list[str] = []

    def progress(_fraction: float, name: str) -> None:
        seen.append(name)

    with pytest.raises(Cancelled):
        model_stats(ts, cache_dir=tmp_path, progress=progress, cancelled=lambda: len(seen) >= 3)
    assert len(seen) == 3  # stopped inside the third tensor
    assert not list(tmp_path.iterdir())  # nothing half-written in the cache


# --------------------------------------------------------------------------- GGUF


def _q8_0_reference(raw: np.ndarray, n: int) -> np.ndarray:
    """Q8_0 by its definition: blocks of 34 bytes, a float16 scale d, then 32 int8 q; x = d*q."""
    blocks = np.frombuffer(raw.tobytes(), dtype=np.uint8).reshape(-1, 34)
    d = blocks[:, :2].copy().view("<f2").astype(np.float32)
    q = blocks[:, 2:].copy().view(np.int8).astype(np.float32)
    return (d * q).reshape(-1)[:n]


def test_q8_0_dequantization_equals_reference(tmp_path: Path) -> None:
    import gguf

    rng = np.random.default_rng(1)
    w = rng.normal(0, 0.02, size=(48, 256)).astype(np.float32)
    q = gguf.quants.quantize(w, gguf.GGMLQuantizationType.Q8_0)
    path = tmp_path / "q8.gguf"
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_tensor("blk.0.ffn_up.weight", q, raw_dtype=gguf.GGMLQuantizationType.Q8_0)
    writer.add_tensor("output_norm.weight", np.ones(256, dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()

    ts = open_tensors(path)
    info = ts.get("blk.0.ffn_up.weight")
    assert info.dtype == "Q8_0" and info.shape == (48, 256)
    chunked = np.concatenate(list(ts.chunks(info, 5 * 256)))  # ten chunks of five rows
    ours = ts.read(info)
    np.testing.assert_array_equal(chunked.reshape(ours.shape), ours)
    np.testing.assert_array_equal(ours.reshape(-1), _q8_0_reference(q, w.size))
    reader = gguf.GGUFReader(str(path))
    ref = {t.name: gguf.quants.dequantize(t.data, t.tensor_type) for t in reader.tensors}
    np.testing.assert_array_equal(ours, ref["blk.0.ffn_up.weight"].reshape(ours.shape))
    # and Q8_0 is within half a step of the float weights it came from (plus the float16
    # rounding of the block's scale: up to 127 * 2**-11 of a step)
    step = np.abs(w).reshape(-1, 32).max(axis=1) / 127
    assert np.all(np.abs(ours - w).reshape(-1, 32) <= step[:, None] * (0.5 + 127 * 2.0**-11))


def test_gemma_q4_k_and_q6_k_read_like_gguf(gemma_gguf: Path) -> None:
    import gguf

    ts = open_tensors(gemma_gguf)
    reader = gguf.GGUFReader(str(gemma_gguf))
    seen: set[str] = set()
    for t in reader.tensors:
        kind = t.tensor_type.name
        if kind in seen or kind not in ("Q4_K", "Q6_K", "Q5_0", "F32") or t.n_elements > 2_000_000:
            continue
        seen.add(kind)
        info = ts.get(t.name)
        rows = list(ts.chunks(info, 4 * info.row_length))  # four rows per chunk
        ours = np.concatenate(rows).reshape(info.shape)
        ref = gguf.quants.dequantize(t.data, t.tensor_type).reshape(info.shape)
        np.testing.assert_array_equal(ours, ref)
    assert {"Q4_K", "Q6_K", "F32"} <= seen


# --------------------------------------------------------------------------- LoRA


@pytest.fixture(scope="module")
def lora_dir(tiny_llama_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_pretrained(
        str(tiny_llama_dir), use_safetensors=True, local_files_only=True
    )
    cfg = LoraConfig(
        r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False
    )
    out = tmp_path_factory.mktemp("lora") / "adapter"
    get_peft_model(base, cfg).save_pretrained(str(out), safe_serialization=True)
    return out


def test_lora_update_norms_equal_direct_product(lora_dir: Path, tmp_path: Path) -> None:
    from safetensors.numpy import load_file

    from app.core.inspect.lora import lora_updates

    weights = load_file(str(lora_dir / "adapter_model.safetensors"))
    report = lora_updates(lora_dir)
    mods = {m["module"]: m for m in report["modules"]}
    assert len(mods) == 4  # q and v in two layers
    for a_key, a in weights.items():
        if ".lora_A." not in a_key:
            continue
        b = weights[a_key.replace(".lora_A.", ".lora_B.")]
        delta = b.astype(np.float64) @ a.astype(np.float64) * (8 / 4)
        m = mods[a_key.split(".lora_A.")[0].removeprefix("base_model.model.")]
        assert m["scale"] == 2.0 and m["rank"] == 4
        assert m["norm"] == pytest.approx(np.linalg.norm(delta), rel=1e-9)
        s = np.linalg.svd(delta, compute_uv=False)[:4]
        np.testing.assert_allclose(m["singular_values"], s, rtol=1e-9)
        assert 1.0 <= m["effective_rank"] <= 4.0
    assert {m["layer"] for m in mods.values()} == {0, 1}
    assert {m["module_type"] for m in mods.values()} == {
        "model.layers.*.self_attn.q_proj",
        "model.layers.*.self_attn.v_proj",
    }

    # rsLoRA scales by alpha / sqrt(r); an alpha_pattern overrides one module
    rs = tmp_path / "rs"
    shutil.copytree(lora_dir, rs)
    cfg = json.loads((rs / "adapter_config.json").read_text())
    cfg["use_rslora"] = True
    cfg["alpha_pattern"] = {"model.layers.1.self_attn.v_proj": 16}
    (rs / "adapter_config.json").write_text(json.dumps(cfg))
    rs_mods = {m["module"]: m for m in lora_updates(rs)["modules"]}
    assert rs_mods["model.layers.0.self_attn.q_proj"]["scale"] == pytest.approx(8 / math.sqrt(4))
    assert rs_mods["model.layers.1.self_attn.v_proj"]["scale"] == pytest.approx(16 / math.sqrt(4))
    for name, m in rs_mods.items():
        assert m["norm"] == pytest.approx(mods[name]["norm"] / 2.0 * m["scale"], rel=1e-9)


# --------------------------------------------------------------------------- compare


def test_compare_two_models(tiny_llama_dir: Path, tmp_path: Path) -> None:
    from safetensors.numpy import load_file, save_file

    from app.core.inspect.compare import compare_models

    weights = load_file(str(tiny_llama_dir / "model.safetensors"))
    changed = dict(weights)
    name = "model.layers.1.mlp.up_proj.weight"
    noise = np.random.default_rng(2).normal(0, 0.001, weights[name].shape).astype(np.float32)
    changed[name] = weights[name] + noise
    other = tmp_path / "tuned"
    other.mkdir()
    shutil.copy2(tiny_llama_dir / "config.json", other / "config.json")
    save_file(changed, str(other / "model.safetensors"))

    report = compare_models(open_tensors(tiny_llama_dir), open_tensors(other))
    rows = {r["name"]: r for r in report["tensors"]}
    assert report["mode"] == "models" and len(rows) == 21
    a = weights[name].astype(np.float64)
    b = changed[name].astype(np.float64)
    assert rows[name]["rel_change"] == pytest.approx(
        np.linalg.norm(b - a) / np.linalg.norm(a), rel=1e-9
    )
    cos = float((a * b).sum() / (np.linalg.norm(a) * np.linalg.norm(b)))
    assert rows[name]["cosine"] == pytest.approx(cos, rel=1e-12)
    assert rows[name]["max_abs"] == pytest.approx(float(np.abs(b - a).max()), rel=1e-6)
    for n, r in rows.items():
        if n != name:
            assert r["rel_change"] == 0.0 and r["cosine"] == pytest.approx(1.0)


def test_compare_models_of_different_architectures_is_refused(
    tiny_llama_dir: Path, tmp_path: Path
) -> None:
    from app.core.errors import ConfigError
    from app.core.inspect.compare import compare_models

    other = _write_safetensors(
        tmp_path / "o.safetensors", {"x": ("F32", [2], np.zeros(2, np.float32).tobytes())}
    )
    with pytest.raises(ConfigError, match="no tensor in common"):
        compare_models(open_tensors(tiny_llama_dir), open_tensors(other))


@pytest.fixture(scope="module")
def tiny_q8_gguf(tiny_llama_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tests.support.models import convert_hf_to_gguf

    out = tmp_path_factory.mktemp("q8") / "tiny-q8_0.gguf"
    return convert_hf_to_gguf(tiny_llama_dir, out, outtype="q8_0")


@needs_converter
def test_gguf_against_its_source_is_the_quantization_error(
    tiny_llama_dir: Path, tiny_q8_gguf: Path
) -> None:
    from app.core.inspect.compare import compare_models

    # either order: the safetensors side is the reference
    report = compare_models(open_tensors(tiny_q8_gguf), open_tensors(tiny_llama_dir))
    assert report["mode"] == "quantization"
    assert report["only_in_reference"] == [] and report["only_in_other"] == []
    rows = {r["name"]: r for r in report["tensors"]}
    assert len(rows) == 21
    for name, r in rows.items():
        if r["other_dtype"] == "F32":  # norms are stored as they are
            assert r["rel_change"] == 0.0, name
        else:  # Q8_0: about 0.5 % (q/k too: the converter's row permutation is undone)
            assert r["other_dtype"] == "Q8_0"
            assert 1e-4 < r["rel_change"] < 0.02, (name, r["rel_change"])
            assert r["cosine"] > 0.9998
    assert rows["model.layers.0.self_attn.q_proj.weight"]["other"] == "blk.0.attn_q.weight"


# --------------------------------------------------------------------------- bad headers


def test_bad_safetensors_headers_give_clear_errors(tmp_path: Path, tiny_llama_dir: Path) -> None:
    good = (tiny_llama_dir / "model.safetensors").read_bytes()
    cases = {
        "truncated.safetensors": good[: len(good) // 2],
        "short.safetensors": b"\x01\x02",
        "absurd-length.safetensors": struct.pack("<Q", 2**62) + b"{}",
        "not-json.safetensors": struct.pack("<Q", 4) + b"nope",
    }
    for name, data in cases.items():
        (tmp_path / name).write_bytes(data)
    # a header that claims a shape of 2**40 x 2**40 values in 8 bytes
    _write_safetensors(
        tmp_path / "absurd-shape.safetensors", {"w": ("F32", [2**40, 2**40], b"\0" * 8)}
    )
    _write_safetensors(tmp_path / "bad-dims.safetensors", {"w": ("F32", [-1, 2], b"\0" * 8)})
    for p in sorted(tmp_path.glob("*.safetensors")):
        with pytest.raises(InvalidModelError) as err:
            open_tensors(p)
        assert p.name in str(err.value) or "damaged" in str(err.value), p.name


def test_bad_gguf_headers_give_clear_errors(gemma_gguf: Path, tmp_path: Path) -> None:
    head = gemma_gguf.open("rb").read(8_000_000)  # the header and the first tensors only
    cases = {
        "truncated-data.gguf": head,
        "truncated-header.gguf": head[:4096],
        "absurd-counts.gguf": b"GGUF" + struct.pack("<IQQ", 3, 2**60, 2**60) + b"\0" * 64,
        "bad-version.gguf": b"GGUF" + struct.pack("<IQQ", 99, 0, 0) + b"\0" * 64,
    }
    for name, data in cases.items():
        p = tmp_path / name
        p.write_bytes(data)
        with pytest.raises(InvalidModelError, match="not a valid GGUF"):
            open_tensors(p)


# --------------------------------------------------------------------------- the job, the CLI


def test_cli_inspect_runs_the_job_and_caches(
    tiny_llama_dir: Path, lora_dir: Path, tmp_path: Path
) -> None:
    from tests.support.cli import demoai

    ws = tmp_path / "ws"
    r = demoai(ws, "models", "import", str(tiny_llama_dir), "--name", "tiny", "--json")
    assert r.returncode == 0, r.stderr
    r = demoai(ws, "models", "inspect", "tiny", "--json")
    assert r.returncode == 0, r.stderr
    arch = json.loads(r.stdout)["architecture"]
    assert arch["tensor_count"] == 21 and arch["params"] == sum(
        math.prod(t["shape"]) for t in arch["tensors"]
    )
    assert [c["name"] for c in arch["tree"]["children"]] == ["lm_head", "model"]

    r = demoai(ws, "models", "inspect", "tiny", "--stats", "--json", timeout=300)
    assert r.returncode == 0, r.stderr
    first = json.loads(r.stdout)["stats"]
    assert first["cached"] is False and len(first["tensors"]) == 21
    assert list((ws / "cache" / "inspect").glob("stats-*.json"))
    r = demoai(ws, "models", "inspect", "tiny", "--stats", "--json", timeout=300)
    assert json.loads(r.stdout)["stats"]["cached"] is True

    r = demoai(ws, "models", "inspect", str(lora_dir), "--stats", timeout=300)
    assert r.returncode == 0, r.stderr
    assert "LoRA updates" in r.stdout and "self_attn.q_proj" in r.stdout

    r = demoai(ws, "models", "inspect", "no-such-model", "--stats")
    assert r.returncode == 2 and "No library model" in r.stderr


def _unpermute(w: np.ndarray, n_head: int) -> np.ndarray:
    """The inverse of the converter's q/k row permutation (compare._permute)."""
    return (
        w.reshape(n_head, w.shape[0] // n_head // 2, 2, *w.shape[1:])
        .swapaxes(1, 2)
        .reshape(w.shape)
    )


@needs_converter
def test_q8_0_weights_as_we_read_them_give_llama_cpp_s_own_logits(
    tiny_llama_dir: Path, tiny_q8_gguf: Path
) -> None:
    """Our dequantized Q8_0 weights, put into the transformers model, reproduce the logits
    llama.cpp computes from the same file, much closer than the unquantized source does."""
    import torch
    from llama_cpp import Llama
    from transformers import AutoModelForCausalLM

    from app.core.inspect.compare import _gguf_pairs

    src, gg = open_tensors(tiny_llama_dir), open_tensors(tiny_q8_gguf)
    pairs, unmatched = _gguf_pairs(src, gg)
    assert not unmatched
    n_head = int(gg.meta["llama.attention.head_count"])
    n_kv = int(gg.meta["llama.attention.head_count_kv"])
    ours: dict[str, torch.Tensor] = {}
    for hf, g, transform in pairs:
        w = gg.read(g)
        if transform is not None:  # back to the HF row order
            kv = hf.name.endswith("k_proj.weight")
            w = _unpermute(w, n_kv if kv else n_head)
        ours[hf.name] = torch.from_numpy(np.ascontiguousarray(w).reshape(hf.shape))

    tokens = [1, 15, 27, 99, 203, 7, 64, 300, 11, 42, 5, 250]
    llm = Llama(model_path=str(tiny_q8_gguf), n_ctx=64, logits_all=True, verbose=False,
                n_threads=1)  # fmt: skip
    try:
        llm.eval(tokens)
        cpp = np.array(llm.scores[: len(tokens)], dtype=np.float64)
    finally:
        llm.close()

    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir, dtype=torch.float32).eval()
    ids = torch.tensor([tokens])
    with torch.inference_mode():
        source = model(input_ids=ids).logits[0].double().numpy()
        model.load_state_dict(ours, strict=False)
        dequant = model(input_ids=ids).logits[0].double().numpy()

    def rms(x: np.ndarray) -> float:
        return float(np.sqrt((x**2).mean()))

    # llama.cpp also rounds activations to 8 bits in a Q8_0 product, so not exact; the
    # weights' own quantization error is what reading them right accounts for (measured:
    # RMS 0.0029 vs 0.0052, largest 0.010 vs 0.021)
    assert rms(dequant - cpp) < 0.7 * rms(source - cpp), (rms(dequant - cpp), rms(source - cpp))
    assert np.abs(dequant - cpp).max() < 0.7 * np.abs(source - cpp).max()
    assert (dequant.argmax(-1) == cpp.argmax(-1)).mean() >= 0.9
