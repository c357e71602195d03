"""Auto-annotate whole Label Studio projects as resumable background jobs.

A job splits a project's tasks into chunks. With `REDIS_URL` each chunk is an rq job, run by any
number of `rq worker` processes sharing the Redis (one per GPU, on any machine); without it the
same chunk code runs in a background thread of the backend process (or inline from the CLI).

Safe to kill at any moment:
- a task is skipped when it already has a prediction of the job's model version, so a chunk that
  runs twice writes nothing twice;
- a chunk holds a lease (a Redis key with a short TTL, renewed while it runs); a chunk whose
  lease lapsed while it was running, or that a worker took from the queue and never leased (its
  worker died), is queued again by the next status check;
- a task that fails for a permanent reason (broken image) is recorded with its reason and
  skipped; transient failures (Label Studio 5xx, download timeouts) raise so rq retries the chunk.

One file per part: `spec` (request and status types), `store` (Redis or memory), `project`
(Label Studio API), `chunks` (running a chunk; rq's entry points), `manager` (submit, status,
cancel), `routes` (HTTP), `cli` (`python -m ml_backend.jobs annotate|status|cancel`).
"""

from ml_backend.jobs.chunks import chunk_failed, run_chunk
from ml_backend.jobs.manager import JobManager
from ml_backend.jobs.spec import AnnotateSpec, JobStatus, JobsUnavailableError

__all__ = ["AnnotateSpec", "JobManager", "JobStatus", "JobsUnavailableError", "chunk_failed", "run_chunk"]
