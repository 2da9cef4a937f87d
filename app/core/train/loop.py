"""The training job: LoRA / QLoRA / 8-bit LoRA with a plain torch loop.

Not the HF Trainer: owning the loop makes resume exact. A checkpoint holds the
trainable weights, the AdamW state, the RNG states, the step and the data
position (safetensors + JSON, never pickle); the learning rate is a pure
function of the step and the data order a pure function of (seed, step), so a
run resumed at step N takes exactly the steps an uninterrupted run takes.

Out of memory in a step (``auto_reduce_batch``): the step is undone (gradients
dropped, RNG restored), memory freed, and each batch of ``batch_size`` is run in
passes of half as many sequences (twice the gradient accumulation), then the
same step is retried. The data order and the learning rate depend only on
``batch_size`` and ``grad_accum``, and the loss is normalized by the label
tokens of the whole optimizer step, so the run's semantics do not change; the
smaller micro-batch is kept in checkpoints and in the manifest.

The job function :func:`train` is registered as kind ``train.lora``.
:class:`TrainSession` is the same machinery without a job (benchmarks, tests).
"""

from __future__ import annotations

import ctypes
import gc
import json
import math
import os
import random
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from app.core.errors import ConfigError, is_out_of_memory
from app.core.jobs.context import Cancelled, JobContext, JobFailed
from app.core.store.files import _fsync_dir, atomic_write_bytes, atomic_write_json, sha256_file
from app.core.train.config import TrainConfig, resolve_target_modules, validate_against_model
from app.core.train.data import (
    DataOrder,
    Example,
    collate,
    pack,
    read_records,
    split_eval,
    tokenize_record,
)
from app.core.train.ddp import (
    DistGroup,
    RankProcesses,
    is_peer_failure,
    listen_loopback,
    timeout_s,
)

CHECKPOINT_PREFIX = "checkpoint-"
#: QLoRA / 8-bit on CUDA: keep norms and embeddings in float32 as peft's
#: prepare_model_for_kbit_training does (True), or in 16-bit under autocast (False).
UPCAST_KBIT_ON_CUDA = False
OOM_HINT = (
    "Set micro_batch_size below batch_size (same effective batch, less memory) or lower "
    "batch_size (raise grad_accum to keep the effective batch), lower max_seq_len, turn on "
    "gradient_checkpointing, or use method qlora; then resume or restart."
)
#: Out of memory with auto_reduce_batch off: the same advice, and the option.
OOM_HINT_AUTO_OFF = (
    OOM_HINT[:-1] + ". Or turn on auto_reduce_batch: the micro-batch is then halved on "
    "out-of-memory, keeping the effective batch."
)
#: Out of memory at a micro-batch of 1: nothing left to halve.
OOM_HINT_AT_ONE = (
    "Even one sequence per pass does not fit: lower max_seq_len, turn on "
    "gradient_checkpointing, use method qlora, or free memory; then resume or restart."
)
NAN_HINT = (
    "Lower the learning rate or max_grad_norm, check the data for broken records, then resume "
    "from the last checkpoint or restart."
)


@dataclass
class StepStats:
    """What one optimizer step did."""

    step: int  # 1-based number of this step
    loss: float
    grad_norm: float
    lr: float
    tokens: int
    label_tokens: int
    seconds: float
    skipped: bool = False  # True when the update was dropped (non-finite loss or gradient)
    micro_batch: int = 0  # sequences per forward/backward pass in this step
    #: world_size > 1: each rank's [tokens, seconds, cpu MB, gpu MB] of this step, by rank.
    per_rank: list[list[float]] | None = None


