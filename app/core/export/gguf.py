"""HF model -> verified GGUF: llama.cpp's own converter, its quantizer, then verification.

The converter is ``convert_hf_to_gguf.py`` from the llama.cpp source of the same
revision as the bundled runtime (installers/setup.sh records where it lives in
``<venv>/.demoai-llama-cpp-src``); it runs as a subprocess with this
interpreter, and its progress bar is parsed. Quantized types are made from the
f16 conversion with ``llama_cpp.llama_model_quantize``. Every output is then
verified against the source (:mod:`app.core.export.verify`); a passing GGUF is
registered in the library with lineage, a failing one is kept for inspection
under a ``.failed-verification`` name and the export is marked failed.

An adapter (LoRA) is merged into its base first (``app.core.train.merge``).
Each output goes to ``<exports>/<export-id>/`` (built under a temporary name,
then renamed) with ``export.json`` and ``SHA256SUMS``.
"""

from __future__ import annotations

import collections
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from app.core.errors import ConfigError, DemoAIError
from app.core.export.checksums import write_sums
from app.core.export.records import ExportStore, new_export_id
from app.core.jobs.context import Cancelled, JobFailed
from app.core.models.registry import ModelRecord, ModelRegistry, slugify
from app.core.store.files import atomic_write_json

if TYPE_CHECKING:
    from app.core.jobs.context import JobContext
    from app.core.workspace.workspace import Workspace

#: Float types: made by the converter directly (``--outtype``).
FLOAT_TYPES: dict[str, str] = {"F32": "f32", "F16": "f16", "BF16": "bf16"}
#: Quantized types: made from the f16 conversion by llama.cpp's quantizer.
QUANT_FTYPES: dict[str, str] = {
    "Q8_0": "LLAMA_FTYPE_MOSTLY_Q8_0",
    "Q6_K": "LLAMA_FTYPE_MOSTLY_Q6_K",
    "Q5_K_M": "LLAMA_FTYPE_MOSTLY_Q5_K_M",
    "Q5_K_S": "LLAMA_FTYPE_MOSTLY_Q5_K_S",
    "Q5_0": "LLAMA_FTYPE_MOSTLY_Q5_0",
    "Q5_1": "LLAMA_FTYPE_MOSTLY_Q5_1",
    "Q4_K_M": "LLAMA_FTYPE_MOSTLY_Q4_K_M",
    "Q4_K_S": "LLAMA_FTYPE_MOSTLY_Q4_K_S",
    "Q4_0": "LLAMA_FTYPE_MOSTLY_Q4_0",
    "Q4_1": "LLAMA_FTYPE_MOSTLY_Q4_1",
    "IQ4_NL": "LLAMA_FTYPE_MOSTLY_IQ4_NL",
    "Q3_K_L": "LLAMA_FTYPE_MOSTLY_Q3_K_L",
    "Q3_K_M": "LLAMA_FTYPE_MOSTLY_Q3_K_M",
    "Q3_K_S": "LLAMA_FTYPE_MOSTLY_Q3_K_S",
    "Q2_K": "LLAMA_FTYPE_MOSTLY_Q2_K",
}
QUANT_TYPES: tuple[str, ...] = (*FLOAT_TYPES, *QUANT_FTYPES)
#: File in the venv root naming the matching llama.cpp source tree.
LLAMA_CPP_SRC_POINTER = ".demoai-llama-cpp-src"
DOCS_HINT = "See docs/export.md ('When the converter does not recognise the tokenizer')."

ProgressFn = Callable[[float | None, str], None]
CancelFn = Callable[[], bool]
LogFn = Callable[[str], None]
_WRITING = re.compile(r"Writing:\s*(\d+)%")


@dataclass
class GGUFOutput:
    """One GGUF an export produced."""

    export_id: str
    quant: str
    path: Path
    size_bytes: int
    verification: dict[str, Any]
    passed: bool
    model_id: str | None  # the registered GGUF (None when verification failed)
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        """Plain dict for JSON."""
        d = dict(self.__dict__)
        d["path"] = str(self.path)
        return d


