"""Job kinds that ship with DemoAI. Capabilities add theirs here as they land."""

from app.core.jobs.registry import JobKind, register_kind

register_kind(
    JobKind(
        name="workspace.verify",
        entry="app.core.workspace.verify:verify_workspace",
        title="Verify workspace",
        resumable=True,
        description="Check the database and the sha256 of every file in the workspace.",
    )
)

register_kind(
    JobKind(
        name="models.import",
        entry="app.core.models.registry:import_job",
        title="Import model",
        description="Copy (or reference) a GGUF file or a Hugging Face folder into the library.",
    )
)

register_kind(
    JobKind(
        name="models.pull",
        entry="app.core.models.hub:pull_model",
        title="Download model",
        resumable=True,
        description="Download files of a Hugging Face Hub repo, verify them and register the model.",
    )
)

register_kind(
    JobKind(
        name="train.lora",
        entry="app.core.train.loop:train",
        title="Fine-tune (LoRA)",
        resource="gpu",
        resumable=True,
        description="Train a LoRA / QLoRA adapter on a base model; resumes from its last checkpoint; "
        "halves the micro-batch on out-of-memory (auto_reduce_batch).",
    )
)

register_kind(
    JobKind(
        name="train.merge",
        entry="app.core.train.library:merge_job",
        title="Merge adapter",
        description="Merge a LoRA adapter into its base model: a new model in the library.",
    )
)

register_kind(
    JobKind(
        name="data.import",
        entry="app.core.data.importers:import_job",
        title="Import dataset",
        description="Import CSV, TSV, JSON, JSONL, Parquet, an HF dataset folder or text as a dataset.",
    )
)

register_kind(
    JobKind(
        name="data.apply",
        entry="app.core.data.recipes:apply_job",
        title="Prepare dataset",
        description="Apply a recipe (a list of preparation steps) to a dataset version.",
    )
)

register_kind(
    JobKind(
        name="eval.run",
        entry="app.core.eval.runner:run_eval",
        title="Evaluate models",
        resumable=True,
        description="Evaluate models on a dataset version with a set of metrics; "
        "resumes after the samples already stored.",
    )
)

register_kind(
    JobKind(
        name="eval.checkpoints",
        entry="app.core.eval.checkpoints:eval_checkpoints_job",
        title="Evaluate checkpoints",
        description="Perplexity of every checkpoint of a fine-tuning run (and its base and final "
        "adapter) on the run's held-out texts, keyed by step.",
    )
)

register_kind(
    JobKind(
        name="export.gguf",
        entry="app.core.export.gguf:export_gguf_job",
        title="Export GGUF",
        description="Convert a model to GGUF (f16/bf16/f32, quantized), verify it against "
        "the source and register it with lineage.",
    )
)

register_kind(
    JobKind(
        name="export.docker",
        entry="app.core.export.docker:export_docker_job",
        title="Docker bundle",
        description="Write a Docker bundle (model, server, offline wheelhouse, compose, SBOM, "
        "SHA256SUMS); optionally build and save the image.",
    )
)

register_kind(
    JobKind(
        name="export.package",
        entry="app.core.export.package:export_package_job",
        title="Model package",
        description="Write a portable, checksummed package of a model for another workstation.",
    )
)

register_kind(
    JobKind(
        name="models.inspect",
        entry="app.core.inspect.job:inspect_job",
        title="Inspect model",
        description="Weight statistics per tensor (cached by file hash), LoRA update norms and "
        "ranks, or a per-tensor comparison with another model or a GGUF export; headers only "
        "for the architecture.",
    )
)
