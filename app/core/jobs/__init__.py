"""Jobs: the registry of job kinds, the job table and the event log schema."""

from app.core.jobs.events import EventReader, EventWriter
from app.core.jobs.registry import JobKind, get_kind, kinds, register_kind
from app.core.jobs.store import ACTIVE_STATES, FINAL_STATES, Job, JobService, JobState

__all__ = [
    "ACTIVE_STATES",
    "FINAL_STATES",
    "EventReader",
    "EventWriter",
    "Job",
    "JobKind",
    "JobService",
    "JobState",
    "get_kind",
    "kinds",
    "register_kind",
]
