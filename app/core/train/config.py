"""The fine-tuning configuration: a typed dataclass with help text, presets and checks.

A :class:`TrainConfig` is validated when it is created (values that make no
sense on their own) and, before a job starts, against the base model and the
data file (:func:`validate_against_model`). Nothing here imports torch: the
checks read ``config.json``, the safetensors headers and the data file, so the
window process can run them too.
"""

from __future__ import annotations

import importlib.util
import json
import os
from dataclasses import MISSING, asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Literal

from app.core.errors import ConfigError

DataFormat = Literal["chat", "prompt_completion", "instruction"]
Method = Literal["lora", "qlora", "lora8bit"]
Scheduler = Literal["linear", "cosine", "constant"]
Device = Literal["auto", "cpu", "cuda"]

DATA_FORMATS: tuple[str, ...] = ("chat", "prompt_completion", "instruction")
METHODS: tuple[str, ...] = ("lora", "qlora", "lora8bit")
SCHEDULERS: tuple[str, ...] = ("linear", "cosine", "constant")
DEVICES: tuple[str, ...] = ("auto", "cpu", "cuda")
#: Most processes one training run may start (world_size).
MAX_WORLD_SIZE = 64


def _help(text: str) -> dict[str, str]:
    """Field metadata: help text shown by the CLI and the Fine-tune pane."""
    return {"help": text}


