"""Pipelines in the workspace database: spec versions, runs, steps and the step cache."""

from __future__ import annotations

import json
import os
import time
import uuid
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from app.core.errors import ConfigError, NotFoundError
from app.core.runs.spec import PipelineSpec

if TYPE_CHECKING:
    from app.core.workspace.workspace import Workspace

#: A run's states. ``gate_failed``: the eval gate stopped the chain (exit code 4). A run
#: whose process died shows as ``interrupted`` (computed when read).
RUN_STATES = ("running", "succeeded", "failed", "gate_failed")


@dataclass
class PipelineRecord:
    id: str
    name: str
    version: int
    spec: PipelineSpec
    created_at: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "version": self.version,
            "spec": self.spec.to_dict(),
            "spec_hash": self.spec.hash(),
            "created_at": self.created_at,
        }


@dataclass
class StepRecord:
    step_id: str
    idx: int
    kind: str
    key: str
    state: str  # running, succeeded, reused, failed, gate_failed, skipped
    job_id: str | None
    output: dict[str, Any] | None
    detail: str

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class RunRecord:
    id: str
    pipeline_id: str
    pipeline: str
    version: int
    state: str
    reason: str
    snapshot: dict[str, Any]
    error: str | None
    created_at: float
    finished_at: float | None
    steps: list[StepRecord] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        d = dict(self.__dict__)
        d["steps"] = [s.to_dict() for s in self.steps]
        return d


def _loads(text: str | None) -> Any:
    return json.loads(text) if text else None


