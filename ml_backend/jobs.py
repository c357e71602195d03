"""Auto-annotate whole Label Studio projects as resumable background jobs.

A job splits a project's tasks into chunks. With `REDIS_URL` each chunk is an rq job, run by any
number of `rq worker` processes sharing the Redis (one per GPU, on any machine); without it the
same chunk code runs in a background thread of the backend process (or inline from the CLI).

Safe to kill at any moment:
- a task is skipped when it already has a prediction of the job's model version, so a chunk that
  runs twice writes nothing twice;
- a chunk holds a lease (a Redis key with a short TTL, renewed while it runs); a chunk whose
  lease lapsed while it was running (its worker died) is queued again by the next status check;
- a task that fails for a permanent reason (broken image) is recorded with its reason and
  skipped; transient failures (Label Studio 5xx, download timeouts) raise so rq retries the chunk.

    python -m ml_backend.jobs annotate --project 7 [--task-ids 1 2 3] [--model grounding_dino]
                                       [--prompt "bottle . can"] [--with-masks] [--overwrite]
    python -m ml_backend.jobs status JOB_ID
    python -m ml_backend.jobs cancel JOB_ID
"""

from __future__ import annotations

import argparse
import json
import logging
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field

from ml_backend.config import Settings
from ml_backend.config import settings as default_settings

if TYPE_CHECKING:
    from ml_backend.labelstudio.predictor import Predictor

log = logging.getLogger(__name__)
QUEUE_NAME = "od-annotation"
LEASE_TTL_S = 20
LEASE_RENEW_S = 5
CHUNK_TIMEOUT_S = 3600
RETRY_INTERVALS_S = [5, 20, 60]
RETRY_SUFFIX = " (will retry)"

JobState = Literal["queued", "running", "finished", "cancelled"]
ChunkState = Literal["queued", "running", "done", "failed"]


class JobsUnavailableError(RuntimeError):
    """Redis (or Label Studio) cannot be reached: background jobs cannot start or report."""


class TransientTaskError(RuntimeError):
    """A task failed for a reason that may pass (Label Studio 5xx, a download timeout): retry the chunk."""


class AnnotateSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    project: int = Field(gt=0)
    task_ids: list[int] | None = None
    model: Literal["grounding_dino", "sam3", "florence2"] | None = None
    prompt: str | None = None
    with_masks: bool | None = None
    overwrite: bool = False


class JobStatus(BaseModel):
    job_id: str
    state: JobState
    project: int
    model_version: str
    total: int
    done: int
    failed: dict[str, str]
    images_per_s: float | None
    eta_s: float | None
    created_at: float
    started_at: float | None
    finished_at: float | None


# ---- job state ----


class JobStore(Protocol):
    """Where job progress lives: Redis (shared by every worker) or this process's memory."""

    def create(self, job_id: str, meta: dict[str, Any], chunks: list[list[int]]) -> None: ...
    def meta(self, job_id: str) -> dict[str, Any] | None: ...
    def update(self, job_id: str, **fields: Any) -> None: ...
    def chunk(self, job_id: str, index: int) -> list[int]: ...
    def chunk_states(self, job_id: str) -> dict[int, ChunkState]: ...
    def set_chunk_state(self, job_id: str, index: int, state: ChunkState) -> None: ...
    def mark_done(self, job_id: str, task_id: int) -> None: ...
    def mark_failed(self, job_id: str, task_id: int, reason: str) -> None: ...
    def progress(self, job_id: str) -> tuple[int, dict[str, str]]: ...
    def acquire_lease(self, job_id: str, index: int, token: str) -> bool: ...
    def renew_lease(self, job_id: str, index: int, token: str) -> bool: ...
    def release_lease(self, job_id: str, index: int, token: str) -> None: ...
    def lease_alive(self, job_id: str, index: int) -> bool: ...