@dataclass
class BatchReduction:
    """One automatic micro-batch reduction after out-of-memory."""

    step: int  # 1-based optimizer step that ran out of memory (and was retried)
    old: int  # micro-batch that did not fit
    new: int  # micro-batch used from then on
    error: str  # the allocator's message, shortened
    phase: str = "train"  # "train": the step's forward/backward; "eval": the eval loss after it

    def describe(self, config: TrainConfig) -> str:
        passes = config.grad_accum * (config.batch_size // self.new)
        where = f"step {self.step}" if self.phase == "train" else f"eval after step {self.step}"
        return (
            f"out of memory at {where} with micro-batch {self.old}: retrying with "
            f"micro-batch {self.new} x {passes} accumulated passes (effective batch "
            f"{config.effective_batch} unchanged)"
        )


def next_micro_batch(batch_size: int, micro: int) -> int | None:
    """The micro-batch after halving ``micro``: the largest divisor of ``batch_size`` that is
    at most half of it (every pass of a step then has the same size); None at 1."""
    for d in range(micro // 2, 0, -1):
        if batch_size % d == 0:
            return d
    return None


def free_memory(device: str) -> None:
    """Give memory back after an out-of-memory: collect cycles, empty the CUDA cache and
    return freed heap pages to the system (glibc's malloc_trim, where there is one)."""
    gc.collect()
    if device == "cuda":
        import torch

        torch.cuda.empty_cache()
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL(None).malloc_trim(0)
        except (OSError, AttributeError):
            pass  # not glibc (musl): nothing to trim


def lr_factor(config: TrainConfig, step: int, total: int) -> float:
    """Multiplier of the peak learning rate for 0-based ``step`` of ``total``."""
    w = config.warmup_steps
    if step < w:
        return (step + 1) / (w + 1)
    if config.lr_scheduler == "constant":
        return 1.0
    progress = (step - w) / max(1, total - w)
    if config.lr_scheduler == "linear":
        return max(0.0, 1.0 - progress)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def _set_threads(world_size: int = 1) -> None:
    threads = os.environ.get("DEMOAI_TRAIN_THREADS")
    if threads:
        import torch

        torch.set_num_threads(max(1, int(threads)))
    elif world_size > 1:  # several ranks on one machine share its cores
        import torch

        torch.set_num_threads(max(1, (os.cpu_count() or 1) // world_size))


class TrainSession:
    """A loaded model, its LoRA adapter, the data and the optimizer, ready to step."""

    def __init__(
        self,
        config: TrainConfig,
        log: Callable[[str, str], None] | None = None,
        dist: DistGroup | None = None,
    ) -> None:
        import numpy as np
        import torch

        self.config = config
        self._log = log or (lambda text, level: None)
        #: The process group when several ranks train together (world_size > 1).
        self.dist = dist
        self.rank = dist.rank if dist else 0
        self.world_size = dist.world_size if dist else 1
        self._ddp: Any = None
        _set_threads(self.world_size)
        random.seed(config.seed)
        np.random.seed(config.seed % 2**32)
        torch.manual_seed(config.seed)
        self.device = self._pick_device()
        self.base_dir = Path(config.base_model).expanduser()
        self._load_data()
        self._load_model()
        params = [p for p in self.model.parameters() if p.requires_grad]
        if not params:
            raise JobFailed("Nothing is trainable.", "Check target_modules and lora_rank.")
        self.params = params
        self.trainable_params = sum(p.numel() for p in params)
        self.optimizer = torch.optim.AdamW(
            params, lr=config.learning_rate, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0
        )
        if config.max_steps is not None:
            self.total_steps = config.max_steps
        else:
            micro = math.ceil(config.epochs * self.order.batches_per_epoch)
            self.total_steps = max(1, math.ceil(micro / config.grad_accum))
        self.step = 0  # optimizer steps done
        #: Sequences per forward/backward pass; halved by auto_reduce_batch on out-of-memory.
        self.micro_batch = config.micro_batch
        self.reductions: list[BatchReduction] = []
        self.history: list[dict[str, float]] = []
        self.tokens_seen = 0
        self._check_fast_loss()
        if dist is not None:
            self._wrap_ddp()

    def _wrap_ddp(self) -> None:
        """DDP around a module whose forward is :meth:`_loss_sum` (the fast loss path too)."""
        import torch
        from torch.nn.parallel import DistributedDataParallel

        session = self

        class _LossModule(torch.nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.model = session.model

            def forward(self, batch: dict[str, Any]) -> Any:
                return session._loss_sum(batch)[0]

        module = _LossModule()
        # Every rank loaded the same base weights from disk: only the LoRA weights are
        # checked and broadcast at the start (a large base model is not sent over the wire).
        same_everywhere = [n for n, p in module.named_parameters() if not p.requires_grad]
        same_everywhere += [n for n, _ in module.named_buffers()]
        ignore = DistributedDataParallel._set_params_and_buffers_to_ignore_for_model
        ignore(module, same_everywhere)  # type: ignore[no-untyped-call]
        cuda = self.device == "cuda"
        self._ddp = DistributedDataParallel(
            module,
            device_ids=[torch.cuda.current_device()] if cuda else None,
            broadcast_buffers=False,
        )
        if self.rank > 0:
            # Same LoRA init on every rank (seeded above); dropout then differs per rank.
            torch.manual_seed(self.config.seed + 7919 * self.rank)
            if cuda:
                torch.cuda.manual_seed(self.config.seed + 7919 * self.rank)

    # -- set-up ---------------------------------------------------------------------
    def _pick_device(self) -> str:
        import torch

        want = self.config.device
        if self.dist is not None:  # the launcher chose the backend for the resolved device
            return "cuda" if self.dist.backend == "nccl" else "cpu"
        if want == "cuda" and not torch.cuda.is_available():
            raise JobFailed(
                "device cuda was asked for but torch sees no CUDA GPU.",
                "Use device auto or cpu, or install a CUDA build of torch.",
            )
        if want == "auto":
            return "cuda" if torch.cuda.is_available() else "cpu"
        return want

    def _load_data(self) -> None:
        from transformers import AutoTokenizer

        cfg = self.config
        self.tokenizer = AutoTokenizer.from_pretrained(str(self.base_dir))
        if not getattr(self.tokenizer, "is_fast", False):
            raise JobFailed(
                "Training needs a fast tokenizer (tokenizer.json) to mask labels.",
                "Use a model folder that ships tokenizer.json.",
            )
        records = read_records(Path(cfg.data_path).expanduser())
        self.n_records = len(records)
        examples: list[Example] = []
        for rec in records:
            ex = tokenize_record(
                rec,
                self.tokenizer,
                cfg.data_format,
                cfg.max_seq_len,
                assistant_only=cfg.assistant_only_loss,
            )
            if ex is not None:
                examples.append(ex)
        dropped = len(records) - len(examples)
        if dropped:
            self._log(f"{dropped} record(s) had nothing to learn after cutting; skipped", "warning")
        train_idx, eval_idx = split_eval(len(examples), cfg.eval_fraction, cfg.seed)
        train_ex = [examples[i] for i in train_idx]
        eval_ex = [examples[i] for i in eval_idx]
        self.train_samples = pack(train_ex, cfg.max_seq_len) if cfg.packing else train_ex
        self.eval_samples = eval_ex
        self.n_train, self.n_eval = len(train_ex), len(eval_ex)
        self.order = DataOrder(len(self.train_samples), cfg.batch_size, cfg.seed)
        pad = self.tokenizer.pad_token_id
        self.pad_id = int(pad if pad is not None else (self.tokenizer.eos_token_id or 0))

    def _load_model(self) -> None:
        import torch
        from peft import LoraConfig, get_peft_model
        from transformers import AutoModelForCausalLM

        cfg = self.config
        cuda = self.device == "cuda"
        bf16 = cuda and torch.cuda.is_bf16_supported()
        kwargs: dict[str, Any] = {}
        if cfg.method in ("qlora", "lora8bit"):
            from transformers import BitsAndBytesConfig

            compute = (torch.bfloat16 if bf16 else torch.float16) if cuda else torch.float32
            if cfg.method == "qlora":
                kwargs["quantization_config"] = BitsAndBytesConfig(  # type: ignore[no-untyped-call]
                    load_in_4bit=True,
                    bnb_4bit_quant_type="nf4",
                    bnb_4bit_use_double_quant=True,
                    bnb_4bit_compute_dtype=compute,
                )
            else:
                kwargs["quantization_config"] = BitsAndBytesConfig(load_in_8bit=True)  # type: ignore[no-untyped-call]
            kwargs["dtype"] = compute
            kwargs["device_map"] = {"": 0 if cuda else "cpu"}
        else:
            kwargs["dtype"] = torch.bfloat16 if bf16 else torch.float32
        model: Any = AutoModelForCausalLM.from_pretrained(str(self.base_dir), **kwargs)
        model.config.use_cache = False
        if cfg.method in ("qlora", "lora8bit") and (UPCAST_KBIT_ON_CUDA or not cuda):
            from peft import prepare_model_for_kbit_training

            # Checkpointing is switched on here rather than by peft, which still calls
            # transformers' deprecated gradient_checkpointing_enable (same effect for
            # non-reentrant checkpointing: peft adds no input hook then).
            model = prepare_model_for_kbit_training(  # type: ignore[no-untyped-call]
                model, use_gradient_checkpointing=False
            )
            if cfg.gradient_checkpointing:
                model.activation_checkpointing_enable(
                    activation_checkpointing_kwargs={"use_reentrant": False}
                )
        elif cfg.method in ("qlora", "lora8bit"):
            # Unlike peft's prepare_model_for_kbit_training, norms and embeddings stay in
            # 16-bit: its float32 copies double activation memory and traffic, and
            # autocast (below) already runs the numerically sensitive parts in float32.
            for p in model.parameters():
                p.requires_grad_(False)
            if cfg.gradient_checkpointing:
                model.activation_checkpointing_enable(
                    activation_checkpointing_kwargs={"use_reentrant": False}
                )
                model.enable_input_require_grads()
        else:
            if cuda:
                model = model.to("cuda")
            if cfg.gradient_checkpointing:
                model.activation_checkpointing_enable(
                    activation_checkpointing_kwargs={"use_reentrant": False}
                )
        self.target_modules = resolve_target_modules(cfg, self.base_dir)
        lora = LoraConfig(
            r=cfg.lora_rank,
            lora_alpha=cfg.lora_alpha,
            lora_dropout=cfg.lora_dropout,
            target_modules=self.target_modules,
            bias="none",
            task_type="CAUSAL_LM",
        )
        self.model = get_peft_model(model, lora)
        #: Mixed precision on CUDA: matmuls in 16-bit, LoRA weights and AdamW in float32.
        self.amp_dtype = (torch.bfloat16 if bf16 else torch.float16) if cuda else None
        self.model.train()
        causal: Any = self.model.get_base_model()
        self._causal = causal
        self._backbone = causal.get_decoder() if hasattr(causal, "get_decoder") else None
        self._head = causal.get_output_embeddings()
        mc = causal.config
        if any(
            getattr(mc, a, None) not in (None, 1.0)
            for a in ("final_logit_softcapping", "logit_scale", "logits_scaling")
        ):
            self._backbone = None  # logits are post-processed: use the model's own forward

    def _check_fast_loss(self) -> None:
        """Loss only on label positions (lm_head on those rows): checked once against the full forward."""
        import torch

        if self._backbone is None or self._head is None:
            self._backbone = None
            return
        batch = self._to_device(collate(self.train_samples[:1], self.pad_id))
        self.model.eval()
        try:
            with torch.no_grad():
                fast, n = self._loss_sum(batch)
                backbone, self._backbone = self._backbone, None
                full, _ = self._loss_sum(batch)
                self._backbone = backbone
        finally:
            self.model.train()
        rtol = 1e-3 if self.amp_dtype is None else 2e-2  # 16-bit autocast differs a little
        if not torch.allclose(fast, full, rtol=rtol, atol=rtol * max(1, int(n))):
            self._log("the model post-processes its logits: using the full forward", "info")
            self._backbone = None

    # -- one step ---------------------------------------------------------------------
    def _to_device(self, batch: dict[str, Any]) -> dict[str, Any]:
        return {k: v.to(self.device) for k, v in batch.items()}

    def _loss_sum(self, batch: dict[str, Any]) -> tuple[Any, Any]:
        """Sum of token losses over label positions, and their count."""
        import torch
        import torch.nn.functional as F

        labels = batch["labels"]
        inputs = {k: v for k, v in batch.items() if k != "labels"}
        targets = labels[:, 1:]
        mask = targets != -100
        amp = self.amp_dtype is not None
        with torch.autocast("cuda", dtype=self.amp_dtype or torch.bfloat16, enabled=amp):
            if self._backbone is not None:
                hidden = self._backbone(**inputs, use_cache=False)[0]
                logits = self._head(hidden[:, :-1][mask])
            else:
                out = self.model(**inputs, use_cache=False)
                logits = out.logits[:, :-1][mask]
        return F.cross_entropy(logits.float(), targets[mask], reduction="sum"), mask.sum()

    def data_batches(self, step: int) -> list[list[int]]:
        """Sample indices of the ``grad_accum`` batches of 0-based optimizer step ``step``."""
        ga = self.config.grad_accum
        return [self.order.batch(step * ga + j)[1] for j in range(ga)]

    def micro_batches(self, step: int) -> list[list[int]]:
        """Sample indices of each forward/backward pass of 0-based optimizer step ``step``
        on this rank: rank ``r`` of ``W`` takes samples ``r, r+W, ...`` of each data batch,
        cut into pieces of ``self.micro_batch``. Every rank makes the same number of passes;
        with several ranks a pass may be empty (the short last batch of an epoch)."""
        m, w, r = self.micro_batch, self.world_size, self.rank
        if w == 1:
            return [b[i : i + m] for b in self.data_batches(step) for i in range(0, len(b), m)]
        out: list[list[int]] = []
        for b in self.data_batches(step):
            share = b[r::w]
            out += [share[i : i + m] for i in range(0, -(-len(b) // w), m)]
        return out

    @property
    def accum_passes(self) -> int:
        """Forward/backward passes per optimizer step and rank (grad_accum x share / micro)."""
        share = -(-self.config.batch_size // self.world_size)
        return self.config.grad_accum * -(-share // self.micro_batch)

    def agree_stop(self, stop: bool) -> bool:
        """With several ranks: True on all of them when any asks to stop (rank 0's cancel)."""
        return self.dist.any_true(stop) if self.dist is not None else stop

    def reduce_micro_batch(
        self, step: int, error: str = "", phase: str = "train"
    ) -> BatchReduction | None:
        """Halve the micro-batch (see :func:`next_micro_batch`); None when it is already 1."""
        new = next_micro_batch(self.config.batch_size, self.micro_batch)
        if new is None:
            return None
        red = BatchReduction(step, self.micro_batch, new, error[:300], phase)
        self.micro_batch = new
        self.reductions.append(red)
        return red

    def _rng_state(self) -> tuple[Any, list[Any]]:
        import torch

        cuda = torch.cuda.get_rng_state_all() if self.device == "cuda" else []
        return torch.get_rng_state(), cuda

    def _set_rng_state(self, state: tuple[Any, list[Any]]) -> None:
        import torch

        torch.set_rng_state(state[0])
        if state[1]:
            torch.cuda.set_rng_state_all(state[1])

    def _retry_on_oom(self, fn: Callable[[], Any], step: int, phase: str = "train") -> Any:
        """``fn()``; on out-of-memory with auto_reduce_batch, undo, halve and call it again.

        The retry happens outside the ``except`` block, so the failed attempt's
        tensors (held by the traceback) are gone before memory is freed.
        """
        if self.world_size > 1:
            return fn()  # ranks cannot retry alone: out of memory fails the run (resume it)
        rng = self._rng_state()
        while True:
            error = ""
            try:
                return fn()
            except BaseException as exc:
                if not (self.config.auto_reduce_batch and is_out_of_memory(exc)):
                    raise
                if next_micro_batch(self.config.batch_size, self.micro_batch) is None:
                    raise  # micro-batch 1 does not fit either: the job says what to change
                error = f"{type(exc).__name__}: {exc}"
            self.optimizer.zero_grad(set_to_none=True)
            free_memory(self.device)
            self._set_rng_state(rng)
            red = self.reduce_micro_batch(step, error, phase)
            if red is not None:
                self._log(red.describe(self.config), "warning")

    def train_step(self) -> StepStats:
        """Run optimizer step number ``self.step + 1``.

        The forward/backward passes are retried with a halved micro-batch on
        out-of-memory when ``auto_reduce_batch`` is on; the optimizer update runs
        once, after they all succeeded.
        """
        import torch

        cfg = self.config
        t0 = time.perf_counter()
        samples = [self.train_samples[i] for b in self.data_batches(self.step) for i in b]
        n_labels = sum(s.n_label_tokens for s in samples)
        n_tokens = sum(len(s.input_ids) for s in samples)
        total_loss: float = self._retry_on_oom(lambda: self._accumulate(n_labels), self.step + 1)
        if self.dist is not None:
            total_loss = self.dist.sum_floats([total_loss])[0]
        loss = total_loss / max(1, n_labels)
        clip = cfg.max_grad_norm if cfg.max_grad_norm > 0 else float("inf")
        grad_norm = float(torch.nn.utils.clip_grad_norm_(self.params, clip))
        lr = cfg.learning_rate * lr_factor(cfg, self.step, self.total_steps)
        bad = not (math.isfinite(loss) and math.isfinite(grad_norm))
        bad = bad or grad_norm > cfg.grad_norm_limit
        if not bad:
            for group in self.optimizer.param_groups:
                group["lr"] = lr
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        self.tokens_seen += n_tokens
        if self.device == "cuda":
            torch.cuda.synchronize()
        per_rank = None
        if self.dist is not None:
            per_rank = self.dist.gather_floats(self._rank_reading(time.perf_counter() - t0))
        stats = StepStats(
            self.step,
            loss,
            grad_norm,
            lr,
            n_tokens,
            n_labels,
            time.perf_counter() - t0,
            bad,
            self.micro_batch,
            per_rank,
        )
        self.history.append(
            {"step": self.step, "train_loss": loss, "grad_norm": grad_norm, "learning_rate": lr}
        )
        return stats

    def _accumulate(self, n_labels: int) -> float:
        """Forward and backward over every micro-batch of the step; the summed token loss.

        Each pass's loss is divided by the label tokens of the whole step, so the
        gradient does not depend on how the step is cut into micro-batches.
        """
        if self._ddp is not None:
            return self._accumulate_ddp(n_labels)
        total_loss = 0.0
        for idx in self.micro_batches(self.step):
            batch = self._to_device(collate([self.train_samples[i] for i in idx], self.pad_id))
            loss_sum, _ = self._loss_sum(batch)
            (loss_sum / max(1, n_labels)).backward()
            total_loss += float(loss_sum.detach())
        return total_loss

    def _accumulate_ddp(self, n_labels: int) -> float:
        """:meth:`_accumulate` on one rank of several: this rank's share of the summed loss.

        DDP averages gradients over the ranks, so each pass's loss is multiplied by the
        world size: the update is the gradient of (all ranks' token loss) / (the step's
        label tokens), as with one process. Gradients are exchanged once, after the last
        pass of the step; an empty pass runs one sample with weight 0 (every rank must
        make the same passes).
        """
        import contextlib

        passes = self.micro_batches(self.step)
        scale = self.world_size / max(1, n_labels)
        total_loss = 0.0
        for k, idx in enumerate(passes):
            samples = [self.train_samples[i] for i in idx] or self.train_samples[:1]
            batch = self._to_device(collate(samples, self.pad_id))
            last = k == len(passes) - 1
            with contextlib.nullcontext() if last else self._ddp.no_sync():
                loss_sum = self._ddp(batch)
                (loss_sum * (scale if idx else 0.0)).backward()
            if idx:
                total_loss += float(loss_sum.detach())
        return total_loss

    def _rank_reading(self, seconds: float) -> list[float]:
        """This rank's [tokens, seconds, cpu MB, gpu MB] for the step just done."""
        import psutil

        tokens = sum(
            len(self.train_samples[i].input_ids)
            for idx in self.micro_batches(self.step - 1)
            for i in idx
        )
        gpu = 0.0
        if self.device == "cuda":
            import torch

            gpu = torch.cuda.max_memory_allocated() / 2**20
        rss = psutil.Process().memory_info().rss / 2**20
        return [float(tokens), seconds, rss, gpu]

    def evaluate(self) -> float | None:
        """Mean token loss on the held-out examples (None without an eval split)."""
        if not self.eval_samples:
            return None
        loss: float = self._retry_on_oom(self._evaluate, self.step, "eval")
        return loss

    def _evaluate(self) -> float:
        import torch

        self.model.eval()
        total, count = 0.0, 0
        try:
            with torch.no_grad():
                bs = self.micro_batch
                starts = range(0, len(self.eval_samples), bs)
                # With several ranks, rank r evaluates batches r, r+W, ... (same batches).
                for i in list(starts)[self.rank :: self.world_size]:
                    batch = self._to_device(collate(self.eval_samples[i : i + bs], self.pad_id))
                    s, n = self._loss_sum(batch)
                    total += float(s)
                    count += int(n)
        finally:
            self.model.train()
        if self.dist is not None:
            total, n_all = self.dist.sum_floats([total, float(count)])
            count = int(n_all)
        return total / max(1, count)

    # -- checkpoints --------------------------------------------------------------------
    def save_checkpoint(self, folder: Path, extra: dict[str, Any] | None = None) -> Path:
        """Write ``checkpoint-<step>`` atomically (a .tmp folder, then a rename).

        Holds the raw trainable weights, optimizer and RNG state for an exact resume, and
        the adapter in PEFT's layout for :mod:`app.core.eval.checkpoints`. With several
        ranks every rank calls it (their RNG states are gathered) and rank 0 writes.
        """
        import numpy as np
        import torch
        from safetensors.torch import save

        rank_rng = self._gather_rng() if self.dist is not None else {}
        final = folder / f"{CHECKPOINT_PREFIX}{self.step}"
        if final.is_dir() or self.rank != 0:
            return final
        tmp = folder / f"{CHECKPOINT_PREFIX}{self.step}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        weights = {
            n: p.detach().to("cpu").contiguous()
            for n, p in self.model.named_parameters()
            if p.requires_grad
        }
        atomic_write_bytes(tmp / "adapter.safetensors", save(weights))
        # The same weights as a PEFT adapter (adapter_model.safetensors + adapter_config.json):
        # every checkpoint can be evaluated, chatted with or merged like the final adapter.
        self.model.save_pretrained(str(tmp), safe_serialization=True)
        opt = self.optimizer.state_dict()
        tensors: dict[str, Any] = {}
        plain: dict[str, dict[str, Any]] = {}
        for idx, st in opt["state"].items():
            for key, val in st.items():
                if isinstance(val, torch.Tensor):
                    tensors[f"{idx}.{key}"] = val.detach().to("cpu").contiguous()
                else:
                    plain.setdefault(str(idx), {})[key] = val
        atomic_write_bytes(tmp / "optimizer.safetensors", save(tensors))
        rng_t = {"torch_cpu": torch.get_rng_state()}
        if torch.cuda.is_available() and self.dist is None:
            for i, s in enumerate(torch.cuda.get_rng_state_all()):
                rng_t[f"cuda_{i}"] = s
        rng_t.update(rank_rng)
        atomic_write_bytes(tmp / "rng.safetensors", save(rng_t))
        py_state = random.getstate()
        np_state: Any = np.random.get_state()
        state = {
            "format": 1,
            "step": self.step,
            "micro_index": self.step * self.config.grad_accum,
            "epoch": self.order.batch(self.step * self.config.grad_accum)[0],
            "total_steps": self.total_steps,
            "tokens_seen": self.tokens_seen,
            "micro_batch_size": self.micro_batch,
            "oom_reductions": [asdict(r) for r in self.reductions],
            "history": self.history,
            "config": self.config.to_dict(),
            "optimizer": {"param_groups": opt["param_groups"], "plain_state": plain},
            "rng": {
                "python": [py_state[0], list(py_state[1]), py_state[2]],
                "numpy": [
                    np_state[0],
                    np_state[1].tolist(),
                    int(np_state[2]),
                    int(np_state[3]),
                    float(np_state[4]),
                ],
            },
            **(extra or {}),
        }
        atomic_write_json(tmp / "state.json", state)
        os.replace(tmp, final)
        _fsync_dir(folder)
        return final

    def _gather_rng(self) -> dict[str, Any]:
        """Every rank's torch RNG states (collective), keyed ``torch_cpu.rank<r>``."""
        import torch

        assert self.dist is not None
        out: dict[str, Any] = {}
        for r, st in enumerate(self.dist.gather_bytes(torch.get_rng_state())):
            out[f"torch_cpu.rank{r}"] = st
        if self.device == "cuda":
            for r, st in enumerate(self.dist.gather_bytes(torch.cuda.get_rng_state())):
                out[f"cuda.rank{r}"] = st
        return out

    def load_checkpoint(self, path: Path) -> None:
        """Restore everything :meth:`save_checkpoint` wrote.

        The world size may differ from the run that wrote it (the steps are the same);
        a rank without its own RNG state in the checkpoint keeps its seeded one.
        """
        import numpy as np
        import torch
        from safetensors.torch import load_file

        state = json.loads((path / "state.json").read_text(encoding="utf-8"))
        try:  # a checkpoint from before a config field existed has that field's default
            saved = TrainConfig.from_dict(state.get("config") or {}).to_dict()
        except ConfigError:
            saved = None
        if saved is not None:
            saved.pop("world_size", None)
        if saved != {k: v for k, v in self.config.to_dict().items() if k != "world_size"}:
            raise JobFailed(
                f"Checkpoint {path.name} was written with another config.",
                "Start a new run instead of resuming this one.",
            )
        weights = load_file(str(path / "adapter.safetensors"))
        named = dict(self.model.named_parameters())
        with torch.no_grad():
            for name, tensor in weights.items():
                named[name].copy_(tensor.to(named[name].device, named[name].dtype))
        opt_t = load_file(str(path / "optimizer.safetensors"))
        opt_state: dict[int, dict[str, Any]] = {}
        for key, val in opt_t.items():
            idx, _, name = key.partition(".")
            opt_state.setdefault(int(idx), {})[name] = val
        for idx, extra in state["optimizer"]["plain_state"].items():
            opt_state.setdefault(int(idx), {}).update(extra)
        groups = state["optimizer"]["param_groups"]
        for g in groups:
            if isinstance(g.get("betas"), list):
                g["betas"] = tuple(g["betas"])
        self.optimizer.load_state_dict({"state": opt_state, "param_groups": groups})
        rng = load_file(str(path / "rng.safetensors"))
        if self.dist is None:
            torch.set_rng_state(rng["torch_cpu"])
            cuda_states = [rng[k] for k in sorted(rng) if k.startswith("cuda_")]
            if cuda_states and torch.cuda.is_available():
                torch.cuda.set_rng_state_all(cuda_states)
        else:
            mine = rng.get(f"torch_cpu.rank{self.rank}")
            if mine is None and self.rank == 0:
                mine = rng["torch_cpu"]
            if mine is not None:
                torch.set_rng_state(mine)
            cuda_mine = rng.get(f"cuda.rank{self.rank}")
            if cuda_mine is not None and self.device == "cuda":
                torch.cuda.set_rng_state(cuda_mine)
        py = state["rng"]["python"]
        random.setstate((py[0], tuple(py[1]), py[2]))
        npst = state["rng"]["numpy"]
        np.random.set_state((npst[0], np.array(npst[1], dtype=np.uint32), *npst[2:]))
        self.step = int(state["step"])
        self.tokens_seen = int(state["tokens_seen"])
        self.history = list(state["history"])
        # The micro-batch a reduction after out-of-memory left: the resumed run keeps it.
        self.micro_batch = int(state.get("micro_batch_size") or self.micro_batch)
        self.reductions = [BatchReduction(**r) for r in state.get("oom_reductions", [])]

    def save_adapter(self, out: Path) -> Path:
        """The final adapter (adapter_model.safetensors + adapter_config.json), atomically."""
        tmp = out.with_name(out.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        self.model.save_pretrained(str(tmp), safe_serialization=True)
        shutil.rmtree(out, ignore_errors=True)
        os.replace(tmp, out)
        _fsync_dir(out.parent)
        return out


# ----------------------------------------------------------------------------- checkpoints


def complete_checkpoints(folder: Path) -> list[Path]:
    """Finished checkpoints, oldest first (a ``.tmp`` folder is an interrupted write)."""
    found: list[tuple[int, Path]] = []
    if not folder.is_dir():
        return []
    for p in folder.iterdir():
        rest = p.name.removeprefix(CHECKPOINT_PREFIX)
        if p.is_dir() and p.name.startswith(CHECKPOINT_PREFIX) and rest.isdigit():
            if (p / "state.json").is_file():
                found.append((int(rest), p))
    return [p for _, p in sorted(found)]


def prune_checkpoints(folder: Path, keep: int) -> None:
    """Remove interrupted writes and all but the newest ``keep`` checkpoints."""
    for p in folder.glob(f"{CHECKPOINT_PREFIX}*.tmp"):
        shutil.rmtree(p, ignore_errors=True)
    for p in complete_checkpoints(folder)[:-keep]:
        shutil.rmtree(p, ignore_errors=True)


# ----------------------------------------------------------------------------- lineage


def code_version() -> dict[str, str | None]:
    """DemoAI's version and, in a git checkout, the commit (read from .git, no subprocess)."""
    import app

    commit: str | None = None
    git = Path(app.__file__).resolve().parents[1] / ".git"
    try:
        head = (git / "HEAD").read_text().strip()
        if head.startswith("ref: "):
            ref = head[5:]
            ref_file = git / ref
            if ref_file.is_file():
                commit = ref_file.read_text().strip()
            else:
                packed = (git / "packed-refs").read_text()
                commit = next(
                    (ln.split()[0] for ln in packed.splitlines() if ln.endswith(ref)), None
                )
        else:
            commit = head
    except OSError:
        pass
    return {"demoai": app.__version__, "git_commit": commit}


def hash_weights(model_dir: Path) -> dict[str, str]:
    """sha256 of each weight file of a model folder."""
    from app.core.train.config import weight_files

    return {p.name: sha256_file(p) for p in weight_files(model_dir)}


def register_outputs(run_dir: Path, manifest: dict[str, Any]) -> Path:
    """Record a finished run's outputs: writes ``manifest.json`` (atomically) and returns it.

    The manifest holds everything needed to register the adapter with lineage
    (base model id + weight hashes, dataset version + file hash, config, seed,
    code and package versions, final metrics) and to repeat the run
    (``demoai train --from-manifest``). The model library reads it from here.
    """
    path = run_dir / "manifest.json"
    atomic_write_json(path, manifest)
    return path


# ----------------------------------------------------------------------------- the job


def _oom_failure(session: TrainSession) -> JobFailed:
    """The clear message for an out-of-memory the run cannot get past."""
    cfg = session.config
    micro = f", micro-batch {session.micro_batch}" if session.micro_batch != cfg.batch_size else ""
    message = (
        f"Out of memory at step {session.step + 1} (batch_size {cfg.batch_size}{micro}, "
        f"max_seq_len {cfg.max_seq_len})"
    )
    if cfg.auto_reduce_batch and session.micro_batch == 1:
        return JobFailed(message + ", even with one sequence per pass.", OOM_HINT_AT_ONE)
    hint = OOM_HINT if cfg.auto_reduce_batch else OOM_HINT_AUTO_OFF
    return JobFailed(message + ".", hint)


def train(ctx: JobContext, **params: Any) -> dict[str, Any]:
    """Job ``train.lora``: fine-tune a LoRA adapter; resumes from the newest checkpoint.

    With ``world_size`` > 1 this process is rank 0 of a DDP group whose other ranks it
    starts (:mod:`app.core.train.ddp`); a rank that dies fails the job cleanly.
    """
    config = TrainConfig.from_dict(params)
    problems = validate_against_model(config)
    if problems:
        raise JobFailed("The training config cannot run: " + "; ".join(problems) + ".")
    ckpt_dir = ctx.checkpoint_dir
    prune_checkpoints(ckpt_dir, config.keep_checkpoints)
    done = complete_checkpoints(ckpt_dir)
    if config.world_size == 1:
        return _train(ctx, config, done, None)
    ranks, group = _start_ranks(ctx, config, done[-1] if done else None)
    try:
        result = _train(ctx, config, done, group)
        ranks.wait(timeout=60.0)
        return result
    except BaseException as exc:
        if is_peer_failure(exc):
            raise ranks.failure() from exc
        raise
    finally:
        ranks.stop()
        group.close()


def _start_ranks(
    ctx: JobContext, config: TrainConfig, resume: Path | None
) -> tuple[RankProcesses, DistGroup]:
    """Start ranks 1..W-1, wait until each is up, then join the process group as rank 0."""
    import torch

    world = config.world_size
    cuda = config.device == "cuda" or (config.device == "auto" and torch.cuda.is_available())
    if cuda and torch.cuda.device_count() < world:
        raise JobFailed(
            f"world_size {world} needs {world} CUDA GPUs; torch sees {torch.cuda.device_count()}.",
            "Lower world_size to the number of GPUs, or use device cpu.",
        )
    folder = ctx.run_dir / "ddp" / f"attempt-{ctx.attempt}"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    spec = {
        **config.with_changes(device="cuda" if cuda else "cpu").to_dict(),
        "_checkpoint_dir": str(ctx.checkpoint_dir),
        "_resume": str(resume) if resume else None,
    }
    atomic_write_json(folder / "config.json", spec)
    listen = listen_loopback()
    port = int(listen.getsockname()[1])
    ranks = RankProcesses(world, port, folder / "config.json", folder)
    atomic_write_json(folder / "pids.json", {str(r): pid for r, pid in ranks.pids().items()})
    ctx.log(
        f"starting {world} training processes ({'nccl' if cuda else 'gloo'}, "
        f"127.0.0.1:{port}); ranks 1..{world - 1}: pids "
        f"{', '.join(str(p) for p in ranks.pids().values())}",
        "info",
    )
    try:
        end = time.monotonic() + timeout_s()
        while not all((folder / f"rank{r}.ready").exists() for r in range(1, world)):
            if ranks.dead():
                raise ranks.failure(grace=0.0)
            if ctx.cancelled():
                raise Cancelled()
            if time.monotonic() > end:
                raise JobFailed(
                    f"The training processes did not start within {timeout_s():.0f} s.",
                    f"See the logs in {folder}.",
                )
            time.sleep(0.05)
        group = DistGroup.join(0, world, port, cuda, listen)
    except BaseException:
        ranks.stop()
        listen.close()
        raise
    return ranks, group


def _train(
    ctx: JobContext, config: TrainConfig, done: list[Path], group: DistGroup | None
) -> dict[str, Any]:
    import psutil

    t_start = time.time()
    ctx.progress(None, "loading the model and the data")
    try:
        session = TrainSession(config, log=lambda text, level: ctx.log(text, level), dist=group)
    except JobFailed:
        raise
    except BaseException as exc:
        if is_out_of_memory(exc):
            raise JobFailed(f"Out of memory while loading the model: {exc}", OOM_HINT) from exc
        raise
    ckpt_dir = ctx.checkpoint_dir
    if done:
        session.load_checkpoint(done[-1])
        ctx.log(
            f"attempt {ctx.attempt}: resumed from {done[-1].name} (step {session.step}); "
            f"points for later steps replace those of the earlier attempt",
            "info",
        )
        if session.micro_batch != config.micro_batch:
            ctx.log(
                f"continuing with micro-batch {session.micro_batch} x {session.accum_passes} "
                f"accumulated passes, as reduced after out-of-memory in an earlier attempt",
                "info",
            )
    total = session.total_steps
    ctx.log(
        f"training {session.trainable_params:,} parameters ({', '.join(session.target_modules)}) "
        f"on {session.device} with {config.method}: {session.n_train} examples, "
        f"{total} steps" + (f", {session.world_size} processes" if group else ""),
        "info",
    )
    proc = psutil.Process()
    last_saved = session.step if done else -1

    def checkpoint() -> None:
        nonlocal last_saved
        if last_saved != session.step:
            session.save_checkpoint(ckpt_dir, {"attempt": ctx.attempt})
            prune_checkpoints(ckpt_dir, config.keep_checkpoints)
            last_saved = session.step

    eval_loss: float | None = None
    try:
        while session.step < total:
            if session.agree_stop(ctx.cancelled()):
                checkpoint()
                ctx.log(f"cancelled at step {session.step}; checkpoint written", "info")
                raise Cancelled()
            stats = session.train_step()
            s = stats.step
            if stats.skipped:
                what = (
                    f"loss {stats.loss}, gradient norm {stats.grad_norm}"
                    f" (limit {config.grad_norm_limit:g})"
                )
                ctx.log(
                    f"step {s}: non-finite or exploding values ({what}); update skipped", "warning"
                )
                if config.stop_on_nan:
                    raise JobFailed(f"Training diverged at step {s}: {what}.", NAN_HINT)
            ctx.metric("train_loss", s, stats.loss)
            ctx.metric("learning_rate", s, stats.lr)
            ctx.metric("grad_norm", s, stats.grad_norm)
            ctx.metric("tokens_per_s", s, stats.tokens / max(stats.seconds, 1e-9))
            ctx.metric("cpu_mem_mb", s, proc.memory_info().rss / 2**20)
            if session.device == "cuda":
                import torch

                ctx.metric("gpu_mem_mb", s, torch.cuda.max_memory_allocated() / 2**20)
            for r, (tokens, seconds, cpu_mb, gpu_mb) in enumerate(stats.per_rank or []):
                ctx.metric(f"tokens_per_s.rank{r}", s, tokens / max(seconds, 1e-9))
                ctx.metric(f"cpu_mem_mb.rank{r}", s, cpu_mb)
                if session.device == "cuda":
                    ctx.metric(f"gpu_mem_mb.rank{r}", s, gpu_mb)
            if config.eval_every and s % config.eval_every == 0 and s < total:
                eval_loss = session.evaluate()
                if eval_loss is not None:
                    ctx.metric("eval_loss", s, eval_loss)
            reduced = (
                f" · micro-batch {stats.micro_batch} (reduced)"
                if stats.micro_batch != config.micro_batch
                else ""
            )
            ctx.progress(s / total, f"step {s}/{total} · loss {stats.loss:.4f}{reduced}")
            if config.save_every and s % config.save_every == 0 and s < total:
                checkpoint()
    except (Cancelled, JobFailed):
        raise
    except BaseException as exc:
        if is_out_of_memory(exc) and not is_peer_failure(exc):
            raise _oom_failure(session) from exc
        raise

    eval_loss = session.evaluate()
    if eval_loss is not None:
        ctx.metric("eval_loss", total, eval_loss)
    ctx.progress(1.0, "saving the adapter")
    adapter = session.save_adapter(ctx.run_dir / "adapter")
    atomic_write_json(ctx.run_dir / "history.json", session.history)
    final_loss = session.history[-1]["train_loss"] if session.history else None
    metrics = {
        "train_loss": final_loss,
        "eval_loss": eval_loss,
        "steps": session.step,
        "tokens": session.tokens_seen,
        "duration_s": round(time.time() - t_start, 3),
    }
    manifest = build_manifest(session, ctx.job_id, ctx.attempt, metrics, adapter)
    register_outputs(ctx.run_dir, manifest)
    from app.core.train.library import register_adapter

    model_id = register_adapter(ctx.workspace, config, adapter, manifest)
    ctx.artifact("adapter", adapter)
    ctx.artifact("manifest", ctx.run_dir / "manifest.json")
    result = {
        "adapter": str(adapter),
        "manifest": str(ctx.run_dir / "manifest.json"),
        "model_id": model_id,
        **metrics,
        "micro_batch_size": session.micro_batch,
        "oom_reductions": len(session.reductions),
        "world_size": session.world_size,
    }
    ctx.result(result)
    return result


def build_manifest(
    session: TrainSession, job_id: str, attempt: int, metrics: dict[str, Any], adapter: Path
) -> dict[str, Any]:
    """Everything that made the adapter: inputs by content hash, config, seed, versions."""
    from app.core.system.versions import package_versions

    cfg = session.config
    data_path = Path(cfg.data_path).expanduser().resolve()
    # After a reduction the config says the micro-batch the run ended with, so that a
    # repeat (--from-manifest) starts with it: same data order, rate and loss, and no
    # out-of-memory first. What was configured and what happened is under "memory".
    run_cfg = (
        cfg.with_changes(micro_batch_size=session.micro_batch)
        if session.micro_batch != cfg.micro_batch
        else cfg
    )
    return {
        "format": 1,
        "kind": "train.lora",
        "job_id": job_id,
        "attempts": attempt,
        "created_at": time.time(),
        "name": cfg.name,
        "config": run_cfg.to_dict(),
        "memory": {
            "batch_size": cfg.batch_size,
            "configured_micro_batch": cfg.micro_batch,
            "micro_batch_size": session.micro_batch,
            "accumulated_passes": session.accum_passes,
            "effective_batch": cfg.effective_batch,
            "auto_reduce_batch": cfg.auto_reduce_batch,
            "oom_reductions": [asdict(r) for r in session.reductions],
        },
        "seed": cfg.seed,
        "base_model": {
            "path": str(session.base_dir.resolve()),
            "id": cfg.base_model_id,
            "weights_sha256": hash_weights(session.base_dir),
        },
        "data": {
            "path": str(data_path),
            "sha256": sha256_file(data_path),
            "format": cfg.data_format,
            "dataset_version": cfg.dataset_version,
            "mapping": cfg.data_mapping,
            "records": session.n_records,
            "train_examples": session.n_train,
            "eval_examples": session.n_eval,
        },
        "adapter": {
            "path": str(adapter),
            "files": {p.name: sha256_file(p) for p in sorted(adapter.iterdir()) if p.is_file()},
            "method": cfg.method,
            "target_modules": session.target_modules,
            "trainable_params": session.trainable_params,
        },
        "device": session.device,
        "code_version": code_version(),
        "packages": package_versions(),
        "metrics": metrics,
    }
