"""Background jobs against real parts: redis-server, `rq worker` processes and a real Label Studio."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from ml_backend.config import Settings, load_settings
from ml_backend.jobs import AnnotateSpec, JobManager, JobStatus, JobsUnavailableError
from ml_backend.jobs.routes import create_jobs_blueprint
from tests.conftest import ROOT, LabelStudio
from tests.labelstudio.configs import RECT_ONLY_CONFIG
from tests.support import free_port, make_image, running_redis

pytestmark = [pytest.mark.slow, pytest.mark.e2e]
VERSION = "od-annotation/grounding_dino:IDEA-Research/grounding-dino-base"


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with running_redis(tmp_path_factory.mktemp("redis")) as url:
        yield url


def job_env(label_studio: LabelStudio, redis_url: str, cache: Path) -> dict[str, str]:
    return {
        **os.environ,
        "REDIS_URL": redis_url,
        "LABEL_STUDIO_URL": label_studio.url,
        "LABEL_STUDIO_API_KEY": label_studio.token,
        "DEFAULT_BOX_THRESHOLD": "0",
        "DEFAULT_TEXT_THRESHOLD": "0",
        "IMAGE_CACHE_DIR": str(cache),
        "PYTHONUNBUFFERED": "1",
    }


def start_worker(env: dict[str, str], log: Path) -> subprocess.Popen:
    rq = Path(sys.executable).with_name("rq")
    command = [
        str(rq),
        "worker",
        "--url",
        env["REDIS_URL"],
        "--with-scheduler",
        "--worker-class",
        "rq.worker.SimpleWorker",
        "od-annotation",
    ]
    with log.open("ab") as out:
        return subprocess.Popen(
            command, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )


def stop(process: subprocess.Popen, sig: int = signal.SIGTERM) -> None:
    if process.poll() is None:
        os.killpg(process.pid, sig)
        process.wait(timeout=30)


def make_project(
    label_studio: LabelStudio, title: str, good: int, broken: int
) -> tuple[int, list[int], set[int]]:
    project = label_studio.api(
        "POST", "/api/projects", json={"title": title, "label_config": RECT_ONLY_CONFIG}
    ).json()
    files = {
        f"img{i:02d}.png": (f"img{i:02d}.png", make_image(48 + i % 3 * 8, 40), "image/png")
        for i in range(good)
    }
    files |= {
        f"broken{i}.png": (f"broken{i}.png", b"this is not a picture", "image/png") for i in range(broken)
    }
    label_studio.api("POST", f"/api/projects/{project['id']}/import", files=files)
    tasks = label_studio.tasks(project["id"])
    broken_ids = {task["id"] for task in tasks if "broken" in task["data"]["photo"]}
    assert len(tasks) == good + broken and len(broken_ids) == broken
    return project["id"], sorted(task["id"] for task in tasks), broken_ids


def predictions_per_task(label_studio: LabelStudio, project: int) -> dict[int, int]:
    counts: dict[int, int] = {}
    for prediction in label_studio.api("GET", f"/api/predictions?project={project}").json():
        if prediction["model_version"] == VERSION:
            counts[prediction["task"]] = counts.get(prediction["task"], 0) + 1
    return counts


def wait_for(
    manager: JobManager, job_id: str, until, timeout: float = 240, log: Path | None = None
) -> JobStatus:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = manager.status(job_id)
        assert status is not None
        if until(status):
            return status
        time.sleep(0.5)
    chunk_states = manager.store.chunk_states(job_id)
    worker_log = log.read_text(errors="replace")[-4000:] if log and log.exists() else ""
    raise AssertionError(
        f"job {job_id} stuck: {manager.status(job_id)}\nchunks: {chunk_states}\n{worker_log}"
    )


def settings_for(label_studio: LabelStudio, redis_url: str | None, cache: Path, **overrides) -> Settings:
    return load_settings(
        redis_url=redis_url,
        label_studio_url=label_studio.url,
        label_studio_api_key=label_studio.token,
        image_cache_dir=str(cache),
        job_chunk_size=5,
        **overrides,
    )


@pytest.fixture(scope="module")
def worker_env(
    label_studio: LabelStudio, redis_url: str, tiny_hf_cache: Path, tmp_path_factory
) -> dict[str, str]:
    env = job_env(label_studio, redis_url, tmp_path_factory.mktemp("worker-images"))
    env["JOB_CHUNK_SIZE"] = "5"
    return env


def test_project_with_broken_images_finishes_with_reasons(
    label_studio: LabelStudio, redis_url: str, worker_env: dict[str, str], tmp_path: Path
) -> None:
    project, task_ids, broken = make_project(label_studio, "jobs: 40 tasks", good=38, broken=2)
    worker = start_worker(worker_env, tmp_path / "worker.log")
    try:
        manager = JobManager(settings_for(label_studio, redis_url, tmp_path / "images"))
        job_id = manager.submit(AnnotateSpec(project=project))
        status = wait_for(manager, job_id, lambda s: s.state == "finished")
    finally:
        stop(worker)
    assert (status.total, status.done, len(status.failed)) == (40, 38, 2)
    assert {int(task) for task in status.failed} == broken
    assert all("is not an image" in reason for reason in status.failed.values()), status.failed
    assert status.images_per_s and status.images_per_s > 0
    counts = predictions_per_task(label_studio, project)
    assert set(counts) == set(task_ids) - broken
    assert set(counts.values()) == {1}
    # a second job finds nothing left to do: every task already has this model version
    assert manager.status(manager.submit(AnnotateSpec(project=project))).total == 2


def test_killed_worker_resumes_without_duplicates(
    label_studio: LabelStudio, redis_url: str, worker_env: dict[str, str], tmp_path: Path
) -> None:
    project, task_ids, _ = make_project(label_studio, "jobs: kill", good=30, broken=0)
    log = tmp_path / "worker.log"
    manager = JobManager(settings_for(label_studio, redis_url, tmp_path / "images"))
    first = start_worker(worker_env, log)
    job_id = manager.submit(AnnotateSpec(project=project))
    try:
        wait_for(manager, job_id, lambda s: s.done >= 7, log=log)
        stop(first, signal.SIGKILL)
        killed_at = manager.status(job_id)
        assert killed_at.state == "running" and killed_at.done < 30
        second = start_worker(worker_env, log)
        try:
            status = wait_for(manager, job_id, lambda s: s.state == "finished", log=log)
        finally:
            stop(second)
    finally:
        stop(first, signal.SIGKILL)
    assert (status.done, status.failed) == (30, {})
    counts = predictions_per_task(label_studio, project)
    assert counts == dict.fromkeys(task_ids, 1), "every task exactly one prediction of this model version"


def test_chunk_taken_by_a_worker_that_died_before_its_lease_is_queued_again(
    label_studio: LabelStudio, redis_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The window between rq handing a chunk to a worker and the chunk's lease: a worker killed there
    leaves the chunk marked queued while rq holds its job as started, and nothing else recovers it."""
    from rq import Queue, Worker
    from rq.job import Job

    from ml_backend.jobs import chunks
    from ml_backend.jobs import manager as manager_module

    own_db = redis_url.rsplit("/", 1)[0] + "/2"
    manager = JobManager(settings_for(label_studio, own_db, tmp_path / "images", job_retries=0))
    job_id = manager.submit(AnnotateSpec(project=1, task_ids=list(range(1, 11))), check_existing=False)
    queue = Queue(manager_module.QUEUE_NAME, connection=manager.redis)
    first_rq_job = manager.store.meta(job_id)["rq_jobs"][0]
    worker = Worker([queue], connection=manager.redis)
    worker.register_birth()
    taken, _ = worker.dequeue_job_and_maintain_ttl(timeout=1)
    assert taken.id == first_rq_job
    worker.prepare_job_execution(taken)  # ... and the worker is killed here, before run_chunk leases

    manager.status(job_id)
    assert manager.store.meta(job_id)["rq_jobs"][0] == first_rq_job, (
        "within a lease's lifetime it may be alive"
    )

    monkeypatch.setattr(manager_module, "LEASE_TTL_S", -1)
    manager.status(job_id)
    requeued = manager.store.meta(job_id)["rq_jobs"][0]
    assert requeued != first_rq_job and requeued in queue.get_job_ids()
    assert manager.store.chunk_states(job_id)[0] == "queued"
    manager.status(job_id)
    assert queue.get_job_ids().count(requeued) == 1 and manager.store.meta(job_id)["rq_jobs"][0] == requeued

    # rq's own clean-up later fails the dropped run; a chunk the new run finished stays done
    manager.store.set_chunk_state(job_id, 0, "done")
    dropped = Job.fetch(first_rq_job, connection=manager.redis)
    chunks.chunk_failed(dropped, manager.redis, RuntimeError, RuntimeError("abandoned"), None)
    assert manager.store.chunk_states(job_id)[0] == "done"
    assert manager.status(job_id).failed == {}