def normalize_quant(quant: str) -> str:
    """Upper-case quant name, checked against :data:`QUANT_TYPES`."""
    q = quant.strip().upper()
    if q not in QUANT_TYPES:
        raise ConfigError(f"Unknown GGUF type '{quant}'.", f"Choose from {', '.join(QUANT_TYPES)}.")
    return q


def llama_cpp_source() -> Path:
    """The llama.cpp source tree (converter + gguf-py) matching the installed runtime."""
    env = os.environ.get("DEMOAI_LLAMA_CPP_SRC")
    candidates = [Path(env)] if env else []
    for venv in (Path(sys.prefix), Path(__file__).resolve().parents[3] / ".venv"):
        pointer = venv / LLAMA_CPP_SRC_POINTER
        if pointer.is_file():
            candidates.append(Path(pointer.read_text(encoding="utf-8").strip()))
    for src in candidates:
        if (src / "convert_hf_to_gguf.py").is_file():
            return src
    raise ConfigError(
        "llama.cpp's GGUF converter was not found.",
        "Run installers/setup.sh (it unpacks the converter that matches the runtime), "
        "or set DEMOAI_LLAMA_CPP_SRC to a llama.cpp source tree of the same revision.",
    )


def converter_env(src: Path) -> dict[str, str]:
    """Environment for the converter: ``src/gguf-py`` first (PyPI's gguf is too old)."""
    env = dict(os.environ)
    env.pop("NO_LOCAL_GGUF", None)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(src / "gguf-py"), env.get("PYTHONPATH")]))
    env.setdefault("HF_HUB_OFFLINE", "1")
    env["PYTHONUNBUFFERED"] = "1"
    return env


def _explain_converter_failure(code: int, tail: str) -> JobFailed:
    if "pre-tokenizer was not recognized" in tail:
        return JobFailed(
            "llama.cpp's converter does not recognise this model's tokenizer "
            "(its BPE pre-tokenizer is not in the converter's list).",
            "Ship the model with a sentencepiece tokenizer.model, or add the pre-tokenizer's "
            "hash to llama.cpp (convert_hf_to_gguf_update.py) upstream. " + DOCS_HINT,
        )
    m = re.search(r"Model (\S+) is not supported|Architecture '?([^'!]+)'? not supported", tail)
    if m:
        arch = m.group(1) or m.group(2)
        return JobFailed(
            f"This llama.cpp revision cannot convert the architecture {arch}.",
            "Export needs an architecture that llama.cpp supports; update DemoAI for newer ones.",
        )
    lines = [ln for ln in tail.splitlines() if ln.strip()][-12:]
    return JobFailed(
        f"convert_hf_to_gguf.py failed (exit code {code}).", "Its output ends:\n" + "\n".join(lines)
    )


