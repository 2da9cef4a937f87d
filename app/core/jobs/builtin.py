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