def test_a_failed_run_holds_its_lease_until_rq_has_filed_the_retry(
    label_studio: LabelStudio, redis_url: str, tmp_path: Path
) -> None:
    """Between a run's failure and rq filing its retry the chunk is queued and rq shows it started: the
    lingering lease keeps a status check from taking it for a dead worker's, then frees it for the retry."""
    from ml_backend.jobs.chunks import FAILED_LEASE_LINGER_S, process_chunk
    from ml_backend.jobs.project import LabelStudioProject

    own_db = redis_url.rsplit("/", 1)[0] + "/3"
    manager = JobManager(settings_for(label_studio, own_db, tmp_path / "images"))
    job_id = manager.submit(AnnotateSpec(project=1, task_ids=[1, 2]), check_existing=False)
    gone = load_settings(
        redis_url=own_db,
        label_studio_url=f"http://127.0.0.1:{free_port()}",
        label_studio_api_key="0" * 40,
        image_cache_dir=str(tmp_path / "images"),
    )
    with pytest.raises(Exception, match="Connection refused"):
        process_chunk(manager.store, job_id, 0, LabelStudioProject(gone), gone)
    assert manager.store.chunk_states(job_id)[0] == "queued"
    assert manager.store.lease_alive(job_id, 0)
    time.sleep(FAILED_LEASE_LINGER_S + 0.5)
    assert not manager.store.lease_alive(job_id, 0)


