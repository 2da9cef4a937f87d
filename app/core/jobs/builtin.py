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
