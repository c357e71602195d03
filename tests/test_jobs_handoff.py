"""The jobs' BackgroundAnnotator against a real Label Studio, with the embedded job manager (tiny models)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from ml_backend.config import Settings, load_settings
from ml_backend.jobs import JobManager, JobStatus, JobsUnavailableError
from ml_backend.jobs.handoff import JobHandoff, handoff_for
from ml_backend.labelstudio.predictor import model_version_for
from tests.conftest import LabelStudio
from tests.labelstudio.configs import RECT_ONLY_CONFIG
from tests.support import free_port, make_image, running_redis

pytestmark = [pytest.mark.slow, pytest.mark.e2e]


def settings_for(label_studio: LabelStudio, cache: Path) -> Settings:
    return load_settings(
        label_studio_url=label_studio.url,
        label_studio_api_key=label_studio.token,
        image_cache_dir=str(cache),
        default_box_threshold=0.0,
        job_chunk_size=2,
    )


def make_project(label_studio: LabelStudio, title: str, count: int) -> tuple[int, list[int]]:
    project = label_studio.api(
        "POST", "/api/projects", json={"title": title, "label_config": RECT_ONLY_CONFIG}
    ).json()
    files = {f"img{i}.png": (f"img{i}.png", make_image(40 + i * 8, 32), "image/png") for i in range(count)}
    label_studio.api("POST", f"/api/projects/{project['id']}/import", files=files)
    return project["id"], [task["id"] for task in label_studio.tasks(project["id"])]


def predictions_by_task(label_studio: LabelStudio, project: int) -> dict[int, list[dict]]:
    found: dict[int, list[dict]] = {}
    for prediction in label_studio.api("GET", f"/api/predictions?project={project}").json():
        found.setdefault(prediction["task"], []).append(prediction)
    return found


def wait_finished(manager: JobManager, job_id: str, timeout: float = 240) -> JobStatus:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = manager.status(job_id)
        assert status is not None
        if status.state == "finished":
            return status
        time.sleep(0.3)
    raise AssertionError(f"job {job_id} did not finish: {manager.status(job_id)}")


class StepClock:
    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


def test_handed_tasks_become_a_listed_job_held_until_moments_after_it_ends(
    label_studio: LabelStudio, tiny_hf_cache: Path, tmp_path: Path
) -> None:
    project, task_ids = make_project(label_studio, "handoff: retrieve", 3)
    settings = settings_for(label_studio, tmp_path)
    manager = JobManager(settings)
    clock = StepClock()
    handoff = JobHandoff(manager, recently_finished_s=30.0, clock=clock)
    assert handoff.pending(project) == set()

    job_id = handoff.annotate_later(project, task_ids, "retrieve")
    assert handoff.pending(project) == set(task_ids)
    assert handoff.pending(project + 1000) == set(), "another project's retrieve is not held up"
    listed = {status.job_id: status for status in manager.list()}
    assert listed[job_id].source == "retrieve" and listed[job_id].total == 3

    status = wait_finished(manager, job_id)
    assert (status.done, status.failed) == (3, {})
    clock.now = (status.finished_at or 0) + 5
    assert handoff.pending(project) == set(task_ids), "held while Label Studio may still be filtering"
    clock.now = (status.finished_at or 0) + 31
    assert handoff.pending(project) == set()

    stored = predictions_by_task(label_studio, project)
    assert sorted(stored) == task_ids
    assert all(len(predictions) == 1 for predictions in stored.values())
    # The version Label Studio stores from /predict answers and asks /setup for: one version, no repeats.
    assert {p[0]["model_version"] for p in stored.values()} == {model_version_for(settings)}


def test_a_job_skips_tasks_that_already_have_a_prediction_of_its_version(
    label_studio: LabelStudio, tiny_hf_cache: Path, tmp_path: Path
) -> None:
    project, task_ids = make_project(label_studio, "handoff: already predicted", 3)
    settings = settings_for(label_studio, tmp_path)
    version = model_version_for(settings)
    label_studio.api(
        "POST",
        "/api/predictions",
        json={"task": task_ids[0], "result": [], "model_version": version, "score": 0.9},
    )
    manager = JobManager(settings)
    job_id = JobHandoff(manager).annotate_later(project, task_ids, "import")
    status = wait_finished(manager, job_id)
    assert status.source == "import" and status.done == 3
    stored = predictions_by_task(label_studio, project)
    assert {task: len(predictions) for task, predictions in stored.items()} == dict.fromkeys(task_ids, 1)
    assert stored[task_ids[0]][0]["score"] == 0.9, "the earlier prediction stays, none is added"


def test_without_label_studio_credentials_there_is_no_handoff(tmp_path: Path) -> None:
    settings = load_settings(label_studio_url=None, label_studio_api_key=None, image_cache_dir=str(tmp_path))
    assert handoff_for(settings, JobManager(settings)) is None


@pytest.fixture
def redis_url(tmp_path: Path) -> Iterator[str]:
    with running_redis(tmp_path) as url:
        yield url


def test_with_redis_every_backend_process_sees_the_held_tasks(redis_url: str, tmp_path: Path) -> None:
    """Two managers on one Redis stand for two backend processes; no rq worker runs, so the job waits."""
    settings = load_settings(
        redis_url=redis_url,
        label_studio_url="http://127.0.0.1:9",
        label_studio_api_key="unused",
        image_cache_dir=str(tmp_path),
    )
    clock = StepClock()
    here = JobHandoff(JobManager(settings), recently_finished_s=30.0, clock=clock)
    elsewhere = JobHandoff(JobManager(settings), recently_finished_s=30.0, clock=clock)
    job_id = here.annotate_later(5, [11, 12, 12, 13], "retrieve")
    assert elsewhere.pending(5) == {11, 12, 13}
    assert elsewhere.pending(6) == set()
    (listed,) = elsewhere.manager.list()
    assert (listed.job_id, listed.source, listed.state, listed.total) == (job_id, "retrieve", "queued", 3)

    cancelled = elsewhere.manager.cancel(job_id)
    assert cancelled is not None and cancelled.finished_at is not None
    assert here.pending(5) == {11, 12, 13}, "a chunk in flight may still write for a moment"
    clock.now = cancelled.finished_at + 31
    assert here.pending(5) == set()


def test_an_unreachable_redis_is_a_clear_jobs_unavailable_error(tmp_path: Path) -> None:
    settings = load_settings(redis_url=f"redis://127.0.0.1:{free_port()}/0", image_cache_dir=str(tmp_path))
    handoff = JobHandoff(JobManager(settings))
    with pytest.raises(JobsUnavailableError, match="cannot be read"):
        handoff.pending(5)