def test_cancel_stops_within_one_chunk(
    label_studio: LabelStudio, redis_url: str, worker_env: dict[str, str], tmp_path: Path
) -> None:
    project, _, _ = make_project(label_studio, "jobs: cancel", good=30, broken=0)
    manager = JobManager(settings_for(label_studio, redis_url, tmp_path / "images"))
    worker = start_worker(worker_env, tmp_path / "worker.log")
    try:
        job_id = manager.submit(AnnotateSpec(project=project))
        wait_for(manager, job_id, lambda s: s.done >= 1)
        cancelled = manager.cancel(job_id)
        assert cancelled is not None and cancelled.state == "cancelled"
        time.sleep(8)
        final = manager.status(job_id)
    finally:
        stop(worker)
    assert final.state == "cancelled"
    assert final.done <= cancelled.done + 5, "at most the chunk in flight finishes after a cancel"
    assert final.done < 30


def test_without_redis_the_job_runs_in_a_thread(
    label_studio: LabelStudio, tiny_hf_cache: Path, tmp_path: Path
) -> None:
    project, task_ids, broken = make_project(label_studio, "jobs: embedded", good=4, broken=1)
    manager = JobManager(settings_for(label_studio, None, tmp_path / "images", default_box_threshold=0.0))
    job_id = manager.submit(AnnotateSpec(project=project, task_ids=task_ids))
    status = wait_for(manager, job_id, lambda s: s.state == "finished")
    assert (status.total, status.done, set(map(int, status.failed))) == (5, 4, broken)
    assert set(predictions_per_task(label_studio, project)) == set(task_ids) - broken


