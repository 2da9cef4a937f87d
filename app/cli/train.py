"""``demoai train``: fine-tune a LoRA adapter, repeat a run, merge an adapter.

Forms::

    demoai train --config FILE
    demoai train --base PATH --data FILE --method lora|qlora [--steps N] [--name NAME] [--preset P]
                 [--micro-batch-size N] [--no-auto-reduce-batch] [--world-size N]
    demoai train --from-manifest PATH
    demoai train merge --base PATH --adapter PATH --out PATH

A config that cannot run fails here, before any job exists (exit code 2).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path
from typing import Any

from app.cli.common import add_job_options, open_workspace, run_job
from app.core.errors import ConfigError
from app.core.train.config import TrainConfig, fit_to_model, validate_against_model

KIND = "train.lora"


def register(sub: Any) -> None:
    p = sub.add_parser(
        "train",
        help="fine-tune a LoRA/QLoRA adapter (or: train merge ...)",
        description="Fine-tune a LoRA adapter on a base model folder and a JSONL file.",
    )
    p.add_argument("--config", metavar="FILE", help="a TrainConfig JSON (or a run's config.json)")
    p.add_argument("--from-manifest", metavar="PATH", help="repeat a run from its manifest.json")
    p.add_argument(
        "--base", metavar="MODEL", help="base model: a library id/name or an HF model folder"
    )
    p.add_argument(
        "--dataset",
        metavar="DATASET[@VERSION]",
        help="training data from the dataset library (instead of --data)",
    )
    p.add_argument("--data", metavar="FILE", help="training data (JSONL)")
    p.add_argument(
        "--format",
        dest="data_format",
        choices=["chat", "prompt_completion", "instruction"],
        help="data format (default: detected from the first record)",
    )
    p.add_argument("--method", choices=["lora", "qlora", "lora8bit"])
    p.add_argument("--preset", choices=["quick_test", "balanced", "quality"])
    p.add_argument("--steps", type=int, metavar="N", help="optimizer steps (max_steps)")
    p.add_argument("--epochs", type=float)
    p.add_argument("--lr", type=float, dest="learning_rate")
    p.add_argument("--rank", type=int, dest="lora_rank")
    p.add_argument("--batch-size", type=int)
    p.add_argument(
        "--micro-batch-size",
        type=int,
        metavar="N",
        help="sequences per forward/backward pass, a divisor of the batch size (less memory, "
        "same effective batch and loss)",
    )
    p.add_argument(
        "--auto-reduce-batch",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="on out-of-memory, halve the micro-batch and retry the step, keeping the "
        "effective batch, data order and learning rate (default: on); --no-auto-reduce-batch "
        "stops with a message instead",
    )
    p.add_argument("--max-seq-len", type=int)
    p.add_argument("--seed", type=int)
    p.add_argument("--device", choices=["auto", "cpu", "cuda"])
    p.add_argument(
        "--world-size",
        type=int,
        metavar="N",
        help="train with N processes on this machine (DDP: gloo on CPU, one GPU each with "
        "nccl); the batch is split across them, the effective batch stays the same",
    )
    p.add_argument("--name", help="a name for the run")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="FIELD=JSON",
        help="any config field, e.g. --set packing=true --set target_modules='[\"q_proj\"]'",
    )
    p.add_argument(
        "--estimate",
        action="store_true",
        help="check the config, print the estimate, start nothing",
    )
    add_job_options(p)
    p.set_defaults(func=cmd_train)
    tsub = p.add_subparsers(dest="train_command", metavar="ACTION")
    m = tsub.add_parser("merge", help="merge an adapter into its base: a new HF model folder")
    m.add_argument("--base", dest="merge_base", required=True, metavar="PATH")
    m.add_argument("--adapter", required=True, metavar="PATH")
    m.add_argument("--out", required=True, metavar="PATH")
    m.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"])
    m.set_defaults(func=cmd_merge)


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    out: dict[str, Any] = {}
    simple = {
        "base": "base_model",
        "data": "data_path",
        "data_format": "data_format",
        "method": "method",
        "steps": "max_steps",
        "epochs": "epochs",
        "learning_rate": "learning_rate",
        "lora_rank": "lora_rank",
        "batch_size": "batch_size",
        "micro_batch_size": "micro_batch_size",
        "auto_reduce_batch": "auto_reduce_batch",
        "max_seq_len": "max_seq_len",
        "seed": "seed",
        "device": "device",
        "world_size": "world_size",
        "name": "name",
    }
    for attr, key in simple.items():
        val = getattr(args, attr, None)
        if val is not None:
            out[key] = str(Path(val).expanduser().resolve()) if attr in ("base", "data") else val
    for item in args.set:
        key, sep, raw = item.partition("=")
        if not sep:
            raise ConfigError(f"--set {item}: expected FIELD=VALUE.")
        try:
            out[key.strip()] = json.loads(raw)
        except json.JSONDecodeError:
            out[key.strip()] = raw
    return out


def build_config(args: argparse.Namespace) -> TrainConfig:
    """The config the arguments describe (validated on its own, not yet against the model)."""
    over = _overrides(args)
    if args.from_manifest:
        manifest = json.loads(Path(args.from_manifest).read_text(encoding="utf-8"))
        cfg = TrainConfig.from_dict({**manifest["config"], **over})
        _check_manifest_inputs(manifest, cfg)
        return cfg
    if args.config:
        base = TrainConfig.from_json(args.config).to_dict()
        return TrainConfig.from_dict({**base, **over})
    if "base_model" not in over or "data_path" not in over:
        raise ConfigError(
            "Give --config FILE, --from-manifest PATH, or both --base PATH and --data FILE."
        )
    if "data_format" not in over:
        over["data_format"] = _detect(Path(over["data_path"]))
    if args.preset:
        return TrainConfig.preset(args.preset, **over)
    return TrainConfig.from_dict(over)


def _detect(path: Path) -> str:
    from app.core.train.data import DataError, detect_format, read_records

    try:
        fmt = detect_format(read_records(path)[:1])
    except (OSError, DataError, ValueError) as exc:
        raise ConfigError(f"Cannot read the data file {path}: {exc}.") from exc
    if fmt is None:
        raise ConfigError(
            f"Cannot tell the format of {path.name}: its first record has none of 'messages', "
            "'prompt'+'completion', 'instruction'+'output'.",
            "Map the columns first, or pass --format.",
        )
    return fmt


def _check_manifest_inputs(manifest: dict[str, Any], cfg: TrainConfig) -> None:
    from app.core.store.files import sha256_file

    want = manifest.get("data", {}).get("sha256")
    path = Path(cfg.data_path)
    if want and path.is_file() and sha256_file(path) != want:
        raise ConfigError(
            f"The data file {path} changed since the run (sha256 differs): a repeat would differ."
        )


def _from_library(args: argparse.Namespace) -> TrainConfig | None:
    """--dataset, or --base naming a library model: resolve both through the libraries."""
    base_is_path = args.base is not None and Path(args.base).expanduser().exists()
    if args.dataset is None and (args.base is None or base_is_path):
        return None
    if args.base is None or args.dataset is None or base_is_path:
        raise ConfigError(
            "With the libraries, give --base MODEL (library id or name) and --dataset D[@V]."
        )
    from app.core.train.library import config_from_library

    over = _overrides(args)
    over.pop("base_model", None)
    over.pop("data_path", None)
    ws = open_workspace(args)
    try:
        return config_from_library(ws, args.base, args.dataset, preset=args.preset, **over)
    finally:
        ws.close()


def _explicit_fields(args: argparse.Namespace) -> set[str]:
    """The config fields the user set: options, --set, a config file's keys, a whole manifest."""
    if args.from_manifest:
        return {f.name for f in dataclasses.fields(TrainConfig)}
    explicit = set(_overrides(args))
    if args.config:
        explicit |= set(TrainConfig.json_fields(args.config))
    return explicit


def cmd_train(args: argparse.Namespace) -> int:
    cfg = _from_library(args) or build_config(args)
    cfg, notes = fit_to_model(cfg, explicit=_explicit_fields(args))
    for note in notes:
        print(f"Note: {note}.", file=sys.stderr)
    problems = validate_against_model(cfg)
    if problems:
        raise ConfigError("Cannot start training: " + "; ".join(problems) + ".")
    if args.estimate:
        from app.core.train.estimate import estimate_run

        print(estimate_run(cfg).explanation)
        return 0
    ws = open_workspace(args)
    title = f"Fine-tune {cfg.name}" if cfg.name else f"Fine-tune {Path(cfg.base_model).name}"
    return run_job(ws, KIND, cfg.to_dict(), detach=args.detach, title=title)


def cmd_merge(args: argparse.Namespace) -> int:
    from app.core.train.merge import merge_adapter

    out = merge_adapter(args.merge_base, args.adapter, args.out, dtype=args.dtype)
    print(out)
    sys.stdout.flush()
    return 0