def convert_hf(
    model_dir: Path,
    outfile: Path,
    outtype: str = "f16",
    *,
    progress: ProgressFn | None = None,
    cancelled: CancelFn | None = None,
    log: LogFn | None = None,
    src: Path | None = None,
) -> Path:
    """Run llama.cpp's ``convert_hf_to_gguf.py`` on ``model_dir``; returns ``outfile``.

    Writes to a temporary name beside ``outfile`` and renames. Raises
    :class:`JobFailed` with an explanation when the converter fails, and
    :class:`Cancelled` (after stopping it) when ``cancelled()`` turns true.
    """
    src = src or llama_cpp_source()
    outfile.parent.mkdir(parents=True, exist_ok=True)
    tmp = outfile.with_name(f".{outfile.name}.{os.getpid()}.tmp")
    cmd = [sys.executable, str(src / "convert_hf_to_gguf.py"), str(model_dir)]
    cmd += ["--outfile", str(tmp), "--outtype", outtype]
    tail: collections.deque[str] = collections.deque(maxlen=200)
    state: dict[str, Any] = {"pct": None, "phase": "loading"}

    def reader(stream: Any) -> None:
        buf = b""
        while chunk := stream.read1(4096) if hasattr(stream, "read1") else stream.read(4096):
            buf += chunk
            *parts, buf = re.split(rb"[\r\n]", buf)
            for raw in parts:
                line = raw.decode("utf-8", "replace")
                if not line.strip():
                    continue
                m = _WRITING.search(line)
                if m:
                    state["pct"] = int(m.group(1))
                    state["phase"] = "writing"
                    continue
                tail.append(line)
                if log is not None and ("WARNING" in line or "ERROR" in line):
                    log(line)
                if "Set model tokenizer" in line:
                    state["phase"] = "tokenizer"
        if buf.strip():
            tail.append(buf.decode("utf-8", "replace"))

    try:
        proc = subprocess.Popen(
            cmd,
            env=converter_env(src),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        assert proc.stdout is not None
        t = threading.Thread(target=reader, args=(proc.stdout,), daemon=True)
        t.start()
        while proc.poll() is None:
            if cancelled is not None and cancelled():
                proc.terminate()
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
                raise Cancelled()
            if progress is not None:
                pct = state["pct"]
                frac = 0.2 + 0.8 * pct / 100 if pct is not None else None
                progress(frac, f"converting ({state['phase']})")
            time.sleep(0.25)
        t.join(5)
        if proc.returncode != 0 or not tmp.is_file():
            raise _explain_converter_failure(proc.returncode, "\n".join(tail))
        os.replace(tmp, outfile)
    finally:
        tmp.unlink(missing_ok=True)
    if progress is not None:
        progress(1.0, "converted")
    return outfile


def quantize(src: Path, dst: Path, quant: str, *, threads: int = 0) -> Path:
    """Quantize a GGUF (f16/bf16/f32) to ``quant`` with llama.cpp's quantizer; returns ``dst``."""
    import llama_cpp

    q = normalize_quant(quant)
    if q not in QUANT_FTYPES:
        raise ConfigError(f"{q} is not a quantized type; convert to it instead.")
    tmp = dst.with_name(f".{dst.name}.{os.getpid()}.tmp")
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, QUANT_FTYPES[q])
    params.nthread = threads or max(1, os.cpu_count() or 1)
    try:
        rc = llama_cpp.llama_model_quantize(
            str(src).encode("utf-8"), str(tmp).encode("utf-8"), params
        )
        if rc != 0 or not tmp.is_file():
            raise JobFailed(
                f"llama.cpp could not quantize to {q} (code {rc}).",
                "k-quants need tensor rows divisible by 256; try Q8_0 or Q4_0 for small models.",
            )
        os.replace(tmp, dst)
    finally:
        tmp.unlink(missing_ok=True)
    return dst


def _adapter_base(reg: ModelRegistry, rec: ModelRecord) -> tuple[Path, str | None]:
    """The base model folder of an adapter and its library id (None when not registered)."""
    for edge in reg.lineage(rec.id).parents:
        if edge.relation in ("adapter-of", "fine-tuned-from") and edge.name is not None:
            parent = reg.get(edge.model_id)
            if parent.format == "hf":
                return parent.path, parent.id
    base = rec.extra.get("base_model")
    if isinstance(base, str):
        for cand in reg.list(format="hf"):
            if base in (cand.id, cand.name, cand.source_ref, str(cand.path)):
                return cand.path, cand.id
        if (Path(base) / "config.json").is_file():
            return Path(base), None
    raise ConfigError(
        f"The base model of adapter {rec.id} is not in the library ({base!r}).",
        "Import the base model first, or merge the adapter yourself and export the merged model.",
    )


class _Stages:
    """Maps each stage's own 0..1 progress onto one overall fraction."""

    def __init__(self, fn: ProgressFn | None, weights: Sequence[tuple[str, float]]) -> None:
        self.fn = fn
        total = sum(w for _, w in weights) or 1.0
        self.spans: dict[str, tuple[float, float]] = {}
        acc = 0.0
        for name, w in weights:
            self.spans[name] = (acc / total, w / total)
            acc += w

    def sub(self, name: str) -> ProgressFn:
        start, width = self.spans[name]

        def report(frac: float | None, message: str) -> None:
            if self.fn is not None:
                self.fn(None if frac is None else start + width * frac, message)

        return report