class RedisJobStore:
    def __init__(self, redis: Any) -> None:
        self.redis = redis

    def _key(self, job_id: str, part: str) -> str:
        return f"od-annotation:job:{job_id}:{part}"

    def create(self, job_id: str, meta: dict[str, Any], chunks: list[list[int]]) -> None:
        with self.redis.pipeline() as pipe:
            pipe.hset(
                self._key(job_id, "meta"), mapping={key: json.dumps(value) for key, value in meta.items()}
            )
            pipe.hset(
                self._key(job_id, "chunks"),
                mapping={str(i): json.dumps(chunk) for i, chunk in enumerate(chunks)},
            )
            pipe.hset(
                self._key(job_id, "chunk_states"), mapping={str(i): "queued" for i in range(len(chunks))}
            )
            pipe.execute()

    def meta(self, job_id: str) -> dict[str, Any] | None:
        raw = self.redis.hgetall(self._key(job_id, "meta"))
        return {key.decode(): json.loads(value) for key, value in raw.items()} if raw else None

    def update(self, job_id: str, **fields: Any) -> None:
        self.redis.hset(
            self._key(job_id, "meta"), mapping={key: json.dumps(value) for key, value in fields.items()}
        )

    def chunk(self, job_id: str, index: int) -> list[int]:
        return json.loads(self.redis.hget(self._key(job_id, "chunks"), str(index)))

    def chunk_states(self, job_id: str) -> dict[int, ChunkState]:
        raw = self.redis.hgetall(self._key(job_id, "chunk_states"))
        return {int(key): value.decode() for key, value in raw.items()}

    def set_chunk_state(self, job_id: str, index: int, state: ChunkState) -> None:
        self.redis.hset(self._key(job_id, "chunk_states"), str(index), state)

    def mark_done(self, job_id: str, task_id: int) -> None:
        with self.redis.pipeline() as pipe:
            pipe.sadd(self._key(job_id, "done"), task_id)
            pipe.hdel(self._key(job_id, "failed"), task_id)
            pipe.execute()

    def mark_failed(self, job_id: str, task_id: int, reason: str) -> None:
        self.redis.hset(self._key(job_id, "failed"), str(task_id), reason)

    def is_done(self, job_id: str, task_id: int) -> bool:
        return bool(self.redis.sismember(self._key(job_id, "done"), task_id))

    def progress(self, job_id: str) -> tuple[int, dict[str, str]]:
        failed = self.redis.hgetall(self._key(job_id, "failed"))
        return self.redis.scard(self._key(job_id, "done")), {
            k.decode(): v.decode() for k, v in failed.items()
        }

    def acquire_lease(self, job_id: str, index: int, token: str) -> bool:
        return bool(self.redis.set(self._key(job_id, f"lease:{index}"), token, nx=True, ex=LEASE_TTL_S))

    def renew_lease(self, job_id: str, index: int, token: str) -> bool:
        key = self._key(job_id, f"lease:{index}")
        if self.redis.get(key) != token.encode():
            return False
        return bool(self.redis.expire(key, LEASE_TTL_S))

    def release_lease(self, job_id: str, index: int, token: str) -> None:
        key = self._key(job_id, f"lease:{index}")
        if self.redis.get(key) == token.encode():
            self.redis.delete(key)

    def lease_alive(self, job_id: str, index: int) -> bool:
        return bool(self.redis.exists(self._key(job_id, f"lease:{index}")))


@dataclass
class _MemoryJob:
    meta: dict[str, Any]
    chunks: list[list[int]]
    chunk_states: dict[int, ChunkState]
    done: set[int] = field(default_factory=set)
    failed: dict[str, str] = field(default_factory=dict)
    leases: dict[int, str] = field(default_factory=dict)


class MemoryJobStore:
    """Single-process store for the embedded mode (no REDIS_URL); leases never lapse there."""

    def __init__(self) -> None:
        self._jobs: dict[str, _MemoryJob] = {}
        self._lock = threading.Lock()

    def create(self, job_id: str, meta: dict[str, Any], chunks: list[list[int]]) -> None:
        with self._lock:
            self._jobs[job_id] = _MemoryJob(dict(meta), chunks, dict.fromkeys(range(len(chunks)), "queued"))

    def meta(self, job_id: str) -> dict[str, Any] | None:
        job = self._jobs.get(job_id)
        return dict(job.meta) if job else None

    def update(self, job_id: str, **fields: Any) -> None:
        with self._lock:
            self._jobs[job_id].meta.update(fields)

    def chunk(self, job_id: str, index: int) -> list[int]:
        return list(self._jobs[job_id].chunks[index])

    def chunk_states(self, job_id: str) -> dict[int, ChunkState]:
        return dict(self._jobs[job_id].chunk_states)

    def set_chunk_state(self, job_id: str, index: int, state: ChunkState) -> None:
        with self._lock:
            self._jobs[job_id].chunk_states[index] = state

    def mark_done(self, job_id: str, task_id: int) -> None:
        with self._lock:
            self._jobs[job_id].done.add(task_id)
            self._jobs[job_id].failed.pop(str(task_id), None)

    def mark_failed(self, job_id: str, task_id: int, reason: str) -> None:
        with self._lock:
            self._jobs[job_id].failed[str(task_id)] = reason

    def progress(self, job_id: str) -> tuple[int, dict[str, str]]:
        job = self._jobs[job_id]
        return len(job.done), dict(job.failed)

    def acquire_lease(self, job_id: str, index: int, token: str) -> bool:
        with self._lock:
            return self._jobs[job_id].leases.setdefault(index, token) == token

    def renew_lease(self, job_id: str, index: int, token: str) -> bool:
        return self._jobs[job_id].leases.get(index) == token

    def release_lease(self, job_id: str, index: int, token: str) -> None:
        with self._lock:
            if self._jobs[job_id].leases.get(index) == token:
                del self._jobs[job_id].leases[index]

    def lease_alive(self, job_id: str, index: int) -> bool:
        return True