@dataclass(frozen=True)
class TrainConfig:
    """Everything that defines a fine-tuning run; saved as JSON next to the run."""

    base_model: str = field(
        default="", metadata=_help("Folder of the base model in Hugging Face format (safetensors).")
    )
    data_path: str = field(
        default="", metadata=_help("Training data: a JSONL file (one JSON object per line).")
    )
    data_format: DataFormat = field(
        default="chat",
        metadata=_help(
            "'chat' (a 'messages' list), 'prompt_completion' ('prompt' + 'completion' columns) "
            "or 'instruction' ('instruction', optional 'input', 'output')."
        ),
    )
    method: Method = field(
        default="lora",
        metadata=_help(
            "'lora' (full-precision base, the CPU default), 'qlora' (4-bit NF4 base, double "
            "quantization) or 'lora8bit' (8-bit base)."
        ),
    )
    lora_rank: int = field(default=16, metadata=_help("LoRA rank r: size of the low-rank update."))
    lora_alpha: int = field(
        default=32, metadata=_help("LoRA alpha: the update is scaled by alpha / r.")
    )
    lora_dropout: float = field(default=0.05, metadata=_help("Dropout on the LoRA input, 0 to 1."))
    target_modules: list[str] | None = field(
        default=None,
        metadata=_help(
            "Module names to adapt (e.g. q_proj, v_proj). None: every linear projection of "
            "attention and MLP, detected from the model's weights."
        ),
    )
    learning_rate: float = field(default=2e-4, metadata=_help("Peak learning rate of AdamW."))
    lr_scheduler: Scheduler = field(
        default="cosine", metadata=_help("Decay after warm-up: linear, cosine or constant.")
    )
    warmup_steps: int = field(
        default=0, metadata=_help("Optimizer steps of linear warm-up from 0 to the peak rate.")
    )
    epochs: float = field(
        default=1.0,
        metadata=_help("Passes over the training data (ignored when max_steps is set)."),
    )
    max_steps: int | None = field(
        default=None, metadata=_help("Optimizer steps to run; overrides epochs when set.")
    )
    batch_size: int = field(
        default=4,
        metadata=_help(
            "Sequences (or packed rows) per micro-batch; with grad_accum it fixes the effective "
            "batch, the data order and the learning-rate schedule."
        ),
    )
    grad_accum: int = field(
        default=1,
        metadata=_help("Micro-batches per optimizer step (effective batch = batch x this)."),
    )
    micro_batch_size: int | None = field(
        default=None,
        metadata=_help(
            "Run each batch of batch_size in forward/backward passes of this many sequences "
            "(a divisor of batch_size; None: batch_size). Same effective batch, data order and "
            "loss, less memory, slower. Set by auto_reduce_batch after an out-of-memory."
        ),
    )
    auto_reduce_batch: bool = field(
        default=True,
        metadata=_help(
            "On out-of-memory in a step, free memory, halve the micro-batch (gradient "
            "accumulation doubles, so the effective batch, the data order and the learning "
            "rate stay the same) and retry the step; a warning is logged and checkpoints keep "
            "the smaller size. Off: stop with a message on what to change."
        ),
    )
    max_seq_len: int = field(
        default=1024, metadata=_help("Longest sequence in tokens; longer examples are cut.")
    )
    packing: bool = field(
        default=False,
        metadata=_help(
            "Pack several short examples into one row (padding-free, attention kept apart)."
        ),
    )
    gradient_checkpointing: bool = field(
        default=False,
        metadata=_help("Recompute activations in the backward pass: less memory, ~30% slower."),
    )
    seed: int = field(
        default=42,
        metadata=_help("Seed for LoRA init, dropout, the eval split and the data order."),
    )
    eval_fraction: float = field(
        default=0.0, metadata=_help("Share of the examples held out for eval loss, 0 to 0.5.")
    )
    eval_every: int = field(
        default=0, metadata=_help("Compute eval loss every N steps (0: only at the end).")
    )
    save_every: int = field(
        default=50,
        metadata=_help("Write a checkpoint every N optimizer steps (0: only on cancel)."),
    )
    keep_checkpoints: int = field(
        default=2, metadata=_help("How many of the newest checkpoints to keep.")
    )
    stop_on_nan: bool = field(
        default=True, metadata=_help("Stop the run when the loss or gradient norm is NaN/inf.")
    )
    max_grad_norm: float = field(
        default=1.0, metadata=_help("Clip the gradient norm to this (0: no clipping).")
    )
    grad_norm_limit: float = field(
        default=1e4,
        metadata=_help(
            "A gradient norm above this counts as an explosion (warn; stop with stop_on_nan)."
        ),
    )
    assistant_only_loss: bool = field(
        default=True,
        metadata=_help("Chat data: loss on assistant tokens only. False: loss on every token."),
    )
    device: Device = field(
        default="auto", metadata=_help("'auto' (CUDA when present), 'cpu' or 'cuda'.")
    )
    world_size: int = field(
        default=1,
        metadata=_help(
            "Processes training together with DDP on this machine (torch.distributed: gloo on "
            "CPU, nccl with one GPU each). Each batch of batch_size is split across them, so "
            "the effective batch, the data order and the loss stay those of one process."
        ),
    )
    name: str | None = field(
        default=None, metadata=_help("A name for the run (shown in the job list).")
    )
    # Lineage, filled in by the model and dataset registries when they start a run.
    base_model_id: str | None = field(
        default=None, metadata=_help("Model library id of the base model (lineage).")
    )
    dataset_version: str | None = field(
        default=None, metadata=_help("Dataset version id of the data (lineage).")
    )
    data_mapping: dict[str, Any] | None = field(
        default=None,
        metadata=_help(
            "The column mapping applied to the dataset version for this run (a map_template "
            "step: {name, params}), when its columns were not a training format."
        ),
    )

    def __post_init__(self) -> None:
        problems = self.problems()
        if problems:
            raise ConfigError("Invalid training config: " + "; ".join(problems) + ".")

    # -- checks on the values alone ---------------------------------------------------
    def problems(self) -> list[str]:
        """What is wrong with the values themselves (empty when nothing)."""
        p: list[str] = []
        if not self.base_model:
            p.append("base_model is required (a Hugging Face model folder)")
        if not self.data_path:
            p.append("data_path is required (a JSONL file)")
        _choice(p, "data_format", self.data_format, DATA_FORMATS)
        _choice(p, "method", self.method, METHODS)
        _choice(p, "lr_scheduler", self.lr_scheduler, SCHEDULERS)
        _choice(p, "device", self.device, DEVICES)
        if self.lora_rank < 1:
            p.append("lora_rank must be at least 1 (nothing would be trainable)")
        if self.lora_alpha <= 0:
            p.append("lora_alpha must be positive")
        if not 0.0 <= self.lora_dropout < 1.0:
            p.append("lora_dropout must be in [0, 1)")
        if self.target_modules is not None and not self.target_modules:
            p.append("target_modules is empty: nothing would be trainable (use None to detect)")
        if not self.learning_rate > 0:
            p.append("learning_rate must be positive")
        if self.warmup_steps < 0:
            p.append("warmup_steps must be >= 0")
        if self.max_steps is None and not self.epochs > 0:
            p.append("epochs must be positive (or set max_steps)")
        if self.max_steps is not None and self.max_steps < 1:
            p.append("max_steps must be at least 1")
        if self.batch_size < 1:
            p.append("batch_size must be at least 1")
        if self.grad_accum < 1:
            p.append("grad_accum must be at least 1")
        mb = self.micro_batch_size
        if mb is not None and (mb < 1 or mb > self.batch_size or self.batch_size % mb):
            p.append(
                f"micro_batch_size must divide batch_size {self.batch_size} (got {mb}; "
                "None: batch_size)"
            )
        if not 1 <= self.world_size <= MAX_WORLD_SIZE:
            p.append(f"world_size must be between 1 and {MAX_WORLD_SIZE}")
        elif self.world_size > 1 and self.batch_size % self.world_size:
            p.append(
                f"batch_size {self.batch_size} must be a multiple of world_size "
                f"{self.world_size} (each process takes an equal share of every batch)"
            )
        elif self.world_size > 1 and self.method != "lora":
            p.append(
                f"world_size > 1 runs method lora only ({self.method} with several processes "
                "needs FSDP, which is not available yet)"
            )
        if self.max_seq_len < 8:
            p.append("max_seq_len must be at least 8")
        if not 0.0 <= self.eval_fraction <= 0.5:
            p.append("eval_fraction must be in [0, 0.5]")
        if self.eval_every < 0 or self.save_every < 0:
            p.append("eval_every and save_every must be >= 0")
        if self.keep_checkpoints < 1:
            p.append("keep_checkpoints must be at least 1")
        if self.max_grad_norm < 0:
            p.append("max_grad_norm must be >= 0")
        if not self.grad_norm_limit > 0:
            p.append("grad_norm_limit must be positive")
        return p

    # -- derived values -----------------------------------------------------------------
    @property
    def effective_batch(self) -> int:
        return self.batch_size * self.grad_accum

    @property
    def micro_batch(self) -> int:
        """Sequences per forward/backward pass (micro_batch_size, else batch_size)."""
        return self.micro_batch_size or self.batch_size

    # -- JSON -----------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_json(self, path: str | os.PathLike[str] | None = None) -> str:
        """The config as JSON text; also written (atomically) to ``path`` when given."""
        text = json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n"
        if path is not None:
            from app.core.store.files import atomic_write_text

            atomic_write_text(path, text)
        return text

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        """Build from a plain dict; unknown keys are an error (a typo must not pass silently)."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(
                f"Unknown training option(s): {', '.join(unknown)}.",
                f"Known options: {', '.join(sorted(known))}.",
            )
        values = dict(data)
        if values.get("target_modules") is not None:
            values["target_modules"] = list(values["target_modules"])
        try:
            return cls(**values)
        except TypeError as exc:
            raise ConfigError(f"Invalid training config: {exc}.") from exc

    @classmethod
    def from_json(cls, source: str | os.PathLike[str]) -> TrainConfig:
        """Read a config file (or JSON text): a plain config, a job's config.json or a manifest."""
        return cls.from_dict(cls.json_fields(source))

    @staticmethod
    def json_fields(source: str | os.PathLike[str]) -> dict[str, Any]:
        """The fields a config file (or JSON text) spells out, not yet checked."""
        text = str(source)
        if not text.lstrip().startswith("{"):
            path = Path(source)
            try:
                text = path.read_text(encoding="utf-8")
            except OSError as exc:
                raise ConfigError(f"Cannot read the config file {path}: {exc.strerror}.") from exc
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"The config is not valid JSON: {exc}.") from exc
        if not isinstance(data, dict):
            raise ConfigError("The config must be a JSON object.")
        if isinstance(data.get("params"), dict) and "kind" in data:  # a job's config.json
            data = data["params"]
        elif isinstance(data.get("config"), dict) and not isinstance(data.get("base_model"), str):
            # a manifest (its "base_model" is a dict of path, id and weight hashes)
            data = data["config"]
        return dict(data)

    @classmethod
    def preset(cls, preset_name: str, /, **overrides: Any) -> TrainConfig:
        """A preset (quick_test, balanced, quality) with some fields overridden."""
        if preset_name not in PRESETS:
            raise ConfigError(
                f"Unknown preset '{preset_name}'.", f"Presets: {', '.join(sorted(PRESETS))}."
            )
        return cls.from_dict({**PRESETS[preset_name], **overrides})

    def with_changes(self, **changes: Any) -> TrainConfig:
        """A copy with some fields changed (validated again)."""
        return replace(self, **changes)