def test_redis_down_gives_a_clear_503(label_studio: LabelStudio, tmp_path: Path) -> None:
    from flask import Flask

    dead = f"redis://127.0.0.1:{free_port()}/0"
    settings = settings_for(label_studio, dead, tmp_path / "images")
    with pytest.raises(JobsUnavailableError, match="Redis at REDIS_URL is unreachable"):
        JobManager(settings).submit(AnnotateSpec(project=1))
    app = Flask(__name__)
    app.register_blueprint(create_jobs_blueprint(settings))
    answer = app.test_client().post("/jobs/annotate", json={"project": 1})
    assert answer.status_code == 503
    assert "Redis at REDIS_URL is unreachable" in answer.get_json()["message"]
    assert app.test_client().post("/jobs/annotate", json={"project": 0}).status_code == 422


def test_redis_down_leaves_interactive_predict_working(
    label_studio: LabelStudio, tiny_hf_cache: Path, tmp_path: Path
) -> None:
    from ml_backend.labelstudio.base import create_app
    from model import ODAnnotationModel
    from tests.labelstudio.configs import keypoint_click_body
    from tests.support import serve_images

    app = create_app(ODAnnotationModel)
    app.register_blueprint(
        create_jobs_blueprint(settings_for(label_studio, f"redis://127.0.0.1:{free_port()}/0", tmp_path))
    )
    client = app.test_client()
    assert client.post("/jobs/annotate", json={"project": 1}).status_code == 503
    with serve_images() as server:
        url = server.add("/a.png", make_image(64, 48))
        body = keypoint_click_body(url, 64, 48)
        answer = client.post("/predict", json=body)
    assert answer.status_code == 200, answer.get_json()
    assert answer.get_json()["results"][0]["result"]


def test_cli_annotates_with_a_progress_bar_and_a_summary(
    label_studio: LabelStudio, tiny_hf_cache: Path, tmp_path: Path
) -> None:
    project, task_ids, broken = make_project(label_studio, "jobs: cli", good=3, broken=1)
    env = job_env(label_studio, "", tmp_path / "images")
    env.pop("REDIS_URL")
    command = [sys.executable, "-m", "ml_backend.jobs", "annotate", "--project", str(project)]
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "finished, 3/4 annotated, 1 failed" in result.stdout
    assert f"task {next(iter(broken))}: " in result.stdout
    assert "4/4" in result.stderr, "tqdm progress reaches every task"
    assert set(predictions_per_task(label_studio, project)) == set(task_ids) - broken


def test_transient_failures_are_retried_then_reported(
    label_studio: LabelStudio, redis_url: str, worker_env: dict[str, str], tmp_path: Path
) -> None:
    from tests.support import serve_images

    with serve_images() as images:
        good = images.add("/good.png", make_image(40, 30))
        flaky = images.add("/busy.png", b"busy", status=503)
        project = label_studio.api(
            "POST", "/api/projects", json={"title": "jobs: transient", "label_config": RECT_ONLY_CONFIG}
        ).json()["id"]
        label_studio.api("POST", f"/api/projects/{project}/import", json=[{"photo": good}, {"photo": flaky}])
        # A database of its own: the SIGKILLed worker of another test may still hold the scheduler
        # lock of db 0 (until its TTL lapses), and delayed retries need a live scheduler.
        own_db = redis_url.rsplit("/", 1)[0] + "/1"
        env = {**worker_env, "JOB_RETRIES": "1", "REDIS_URL": own_db}
        worker = start_worker(env, tmp_path / "worker.log")
        try:
            manager = JobManager(settings_for(label_studio, own_db, tmp_path / "images", job_retries=1))
            job_id = manager.submit(AnnotateSpec(project=project))
            status = wait_for(manager, job_id, lambda s: s.state == "finished", timeout=120)
        finally:
            stop(worker)
        busy_requests = [path for path, _ in images.requests_seen if path == "/busy.png"]
    assert status.done == 1 and len(status.failed) == 1
    [reason] = status.failed.values()
    assert "HTTP 503" in reason and reason.endswith("(gave up after 1 retries)")
    assert len(busy_requests) == 2, "tried once, retried once"
