"""Starts, reports and cancels jobs: rq + Redis when REDIS_URL is set, else a thread of this process."""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Sequence
from datetime import UTC
from typing import Any

from ml_backend.config import Settings
from ml_backend.jobs.chunks import (
    chunk_failed,
    finish_if_complete,
    process_chunk,
    redis_client,
    run_chunk,
)
from ml_backend.jobs.project import LabelStudioProject
from ml_backend.jobs.spec import AnnotateSpec, JobSource, JobStatus, JobsUnavailableError, TransientTaskError
from ml_backend.jobs.store import LEASE_TTL_S, JobStore, MemoryJobStore, RedisJobStore

log = logging.getLogger(__name__)
QUEUE_NAME = "od-annotation"
CHUNK_TIMEOUT_S = 3600
RETRY_INTERVALS_S = [5, 20, 60]


class JobManager:
    """Starts, reports and cancels jobs, on Redis + rq when REDIS_URL is set, else in threads."""

    def __init__(self, settings: Settings, project: LabelStudioProject | None = None) -> None:
        self.settings = settings
        self._project = project
        if settings.redis_url:
            self.redis = redis_client(settings.redis_url)
            self.store: JobStore = RedisJobStore(self.redis)
        else:
            self.redis = None
            self.store = MemoryJobStore()

    @property
    def project(self) -> LabelStudioProject:
        if self._project is None:
            self._project = LabelStudioProject(self.settings)
        return self._project

    def submit(self, spec: AnnotateSpec, source: JobSource = "api", *, check_existing: bool = True) -> str:
        """Start a job; `check_existing=False` skips listing the project's predictions first (each chunk
        still skips a task that has one), for callers that must return quickly."""
        from ml_backend.labelstudio.predictor import model_version_for

        self._check_redis()
        model_version = model_version_for(self.settings, spec.model)
        task_ids = self._select_tasks(spec, model_version, check_existing)
        size = self.settings.job_chunk_size
        chunks = [task_ids[start : start + size] for start in range(0, len(task_ids), size)]
        job_id = uuid.uuid4().hex[:12]
        meta = {
            "spec": spec.model_dump(),
            "source": source,
            "state": "queued",
            "model_version": model_version,
            "total": len(task_ids),
            "created_at": time.time(),
            "started_at": None,
            "finished_at": None,
            "rq_jobs": [],
        }
        self.store.create(job_id, meta, chunks)
        if not chunks:
            self.store.update(job_id, state="finished", finished_at=time.time())
        elif self.redis is not None:
            self.store.update(job_id, rq_jobs=[self._enqueue(job_id, index) for index in range(len(chunks))])
        else:
            threading.Thread(target=self._run_inline, args=(job_id, len(chunks)), daemon=True).start()
        log.info(
            "job %s: project %s, %d tasks in %d chunks", job_id, spec.project, len(task_ids), len(chunks)
        )
        return job_id

    def status(self, job_id: str) -> JobStatus | None:
        self._check_redis()
        meta = self.store.meta(job_id)
        if meta is None:
            return None
        self._requeue_abandoned(job_id, meta)
        meta = self.store.meta(job_id) or meta
        done, failed = self.store.progress(job_id)
        started, finished = meta.get("started_at"), meta.get("finished_at")
        elapsed = ((finished or time.time()) - started) if started else 0.0
        rate = done / elapsed if elapsed > 0 and done else None
        remaining = meta["total"] - done - len(failed)
        return JobStatus(
            job_id=job_id,
            state=meta["state"],
            source=meta.get("source", "api"),
            project=meta["spec"]["project"],
            model=meta["spec"].get("model") or self.settings.text_prompt_model,
            prompt=meta["spec"].get("prompt"),
            model_version=meta["model_version"],
            total=meta["total"],
            done=done,
            failed=failed,
            images_per_s=round(rate, 3) if rate else None,
            eta_s=round(remaining / rate, 1) if rate and meta["state"] == "running" else None,
            created_at=meta["created_at"],
            started_at=started,
            finished_at=finished,
        )

    def list(self, limit: int = 50) -> list[JobStatus]:
        """The newest jobs first."""
        self._check_redis()
        found = (self.status(job_id) for job_id in self.store.job_ids(limit))
        return [status for status in found if status is not None]

    def cancel(self, job_id: str) -> JobStatus | None:
        self._check_redis()
        meta = self.store.meta(job_id)
        if meta is None:
            return None
        if meta["state"] not in ("finished", "cancelled"):
            self.store.update(job_id, state="cancelled", finished_at=time.time())
            self._cancel_queued(meta.get("rq_jobs", []))
        return self.status(job_id)

    # ---- internals ----

    def _select_tasks(self, spec: AnnotateSpec, model_version: str, check_existing: bool = True) -> list[int]:
        task_ids = spec.task_ids if spec.task_ids is not None else self.project.task_ids(spec.project)
        if spec.overwrite or not check_existing:
            return list(task_ids)
        annotated = self.project.tasks_with_version(spec.project, model_version)
        return [task_id for task_id in task_ids if task_id not in annotated]

    def _enqueue(self, job_id: str, index: int) -> str:
        from rq import Queue, Retry
        from rq.job import Callback

        queue = Queue(QUEUE_NAME, connection=self.redis)
        job = queue.enqueue(
            run_chunk,
            job_id,
            index,
            retry=Retry(max=self.settings.job_retries, interval=RETRY_INTERVALS_S)
            if self.settings.job_retries
            else None,
            job_timeout=CHUNK_TIMEOUT_S,
            on_failure=Callback(chunk_failed),
            description=f"od-annotation job {job_id} chunk {index}",
        )
        return job.id

    def _run_inline(self, job_id: str, chunk_count: int) -> None:
        for index in range(chunk_count):
            for attempt in range(self.settings.job_retries + 1):
                try:
                    process_chunk(self.store, job_id, index, self.project, self.settings)
                    break
                except TransientTaskError as error:
                    log.warning("job %s chunk %d: %s (attempt %d)", job_id, index, error, attempt + 1)
                    time.sleep(min(RETRY_INTERVALS_S[min(attempt, len(RETRY_INTERVALS_S) - 1)], 5))
                except Exception:
                    log.exception("job %s chunk %d failed", job_id, index)
                    break
            else:
                self.store.set_chunk_state(job_id, index, "failed")
            if (self.store.meta(job_id) or {}).get("state") == "cancelled":
                return
        finish_if_complete(self.store, job_id)

    def _requeue_abandoned(self, job_id: str, meta: dict[str, Any]) -> None:
        """Queue again a chunk whose worker died (killed): one marked running whose lease lapsed, or
        one still marked queued whose rq job a worker took and never got to lease."""
        if self.redis is None or meta["state"] not in ("queued", "running"):
            return
        rq_jobs = list(meta.get("rq_jobs", []))
        requeued = False
        for index, state in self.store.chunk_states(job_id).items():
            if self.store.lease_alive(job_id, index):
                continue
            claimed = state == "queued" and index < len(rq_jobs) and self._taken_and_dropped(rq_jobs[index])
            if state == "running" or claimed:
                log.warning("job %s chunk %d lost its worker; queued again", job_id, index)
                self.store.set_chunk_state(job_id, index, "queued")
                new_rq_job = self._enqueue(job_id, index)
                if index < len(rq_jobs):
                    rq_jobs[index] = new_rq_job
                requeued = True
        if requeued:
            self.store.update(job_id, rq_jobs=rq_jobs)

    def _taken_and_dropped(self, rq_job_id: str) -> bool:
        """rq marked the job started, yet no lease appeared within a lease's lifetime: a live worker
        takes the lease milliseconds after starting a chunk, so that worker died in between."""
        from rq.exceptions import NoSuchJobError
        from rq.job import Job
        from rq.utils import now

        try:
            rq_job = Job.fetch(rq_job_id, connection=self.redis)
        except NoSuchJobError:
            return False
        started = rq_job.started_at
        if rq_job.get_status() != "started" or started is None:
            return False
        if started.tzinfo is None:
            started = started.replace(tzinfo=UTC)
        return (now() - started).total_seconds() > LEASE_TTL_S

    def _cancel_queued(self, rq_job_ids: Sequence[str]) -> None:
        if self.redis is None:
            return
        from rq.job import Job

        for rq_job in Job.fetch_many(list(rq_job_ids), connection=self.redis):
            if rq_job is not None and rq_job.get_status() in ("queued", "scheduled", "deferred"):
                rq_job.cancel()

    def _check_redis(self) -> None:
        if self.redis is None:
            return
        from redis.exceptions import RedisError

        try:
            self.redis.ping()
        except RedisError as error:
            raise JobsUnavailableError(
                f"Redis at REDIS_URL is unreachable ({error.__class__.__name__}): background jobs are unavailable"
            ) from None