# ---- Label Studio project access (label-studio-sdk) ----


class LabelStudioProject:
    """The few Label Studio API calls a job makes, through label-studio-sdk."""

    def __init__(self, settings: Settings) -> None:
        from label_studio_sdk import LabelStudio

        if not settings.label_studio_url or not settings.label_studio_api_key:
            raise JobsUnavailableError("background jobs need LABEL_STUDIO_URL and LABEL_STUDIO_API_KEY")
        self.client = LabelStudio(
            base_url=settings.label_studio_url, api_key=settings.label_studio_api_key.get_secret_value()
        )

    def label_config(self, project: int) -> str:
        return self.client.projects.get(project).label_config

    def task_ids(self, project: int) -> list[int]:
        return sorted(task.id for task in self.client.tasks.list(project=project, fields="task_only"))

    def tasks_with_version(self, project: int, model_version: str) -> set[int]:
        predictions = self.client.predictions.list(project=project)
        return {p.task for p in predictions if p.model_version == model_version}

    def task(self, task_id: int) -> dict[str, Any]:
        task = self.client.tasks.get(task_id)
        return {"id": task.id, "data": dict(task.data or {})}

    def predictions_of(self, task_id: int, model_version: str) -> list[int]:
        return [p.id for p in self.client.predictions.list(task=task_id) if p.model_version == model_version]

    def write_prediction(self, task_id: int, prediction: dict[str, Any], replace: bool) -> None:
        if replace:
            for prediction_id in self.predictions_of(task_id, prediction["model_version"]):
                self.client.predictions.delete(prediction_id)
        self.client.predictions.create(
            task=task_id,
            result=prediction["result"],
            model_version=prediction["model_version"],
            score=prediction["score"],
        )


# ---- running a chunk ----


def is_transient(error: Exception) -> bool:
    status = getattr(error, "status", None)
    if isinstance(status, int) and (status >= 500 or status == 429):
        return True
    text = str(error)
    return any(marker in text for marker in ("Timeout", "timed out", "took longer than", "ConnectionError"))


@contextmanager
def _lease(store: JobStore, job_id: str, index: int) -> Iterator[bool]:
    """Hold the chunk's lease (renewed in a thread) while the body runs; yields False if another run holds it."""
    token = uuid.uuid4().hex
    if not store.acquire_lease(job_id, index, token):
        yield False
        return
    stop = threading.Event()

    def renew() -> None:
        while not stop.wait(LEASE_RENEW_S):
            store.renew_lease(job_id, index, token)

    renewer = threading.Thread(target=renew, daemon=True, name=f"lease-{job_id}-{index}")
    renewer.start()
    try:
        yield True
    finally:
        stop.set()
        renewer.join()
        store.release_lease(job_id, index, token)


def process_chunk(
    store: JobStore, job_id: str, index: int, project: LabelStudioProject, settings: Settings
) -> str:
    """Annotate one chunk; idempotent. Returns what happened (for logs and rq results)."""
    meta = store.meta(job_id)
    if meta is None:
        return "unknown job"
    if meta["state"] == "cancelled" or store.chunk_states(job_id).get(index) == "done":
        return "skipped"
    with _lease(store, job_id, index) as held:
        if not held:
            return "another run holds this chunk"
        store.set_chunk_state(job_id, index, "running")
        if meta.get("started_at") is None:
            store.update(job_id, started_at=time.time(), state="running")
        try:
            _annotate_chunk(store, job_id, index, meta, project, settings)
        except BaseException:
            store.set_chunk_state(job_id, index, "queued")  # rq retries it; not a lost worker
            raise
        store.set_chunk_state(job_id, index, "done")
    _finish_if_complete(store, job_id)
    return "done"


