"""Running one chunk of a job: idempotent, under a lease, retried by rq on transient failures.

`run_chunk` and `chunk_failed` are what rq imports by name.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from ml_backend.config import Settings
from ml_backend.config import settings as default_settings
from ml_backend.jobs.project import LabelStudioProject
from ml_backend.jobs.spec import AnnotateSpec, TransientTaskError
from ml_backend.jobs.store import JobStore, RedisJobStore

if TYPE_CHECKING:
    from ml_backend.labelstudio.predictor import Predictor

log = logging.getLogger(__name__)
LEASE_RENEW_S = 5
# After a failed run rq still has to file its retry; until it does, rq shows the job as started
# while the chunk is queued and unleased, which a status check would take for a dead worker.
# Shorter than the first retry interval, so the retry finds the lease free.
FAILED_LEASE_LINGER_S = 2
RETRY_SUFFIX = " (will retry)"


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
    failed = False
    try:
        yield True
    except BaseException:
        failed = True
        raise
    finally:
        stop.set()
        renewer.join()
        store.release_lease(job_id, index, token, linger_s=FAILED_LEASE_LINGER_S if failed else 0)


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
    finish_if_complete(store, job_id)
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
    wanted = []
    for task_id in store.chunk(job_id, index):
        if not spec.overwrite and project.predictions_of(task_id, meta["model_version"]):
            store.mark_done(job_id, task_id)
        else:
            wanted.append(task_id)
    todo = project.tasks(spec.project, wanted)
    for missing in set(wanted) - {task["id"] for task in todo}:
        store.mark_failed(job_id, missing, "task not found in the project (deleted?)")
    overrides = BatchOverrides(
        model=spec.model,
        prompt=spec.prompt,
        with_masks=spec.with_masks,
        polygon_tolerance=spec.polygon_tolerance,
        polygon_max_points=spec.polygon_max_points,
        polygon_min_area=spec.polygon_min_area,
    )
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


def finish_if_complete(store: JobStore, job_id: str) -> None:
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


def run_chunk(job_id: str, index: int) -> str:
    """What an `rq worker` executes for one chunk."""
    store = RedisJobStore(redis_client(default_settings.redis_url))
    return process_chunk(store, job_id, index, LabelStudioProject(default_settings), default_settings)


def chunk_failed(job: Any, connection: Any, exc_type: Any, value: Any, traceback: Any) -> None:
    """rq on_failure: once retries are spent, the chunk's unfinished tasks are recorded as failed."""
    job_id, index = job.args
    store = RedisJobStore(connection)
    # rq also calls this for a run abandoned by a killed worker, long after the chunk was queued
    # again and finished: that outcome stands.
    if job.retries_left or store.chunk_states(job_id).get(index) == "done":
        return
    _, failed = store.progress(job_id)
    for task_id in store.chunk(job_id, index):
        if not store.is_done(job_id, task_id):
            reason = failed.get(str(task_id), str(value)).removesuffix(RETRY_SUFFIX)
            store.mark_failed(
                job_id, task_id, f"{reason} (gave up after {default_settings.job_retries} retries)"
            )
    store.set_chunk_state(job_id, index, "failed")
    finish_if_complete(store, job_id)


def redis_client(url: str | None) -> Any:
    from redis import Redis

    return Redis.from_url(url or "redis://localhost:6379/0", socket_connect_timeout=3, socket_timeout=30)
