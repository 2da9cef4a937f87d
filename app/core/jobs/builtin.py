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