def _annotate_chunk(
    store: JobStore,
    job_id: str,
    index: int,
    meta: dict[str, Any],
    project: LabelStudioProject,
    settings: Settings,
) -> None:
    from ml_backend.labelstudio.interface import ProjectInterface
    from ml_backend.labelstudio.predictor import BatchOverrides

    spec = AnnotateSpec.model_validate(meta["spec"])
    interface = ProjectInterface.from_config(project.label_config(spec.project))
    todo = []
    for task_id in store.chunk(job_id, index):
        if not spec.overwrite and project.predictions_of(task_id, meta["model_version"]):
            store.mark_done(job_id, task_id)
        else:
            todo.append(project.task(task_id))
    overrides = BatchOverrides(model=spec.model, prompt=spec.prompt, with_masks=spec.with_masks)
    transient: list[str] = []
    for outcome in job_predictor(settings).annotate(todo, interface, overrides):
        if outcome.prediction is not None:
            project.write_prediction(outcome.task_id, outcome.prediction, replace=spec.overwrite)
            store.mark_done(job_id, outcome.task_id)
        elif outcome.error is not None and is_transient(outcome.error):
            transient.append(f"task {outcome.task_id}: {outcome.error}")
            store.mark_failed(job_id, outcome.task_id, f"{outcome.error}{RETRY_SUFFIX}")
        else:
            store.mark_failed(job_id, outcome.task_id, str(outcome.error))
    if transient:
        raise TransientTaskError("; ".join(transient))


def _finish_if_complete(store: JobStore, job_id: str) -> None:
    states = store.chunk_states(job_id)
    meta = store.meta(job_id) or {}
    if meta.get("state") != "cancelled" and all(state in ("done", "failed") for state in states.values()):
        store.update(job_id, state="finished", finished_at=time.time())


_predictor: Predictor | None = None
_predictor_lock = threading.Lock()


def job_predictor(settings: Settings) -> Predictor:
    """One predictor per process (models load once), with Label Studio image access from settings."""
    global _predictor
    with _predictor_lock:
        if _predictor is None:
            from ml_backend.labelstudio.access import LabelStudioAuth, TaskImageResolver
            from ml_backend.labelstudio.predictor import Predictor, get_backend

            resolver = TaskImageResolver.from_settings(settings, LabelStudioAuth.from_settings(settings))
            _predictor = Predictor(get_backend(settings), resolver.local_path, settings)
    return _predictor


# ---- rq entry points (module-level: rq imports them by name) ----


def run_chunk(job_id: str, index: int) -> str:
    """What an `rq worker` executes for one chunk."""
    store = RedisJobStore(_redis(default_settings.redis_url))
    return process_chunk(store, job_id, index, LabelStudioProject(default_settings), default_settings)


def chunk_failed(job: Any, connection: Any, exc_type: Any, value: Any, traceback: Any) -> None:
    """rq on_failure: once retries are spent, the chunk's unfinished tasks are recorded as failed."""
    job_id, index = job.args
    store = RedisJobStore(connection)
    if job.retries_left:
        return
    _, failed = store.progress(job_id)
    for task_id in store.chunk(job_id, index):
        if not store.is_done(job_id, task_id):
            reason = failed.get(str(task_id), str(value)).removesuffix(RETRY_SUFFIX)
            store.mark_failed(
                job_id, task_id, f"{reason} (gave up after {default_settings.job_retries} retries)"
            )
    store.set_chunk_state(job_id, index, "failed")
    _finish_if_complete(store, job_id)


def _redis(url: str | None) -> Any:
    from redis import Redis

    return Redis.from_url(url or "redis://localhost:6379/0", socket_connect_timeout=3, socket_timeout=30)


# ---- the manager: submit, status, cancel ----