class PipelineStore:
    def __init__(self, workspace: Workspace) -> None:
        self.ws = workspace
        self.db = workspace.db

    # -- specs ---------------------------------------------------------------------------
    def save(self, spec: PipelineSpec) -> tuple[PipelineRecord, bool]:
        """Store ``spec`` as the pipeline's newest version; (record, True if a new version).

        A spec equal to the newest version adds nothing.
        """
        now = time.time()
        text = spec.canonical()
        digest = spec.hash()
        with self.db.transaction() as c:
            row = c.execute("SELECT id FROM pipelines WHERE name = ?", (spec.name,)).fetchone()
            if row is None:
                pid = uuid.uuid4().hex[:12]
                c.execute(
                    "INSERT INTO pipelines(id, name, created_at) VALUES (?, ?, ?)",
                    (pid, spec.name, now),
                )
                last = None
            else:
                pid = row[0]
                last = c.execute(
                    "SELECT version, spec_hash FROM pipeline_versions WHERE pipeline_id = ? "
                    "ORDER BY version DESC LIMIT 1",
                    (pid,),
                ).fetchone()
            if last is not None and last[1] == digest:
                return self.get(spec.name, int(last[0])), False
            version = 1 if last is None else int(last[0]) + 1
            c.execute(
                "INSERT INTO pipeline_versions(pipeline_id, version, spec, spec_hash, created_at) "
                "VALUES (?, ?, ?, ?, ?)",
                (pid, version, text, digest, now),
            )
        return self.get(spec.name, version), True

    def _pipeline_row(self, ref: str) -> dict[str, Any]:
        row = self.db.query_one("SELECT * FROM pipelines WHERE id = ? OR name = ?", (ref, ref))
        if row is None:
            raise NotFoundError(
                f"No pipeline '{ref}'.", "List pipelines with `demoai pipeline list`."
            )
        return row

    def get(self, ref: str, version: int | None = None) -> PipelineRecord:
        """A pipeline by name or id (``NAME@N`` for version N); the newest version by default."""
        if version is None and "@" in ref:
            ref, _, v = ref.rpartition("@")
            if not v.isdigit():
                raise ConfigError(f"'{v}' is not a version number.", "Use NAME@N, e.g. colours@2.")
            version = int(v)
        p = self._pipeline_row(ref)
        if version is None:
            row = self.db.query_one(
                "SELECT * FROM pipeline_versions WHERE pipeline_id = ? ORDER BY version DESC "
                "LIMIT 1",
                (p["id"],),
            )
        else:
            row = self.db.query_one(
                "SELECT * FROM pipeline_versions WHERE pipeline_id = ? AND version = ?",
                (p["id"], version),
            )
        if row is None:
            raise NotFoundError(f"The pipeline {p['name']} has no version {version}.")
        spec = PipelineSpec.from_dict(json.loads(row["spec"]))
        return PipelineRecord(p["id"], p["name"], int(row["version"]), spec, row["created_at"])

    def pipelines(self) -> list[PipelineRecord]:
        rows = self.db.query("SELECT name FROM pipelines ORDER BY name")
        return [self.get(r["name"]) for r in rows]

    def versions(self, ref: str) -> list[int]:
        p = self._pipeline_row(ref)
        rows = self.db.query(
            "SELECT version FROM pipeline_versions WHERE pipeline_id = ? ORDER BY version",
            (p["id"],),
        )
        return [int(r["version"]) for r in rows]

    # -- runs ----------------------------------------------------------------------------
    def create_run(self, rec: PipelineRecord, reason: str, snapshot: dict[str, Any]) -> str:
        from app.core.system.procs import process_start_time

        run_id = f"{time.strftime('%Y%m%d-%H%M%S')}-{rec.name[:24]}-{uuid.uuid4().hex[:6]}"
        pid = os.getpid()
        self.db.execute(
            "INSERT INTO pipeline_runs(id, pipeline_id, version, state, reason, snapshot, "
            "created_at, pid, pid_started) VALUES (?, ?, ?, 'running', ?, ?, ?, ?, ?)",
            (
                run_id,
                rec.id,
                rec.version,
                reason,
                json.dumps(snapshot),
                time.time(),
                pid,
                process_start_time(pid),
            ),
        )
        return run_id

    def update_snapshot(self, run_id: str, snapshot: dict[str, Any]) -> None:
        self.db.execute(
            "UPDATE pipeline_runs SET snapshot = ? WHERE id = ?", (json.dumps(snapshot), run_id)
        )

    def finish_run(self, run_id: str, state: str, error: str | None = None) -> None:
        assert state in RUN_STATES
        self.db.execute(
            "UPDATE pipeline_runs SET state = ?, error = ?, finished_at = ? WHERE id = ?",
            (state, error, time.time(), run_id),
        )

    def set_step(
        self,
        run_id: str,
        step_id: str,
        *,
        idx: int,
        kind: str,
        key: str,
        state: str,
        job_id: str | None = None,
        output: dict[str, Any] | None = None,
        detail: str = "",
    ) -> None:
        self.db.execute(
            "INSERT OR REPLACE INTO pipeline_run_steps(run_id, step_id, idx, kind, key, state, "
            "job_id, output, detail, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                run_id,
                step_id,
                idx,
                kind,
                key,
                state,
                job_id,
                json.dumps(output) if output is not None else None,
                detail,
                time.time(),
            ),
        )

    def _run(self, r: dict[str, Any]) -> RunRecord:
        name = self.db.query_one("SELECT name FROM pipelines WHERE id = ?", (r["pipeline_id"],))
        steps = [
            StepRecord(
                s["step_id"],
                int(s["idx"]),
                s["kind"],
                s["key"],
                s["state"],
                s["job_id"],
                _loads(s["output"]),
                s["detail"] or "",
            )
            for s in self.db.query(
                "SELECT * FROM pipeline_run_steps WHERE run_id = ? ORDER BY idx", (r["id"],)
            )
        ]
        state = r["state"]
        if state == "running" and r["pid"] is not None:
            from app.core.system.procs import process_alive

            if not process_alive(int(r["pid"]), r["pid_started"]):
                state = "interrupted"  # its process was killed: `pipeline run` resumes it
        return RunRecord(
            r["id"],
            r["pipeline_id"],
            name["name"] if name else "?",
            int(r["version"]),
            state,
            r["reason"],
            json.loads(r["snapshot"]),
            r["error"],
            r["created_at"],
            r["finished_at"],
            steps,
        )

    def get_run(self, ref: str) -> RunRecord:
        rows = self.db.query("SELECT * FROM pipeline_runs WHERE id = ?", (ref,))
        if not rows and len(ref) >= 4:
            esc = ref.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
            rows = self.db.query(
                "SELECT * FROM pipeline_runs WHERE id LIKE ? ESCAPE '\\'", (esc + "%",)
            )
        if len(rows) != 1:
            if rows:
                raise ConfigError(f"'{ref}' matches {len(rows)} pipeline runs.")
            raise NotFoundError(
                f"No pipeline run '{ref}'.", "See `demoai pipeline show NAME` for its runs."
            )
        return self._run(rows[0])

    def runs(self, pipeline: str | None = None) -> list[RunRecord]:
        """Runs, newest first (of one pipeline when given)."""
        if pipeline is None:
            rows = self.db.query("SELECT * FROM pipeline_runs ORDER BY created_at DESC, rowid DESC")
        else:
            p = self._pipeline_row(pipeline)
            rows = self.db.query(
                "SELECT * FROM pipeline_runs WHERE pipeline_id = ? "
                "ORDER BY created_at DESC, rowid DESC",
                (p["id"],),
            )
        return [self._run(r) for r in rows]

    # -- the step cache ------------------------------------------------------------------
    def cached_output(self, key: str) -> dict[str, Any] | None:
        row = self.db.query_one("SELECT output FROM pipeline_step_outputs WHERE key = ?", (key,))
        return json.loads(row["output"]) if row else None

    def store_output(self, key: str, kind: str, job_id: str | None, output: dict[str, Any]) -> None:
        self.db.execute(
            "INSERT OR REPLACE INTO pipeline_step_outputs(key, kind, job_id, output, created_at) "
            "VALUES (?, ?, ?, ?, ?)",
            (key, kind, job_id, json.dumps(output), time.time()),
        )

    def forget_output(self, key: str) -> None:
        self.db.execute("DELETE FROM pipeline_step_outputs WHERE key = ?", (key,))

    def step_job(self, key: str) -> str | None:
        row = self.db.query_one("SELECT job_id FROM pipeline_step_jobs WHERE key = ?", (key,))
        return str(row["job_id"]) if row else None

    def set_step_job(self, key: str, job_id: str) -> None:
        self.db.execute(
            "INSERT OR REPLACE INTO pipeline_step_jobs(key, job_id, created_at) VALUES (?, ?, ?)",
            (key, job_id, time.time()),
        )

    def mark_made(self, dataset_id: str, versions: list[str], key: str) -> None:
        with self.db.transaction() as c:
            for v in versions:
                c.execute(
                    "INSERT OR IGNORE INTO pipeline_made_versions(dataset_id, version_hash, key) "
                    "VALUES (?, ?, ?)",
                    (dataset_id, v, key),
                )

    def made_versions(self, dataset_id: str) -> set[str]:
        rows = self.db.query(
            "SELECT version_hash FROM pipeline_made_versions WHERE dataset_id = ?", (dataset_id,)
        )
        return {r["version_hash"] for r in rows}
