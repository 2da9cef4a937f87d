"""Job kinds whose entry points live in the workers layer (they start the model host).

The core may not depend on the workers, so these kinds are registered here, not
in ``app/core/jobs/builtin.py``; importing any ``app.workers`` module (the
supervisor that the window and the CLI use, the job child) registers them.
"""

from app.core.jobs.registry import JobKind, register_kind

register_kind(
    JobKind(
        name="data.self_instruct",
        entry="app.workers.synth_jobs:self_instruct_job",
        title="Self-instruct",
        description="Generate new instruction rows from seed tasks with a local model "
        "(ROUGE-L and heuristic filters, provenance columns); a new version for review.",
    )
)

register_kind(
    JobKind(
        name="data.augment",
        entry="app.workers.synth_jobs:augment_job",
        title="Augment (paraphrase)",
        description="N paraphrases of a column per row with a local model (near-duplicates "
        "dropped, provenance columns); a new version for review.",
    )
)

register_kind(
    JobKind(
        name="eval.agent",
        entry="app.workers.agent_eval_job:agent_eval_job",
        title="Evaluate agents",
        resumable=True,
        description="Run agent versions x models on a dataset of tasks (each in a scratch copy "
        "of its granted folders); success, tool-call accuracy, steps, tokens, time; resumes "
        "after the tasks already stored.",
    )
)

register_kind(
    JobKind(
        name="eval.harness",
        entry="app.workers.harness_job:harness_job",
        title="Harness task",
        resumable=True,
        description="An lm-evaluation-harness task against a library model through the model "
        "host; the harness scores, the results are an eval run (docs/eval-harness.md).",
    )
)