class JobManager:
    """Starts, reports and cancels jobs, on Redis + rq when REDIS_URL is set, else in threads."""

    def __init__(self, settings: Settings, project: LabelStudioProject | None = None) -> None:
        self.settings = settings
        self._project = project
        if settings.redis_url:
            self.redis = _redis(settings.redis_url)
            self.store: JobStore = RedisJobStore(self.redis)
        else:
            self.redis = None
            self.store = MemoryJobStore()

    @property
    def project(self) -> LabelStudioProject:
        if self._project is None:
            self._project = LabelStudioProject(self.settings)
        return self._project

    def submit(self, spec: AnnotateSpec) -> str:
        from ml_backend.labelstudio.predictor import model_version_for

        self._check_redis()
        model_version = model_version_for(self.settings, spec.model)
        task_ids = self._select_tasks(spec, model_version)
        size = self.settings.job_chunk_size
        chunks = [task_ids[start : start + size] for start in range(0, len(task_ids), size)]
        job_id = uuid.uuid4().hex[:12]
        meta = {
            "spec": spec.model_dump(),
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
            project=meta["spec"]["project"],
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

    def _select_tasks(self, spec: AnnotateSpec, model_version: str) -> list[int]:
        task_ids = spec.task_ids if spec.task_ids is not None else self.project.task_ids(spec.project)
        if spec.overwrite:
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
        _finish_if_complete(self.store, job_id)

    def _requeue_abandoned(self, job_id: str, meta: dict[str, Any]) -> None:
        """A chunk marked running whose lease lapsed lost its worker (killed): queue it again."""
        if self.redis is None or meta["state"] != "running":
            return
        for index, state in self.store.chunk_states(job_id).items():
            if state == "running" and not self.store.lease_alive(job_id, index):
                log.warning("job %s chunk %d lost its worker; queued again", job_id, index)
                self.store.set_chunk_state(job_id, index, "queued")
                self._enqueue(job_id, index)

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


# ---- command line ----


def _progress_loop(manager: JobManager, job_id: str, poll_s: float = 1.0) -> JobStatus:
    from tqdm import tqdm

    status = manager.status(job_id)
    assert status is not None
    with tqdm(total=status.total, unit="task", desc=f"job {job_id}") as bar:
        while True:
            status = manager.status(job_id)
            assert status is not None
            bar.n = status.done + len(status.failed)
            bar.set_postfix(img_s=status.images_per_s or 0, failed=len(status.failed))
            bar.refresh()
            if status.state in ("finished", "cancelled"):
                return status
            time.sleep(poll_s)


def _print_summary(status: JobStatus) -> None:
    print(
        f"job {status.job_id}: {status.state}, {status.done}/{status.total} annotated, {len(status.failed)} failed"
    )
    if status.images_per_s:
        print(f"throughput: {status.images_per_s:.2f} images/s")
    for task_id, reason in sorted(status.failed.items()):
        print(f"  task {task_id}: {reason}")


def main(argv: list[str] | None = None) -> int:
    from ml_backend.logs import configure_logging

    parser = argparse.ArgumentParser(
        prog="python -m ml_backend.jobs", description="Auto-annotate Label Studio projects"
    )
    commands = parser.add_subparsers(dest="command", required=True)
    annotate = commands.add_parser(
        "annotate", help="annotate a project (all tasks without this model's prediction)"
    )
    annotate.add_argument("--project", type=int, required=True)
    annotate.add_argument("--task-ids", type=int, nargs="+")
    annotate.add_argument("--model", choices=["grounding_dino", "sam3", "florence2"])
    annotate.add_argument("--prompt")
    annotate.add_argument("--with-masks", action="store_true", default=None)
    annotate.add_argument("--overwrite", action="store_true")
    annotate.add_argument(
        "--no-wait", action="store_true", help="with REDIS_URL: print the job id and return"
    )
    for name in ("status", "cancel"):
        commands.add_parser(name).add_argument("job_id")
    args = parser.parse_args(argv)
    configure_logging("WARNING")

    manager = JobManager(default_settings)
    if args.command == "annotate":
        spec = AnnotateSpec(
            project=args.project,
            task_ids=args.task_ids,
            model=args.model,
            prompt=args.prompt,
            with_masks=args.with_masks,
            overwrite=args.overwrite,
        )
        job_id = manager.submit(spec)
        if manager.redis is not None:
            print(f"job {job_id} queued on {QUEUE_NAME}")
            if args.no_wait:
                return 0
        status = _progress_loop(manager, job_id)
    else:
        found = manager.status(args.job_id) if args.command == "status" else manager.cancel(args.job_id)
        if found is None:
            print(f"no job {args.job_id}")
            return 1
        status = found
    _print_summary(status)
    return 0 if status.state != "cancelled" else 2


if __name__ == "__main__":
    raise SystemExit(main())