def export_gguf(
    ws: Workspace,
    model: str,
    quants: Sequence[str] = ("Q8_0",),
    *,
    out_dir: str | Path | None = None,
    sample_text: str | None = None,
    threads: int = 0,
    progress: ProgressFn | None = None,
    cancelled: CancelFn | None = None,
    log: LogFn | None = None,
    job_id: str | None = None,
    _after_write: Callable[[Path, str], None] | None = None,
) -> list[GGUFOutput]:
    """Export library model ``model`` to one GGUF per type in ``quants``, each verified.

    Returns every output (passed or not); raises :class:`JobFailed` after all
    outputs are done when any failed verification. ``_after_write(path, quant)``
    is a test hook that runs between writing and verifying a GGUF.
    """
    from app.core.export.verify import source_reference, verify_gguf

    reg = ModelRegistry(ws)
    store = ExportStore(ws)
    rec = reg.get(model)
    qs = list(dict.fromkeys(normalize_quant(q) for q in quants))
    if not qs:
        raise ConfigError("Choose at least one GGUF type.")
    if rec.format == "gguf":
        raise ConfigError(f"{rec.id} is already a GGUF model.", "Export an HF model or adapter.")
    base_dir = Path(out_dir).expanduser().absolute() if out_dir else store.exports_dir
    base_dir.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=".gguf-work-", dir=base_dir))
    weights: list[tuple[str, float]] = []
    if rec.format == "lora":
        weights.append(("merge", 1.0))
    floats = [q for q in qs if q in FLOAT_TYPES]
    needs_f16 = any(q in QUANT_FTYPES for q in qs) and "F16" not in floats
    for q in [*floats, *(["F16"] if needs_f16 else [])]:
        weights.append((f"convert-{q}", 3.0))
    weights += [(f"quantize-{q}", 0.5) for q in qs if q in QUANT_FTYPES]
    weights += [("reference", 1.0)] + [(f"verify-{q}", 1.0) for q in qs]
    stages = _Stages(progress, weights)
    say = log or (lambda _t: None)

    def check() -> None:
        if cancelled is not None and cancelled():
            raise Cancelled()

    ids = {q: new_export_id(rec.name, q) for q in qs}
    params = {"quants": qs, "out_dir": str(base_dir), "source": rec.id}
    for q in qs:
        store.start(ids[q], "gguf", rec.id, quant=q, job_id=job_id, params=params)
    outputs: list[GGUFOutput] = []
    try:
        src_dir = rec.path
        parents: list[tuple[str, str, dict[str, Any] | None]] = []
        if rec.format == "lora":
            from app.core.train.merge import merge_adapter

            base, base_id = _adapter_base(reg, rec)
            if base_id is not None:
                parents.append((base_id, "merged-from", {"adapter": rec.id}))
            stages.sub("merge")(0.0, "merging the adapter into its base")
            say(f"merging adapter {rec.id} into {base}")
            src_dir = merge_adapter(base, rec.path, work / "merged")
            stages.sub("merge")(1.0, "merged")
        check()
        converted: dict[str, Path] = {}
        for q in [*floats, *(["F16"] if needs_f16 else [])]:
            t0 = time.perf_counter()
            converted[q] = convert_hf(
                src_dir,
                work / f"{q.lower()}.gguf",
                FLOAT_TYPES[q],
                progress=stages.sub(f"convert-{q}"),
                cancelled=cancelled,
                log=say,
            )
            say(f"converted to {q} in {time.perf_counter() - t0:.1f} s")
        made: dict[str, tuple[Path, float]] = {}
        for q in qs:
            t0 = time.perf_counter()
            if q in FLOAT_TYPES:
                made[q] = (converted[q], 0.0)
                continue
            check()
            stages.sub(f"quantize-{q}")(0.0, f"quantizing to {q}")
            path = quantize(converted["F16"], work / f"{q.lower()}.gguf", q, threads=threads)
            made[q] = (path, time.perf_counter() - t0)
            stages.sub(f"quantize-{q}")(1.0, f"quantized to {q}")
        if _after_write is not None:
            for q, (path, _) in made.items():
                _after_write(path, q)
        check()
        stages.sub("reference")(0.0, "running the source model on the sample text")
        ref = source_reference(src_dir, sample_text)
        stages.sub("reference")(1.0, "reference ready")
        slug = slugify(rec.name, 40)
        for q in qs:
            check()
            path, secs = made[q]
            stages.sub(f"verify-{q}")(0.0, f"verifying {q}")
            ver = verify_gguf(ref, path, q, threads=threads)
            say(ver.summary())
            if not ver.tokenizer_match:
                say(f"{q}: llama.cpp tokenizes the sample text differently from the source")
            outputs.append(
                _finish_one(
                    ws, reg, store, rec, ids[q], q, path, ver.to_dict(), base_dir, slug,
                    parents, secs,
                )
            )  # fmt: skip
            stages.sub(f"verify-{q}")(1.0, ver.summary())
    except BaseException as exc:
        done = {o.export_id for o in outputs}
        message = exc.message if isinstance(exc, JobFailed | DemoAIError) else repr(exc)
        if isinstance(exc, Cancelled):
            message = "cancelled"
        for q in qs:
            if ids[q] not in done:
                store.finish(ids[q], ok=False, error=message)
        raise
    finally:
        shutil.rmtree(work, ignore_errors=True)
    failed = [o for o in outputs if not o.passed]
    if failed:
        details = "; ".join(
            f"{o.quant}: top-1 {o.verification['top1_agreement']:.1%}, "
            f"ppl ratio {o.verification['ppl_ratio']:.4f}"
            for o in failed
        )
        raise JobFailed(
            f"Verification failed for {', '.join(o.quant for o in failed)} ({details}).",
            "The GGUF does not behave like its source, so it was not registered; it is kept "
            f"under {failed[0].path.parent} for inspection. See docs/export.md.",
        )
    return outputs