def _choice(problems: list[str], name: str, value: object, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        problems.append(f"{name} must be one of {', '.join(allowed)} (got {value!r})")


#: Named starting points; any field can still be changed.
PRESETS: dict[str, dict[str, Any]] = {
    "quick_test": {
        "max_steps": 30,
        "lora_rank": 8,
        "lora_alpha": 16,
        "batch_size": 2,
        "max_seq_len": 512,
        "learning_rate": 3e-4,
        "lr_scheduler": "constant",
        "save_every": 10,
        "eval_fraction": 0.0,
    },
    "balanced": {
        "epochs": 2.0,
        "lora_rank": 16,
        "lora_alpha": 32,
        "batch_size": 4,
        "grad_accum": 4,
        "max_seq_len": 1024,
        "learning_rate": 2e-4,
        "lr_scheduler": "cosine",
        "warmup_steps": 10,
        "packing": True,
        "eval_fraction": 0.05,
        "eval_every": 50,
        "save_every": 50,
    },
    "quality": {
        "epochs": 3.0,
        "lora_rank": 64,
        "lora_alpha": 64,
        "lora_dropout": 0.05,
        "batch_size": 4,
        "grad_accum": 8,
        "max_seq_len": 2048,
        "learning_rate": 1e-4,
        "lr_scheduler": "cosine",
        "warmup_steps": 30,
        "packing": True,
        "gradient_checkpointing": True,
        "eval_fraction": 0.05,
        "eval_every": 100,
        "save_every": 100,
        "keep_checkpoints": 3,
    },
}


def field_help() -> dict[str, str]:
    """Help text of every field (for the CLI and the UI)."""
    return {f.name: str(f.metadata.get("help", "")) for f in fields(TrainConfig)}


def field_defaults() -> dict[str, Any]:
    """Default value of every field."""
    return {f.name: f.default for f in fields(TrainConfig) if f.default is not MISSING}


# ----------------------------------------------------------------------------- model facts

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")
_NON_TARGET_PARTS = ("embed", "lm_head", "wte", "wpe", "norm", "rotary", "score")


def weight_files(model_dir: Path) -> list[Path]:
    """The weight files of an HF folder (safetensors preferred), sorted."""
    st = sorted(model_dir.glob("*.safetensors"))
    if st:
        return st
    return sorted(p for p in model_dir.iterdir() if p.suffix in (".bin", ".pt", ".pth"))


def safetensors_shapes(model_dir: Path) -> dict[str, list[int]]:
    """Tensor name -> shape, read from the safetensors headers (no torch, no weights read)."""
    shapes: dict[str, list[int]] = {}
    for path in sorted(model_dir.glob("*.safetensors")):
        with open(path, "rb") as fh:
            n = int.from_bytes(fh.read(8), "little")
            if n <= 0 or n > 100_000_000:
                raise ConfigError(f"{path.name} is not a valid safetensors file.")
            header = json.loads(fh.read(n))
        for name, info in header.items():
            if name != "__metadata__" and isinstance(info, dict):
                shapes[name] = list(info.get("shape", []))
    return shapes


def linear_modules(shapes: dict[str, list[int]]) -> dict[str, tuple[int, int]]:
    """Short name -> (in, out) of the 2-D projection weights inside repeated blocks.

    ``model.layers.0.self_attn.q_proj.weight`` gives ``q_proj``. Embeddings,
    the output head and norms are left out: they are not LoRA targets.
    """
    found: dict[str, tuple[int, int]] = {}
    for name, shape in shapes.items():
        parts = name.split(".")
        if len(shape) != 2 or parts[-1] != "weight" or len(parts) < 3:
            continue
        if not any(p.isdigit() for p in parts[:-2]):
            continue  # not inside a repeated block (layers.N)
        short = parts[-2]
        if any(bad in short.lower() for bad in _NON_TARGET_PARTS):
            continue
        out_f, in_f = shape
        found.setdefault(short, (int(in_f), int(out_f)))
    return found


def read_model_config(model_dir: Path) -> dict[str, Any]:
    """The model's config.json as a dict (text_config merged in for multimodal configs)."""
    data: dict[str, Any] = json.loads((model_dir / "config.json").read_text(encoding="utf-8"))
    text = data.get("text_config")
    if isinstance(text, dict):
        data = {**data, **text}
    return data


def has_chat_template(model_dir: Path) -> bool:
    """True when the tokenizer files carry a chat template."""
    if (model_dir / "chat_template.jinja").is_file() or (
        model_dir / "chat_template.json"
    ).is_file():
        return True
    cfg = model_dir / "tokenizer_config.json"
    if cfg.is_file():
        try:
            return bool(json.loads(cfg.read_text(encoding="utf-8")).get("chat_template"))
        except (OSError, json.JSONDecodeError):
            return False
    return False


def resolve_target_modules(config: TrainConfig, model_dir: Path) -> list[str]:
    """The modules LoRA adapts: the configured ones, else every detected projection."""
    if config.target_modules is not None:
        return list(config.target_modules)
    return sorted(linear_modules(safetensors_shapes(model_dir)))


def model_context_length(model_dir: Path) -> int | None:
    """The longest sequence the model was built for (config.json), None when unknown."""
    try:
        mc = read_model_config(model_dir)
    except (OSError, ValueError):
        return None
    ctx = mc.get("max_position_embeddings") or mc.get("n_positions") or mc.get("seq_length")
    return ctx if isinstance(ctx, int) and not isinstance(ctx, bool) and ctx > 0 else None


def fit_to_model(
    config: TrainConfig, *, explicit: set[str] | frozenset[str] = frozenset()
) -> tuple[TrainConfig, list[str]]:
    """The config with defaults the base model cannot take lowered to fit, and a note on each.

    Only fields the user did not set (not in ``explicit``) change: a default
    ``max_seq_len`` beyond the model's context becomes the context. An explicit
    value stays, and :func:`validate_against_model` refuses it with the limit.
    """
    notes: list[str] = []
    if "max_seq_len" not in explicit:
        ctx = model_context_length(Path(config.base_model).expanduser())
        if ctx is not None and 8 <= ctx < config.max_seq_len:
            notes.append(
                f"max_seq_len set to {ctx}, the model's context (the default "
                f"{config.max_seq_len} is beyond it)"
            )
            config = config.with_changes(max_seq_len=ctx)
    return config, notes


def validate_against_model(config: TrainConfig) -> list[str]:
    """Problems found before start, each a sentence for the user (empty when ready).

    Checks the base model folder (HF weights, context length, target modules,
    chat template), the data file (columns of every record) and the method's
    library (bitsandbytes for qlora / lora8bit).
    """
    problems: list[str] = []
    base = Path(config.base_model).expanduser()
    if base.is_file() and base.suffix == ".gguf":
        problems.append(
            f"{base.name} is a GGUF file: training needs HF weights (a folder with config.json "
            "and safetensors); import the original Hugging Face model"
        )
    elif not base.is_dir():
        problems.append(f"base model folder {base} does not exist")
    elif not (base / "config.json").is_file():
        if any(base.glob("*.gguf")):
            problems.append(
                f"{base} holds only GGUF files: training needs HF weights (config.json and "
                "safetensors); import the original Hugging Face model"
            )
        else:
            problems.append(f"{base} has no config.json: it is not a Hugging Face model folder")
    elif not weight_files(base):
        problems.append(f"{base} has no weight files (*.safetensors): training needs HF weights")
    else:
        problems += _model_problems(config, base)

    from app.core.train.data import check_data_file

    problems += check_data_file(Path(config.data_path).expanduser(), config.data_format)

    if config.method in ("qlora", "lora8bit") and importlib.util.find_spec("bitsandbytes") is None:
        problems.append(
            f"method {config.method} needs the bitsandbytes package, which is not installed "
            "(use method lora, or install bitsandbytes)"
        )
    return problems


def _model_problems(config: TrainConfig, base: Path) -> list[str]:
    problems: list[str] = []
    try:
        mc = read_model_config(base)
    except (OSError, json.JSONDecodeError) as exc:
        return [f"cannot read {base / 'config.json'}: {exc}"]
    ctx_len = mc.get("max_position_embeddings") or mc.get("n_positions") or mc.get("seq_length")
    if isinstance(ctx_len, int) and config.max_seq_len > ctx_len:
        problems.append(
            f"max_seq_len {config.max_seq_len} is beyond the model's context of {ctx_len} tokens "
            f"(set max_seq_len <= {ctx_len})"
        )
    try:
        available = linear_modules(safetensors_shapes(base))
    except (OSError, ValueError, ConfigError) as exc:
        return [*problems, f"cannot read the model's weights: {exc}"]
    if config.target_modules is not None:
        unknown = [m for m in config.target_modules if m not in available]
        if unknown:
            problems.append(
                f"unknown target module(s) {', '.join(unknown)}: this model has "
                f"{', '.join(sorted(available)) or 'no linear projections'}"
            )
        elif not config.target_modules:
            problems.append("nothing trainable: target_modules is empty")
    elif not available and any(base.glob("*.safetensors")):
        problems.append("nothing trainable: no linear projection layers found in the model")
    if config.data_format in ("chat", "instruction") and not has_chat_template(base):
        problems.append(
            f"the model has no chat template, which data_format {config.data_format} needs "
            "(use prompt_completion data, or a model with a chat template)"
        )
    return problems