def _finish_one(
    ws: Workspace,
    reg: ModelRegistry,
    store: ExportStore,
    rec: ModelRecord,
    export_id: str,
    quant: str,
    path: Path,
    verification: dict[str, Any],
    base_dir: Path,
    slug: str,
    parents: list[tuple[str, str, dict[str, Any] | None]],
    quantize_s: float,
) -> GGUFOutput:
    """Move one verified (or failed) GGUF into its export folder and register it if it passed."""
    passed = bool(verification["passed"])
    staging = base_dir / f".{export_id}.tmp"
    staging.mkdir()
    name = f"{slug}-{quant.lower()}.gguf" + ("" if passed else ".failed-verification")
    os.replace(path, staging / name)
    size = (staging / name).stat().st_size
    manifest = {
        "export_id": export_id,
        "kind": "gguf",
        "source_model": {"id": rec.id, "name": rec.name, "sha256": rec.sha256},
        "quant": quant,
        "file": name,
        "size_bytes": size,
        "verification": verification,
        "state": "succeeded" if passed else "failed",
        "created_at": time.time(),
    }
    atomic_write_json(staging / "export.json", manifest)
    write_sums(staging)
    final = base_dir / export_id
    os.rename(staging, final)
    model_id: str | None = None
    if passed:
        relation = "converted-from" if quant in FLOAT_TYPES else "quantized-from"
        details = {"quant": quant, "export_id": export_id, "verification": verification}
        edges = [(rec.id, relation, details), *parents]
        new = reg.register_derived(
            final / name, "gguf", edges, name=f"{rec.name} {quant}", tags=["export"]
        )
        model_id = new.id
    store.finish(
        export_id,
        ok=passed,
        path=final / name,
        size_bytes=size,
        verification=verification,
        result_model_id=model_id,
        error=None if passed else "verification failed",
    )
    return GGUFOutput(
        export_id, quant, final / name, size, verification, passed, model_id, quantize_s
    )


def export_gguf_job(
    ctx: JobContext,
    model: str,
    quants: Sequence[str] = ("Q8_0",),
    out_dir: str | None = None,
    sample_text: str | None = None,
    threads: int = 0,
) -> dict[str, Any]:
    """Job ``export.gguf``: export, verify and register; the result lists every output."""
    outputs = export_gguf(
        ctx.workspace,
        model,
        quants,
        out_dir=out_dir,
        sample_text=sample_text,
        threads=threads,
        progress=ctx.progress,
        cancelled=ctx.cancelled,
        log=ctx.log,
        job_id=ctx.job_id,
    )
    for o in outputs:
        ctx.artifact("gguf", o.path)
    result = {"outputs": [o.to_dict() for o in outputs]}
    ctx.result(result)
    return result
