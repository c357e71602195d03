"""A "Retrieve predictions" that outruns Label Studio's ML_TIMEOUT_PREDICT still ends with exactly one
prediction per task: the backend answers within PREDICT_TIME_BUDGET_S and a background job does the rest,
also when the user retrieves again while that job runs.

Label Studio 1.23 waits ML_TIMEOUT_PREDICT (its own environment) for /predict; the per-backend `timeout`
of POST /api/ml does not apply to predictions (`ml/api_connector.py` passes TIMEOUT_PREDICT), so this
module starts its own Label Studio with a short one.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from tests.conftest import LabelStudio, running_backend, running_label_studio
from tests.labelstudio.configs import RECT_ONLY_CONFIG
from tests.support import ImageServer, Route, make_image, serve_images

pytestmark = [pytest.mark.e2e, pytest.mark.slow]
VERSION = "od-annotation/grounding_dino:IDEA-Research/grounding-dino-base"
LS_TIMEOUT_S = 10
BUDGET_S = 4
FAST_IMAGES, SLOW_IMAGES, SLOW_DELAY_S = 3, 21, 4.0  # 21 slow images, 8 at a time: 12 s of downloads


@pytest.fixture(scope="module")
def short_timeout_ls(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LabelStudio]:
    data = tmp_path_factory.mktemp("label-studio-short-timeout")
    with running_label_studio(data, {"ML_TIMEOUT_PREDICT": str(LS_TIMEOUT_S)}) as instance:
        yield instance


@pytest.fixture(scope="module")
def budget_backend(
    short_timeout_ls: LabelStudio, tiny_hf_cache: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    work = tmp_path_factory.mktemp("backend-budget")
    with running_backend(
        short_timeout_ls, work, {"PREDICT_TIME_BUDGET_S": str(BUDGET_S), "JOB_CHUNK_SIZE": "4"}
    ) as url:
        yield url


@pytest.fixture(scope="module")
def slow_images() -> Iterator[ImageServer]:
    routes = {f"/fast{i}.png": Route(make_image(48 + i * 8, 40)) for i in range(FAST_IMAGES)}
    routes |= {
        f"/slow{i}.png": Route(make_image(48 + i % 4 * 8, 40), delay_s=SLOW_DELAY_S)
        for i in range(SLOW_IMAGES)
    }
    with serve_images(routes) as server:
        yield server


def retrieve(ls: LabelStudio, project: int) -> float:
    """The Data Manager's "Retrieve predictions" on every task; returns how long Label Studio took."""
    started = time.monotonic()
    answer = ls.api(
        "POST",
        f"/api/dm/actions?id=retrieve_tasks_predictions&project={project}",
        json={"selectedItems": {"all": True, "excluded": []}},
    ).json()
    assert "detail" in answer, answer
    return time.monotonic() - started


def project_jobs(backend: str, project: int) -> list[dict]:
    listed = requests.get(f"{backend}/jobs", timeout=30).json()["jobs"]
    return [job for job in listed if job["project"] == project]


def wait_for_jobs(backend: str, project: int, timeout: float = 300) -> list[dict]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        jobs = project_jobs(backend, project)
        if jobs and all(job["state"] == "finished" for job in jobs):
            return jobs
        time.sleep(1)
    raise AssertionError(f"jobs of project {project} still running: {project_jobs(backend, project)}")


def test_a_retrieve_past_the_timeout_ends_with_one_prediction_per_task(
    short_timeout_ls: LabelStudio, budget_backend: str, slow_images: ImageServer
) -> None:
    ls = short_timeout_ls
    project = ls.api(
        "POST", "/api/projects", json={"title": "budget", "label_config": RECT_ONLY_CONFIG}
    ).json()
    images = [f"/fast{i}.png" for i in range(FAST_IMAGES)] + [f"/slow{i}.png" for i in range(SLOW_IMAGES)]
    ls.api(
        "POST", f"/api/projects/{project['id']}/import", json=[{"photo": slow_images.url(p)} for p in images]
    )
    ls.connect(project["id"], budget_backend)
    task_ids = [task["id"] for task in ls.tasks(project["id"])]
    task_count = len(task_ids)
    assert task_count == FAST_IMAGES + SLOW_IMAGES

    took = retrieve(ls, project["id"])
    answered_in_time = ls.predictions_per_task(project["id"], VERSION)
    assert took < LS_TIMEOUT_S, f"Label Studio waited {took:.1f} s: it gave up, nothing was stored"
    assert 0 < len(answered_in_time) < task_count, answered_in_time
    (job,) = project_jobs(budget_backend, project["id"])
    assert job["source"] == "retrieve" and job["total"] == task_count - len(answered_in_time)
    assert job["state"] in ("queued", "running"), "the repeated retrieves below must meet a pending job"

    for _ in range(2):  # the user clicks again while the job runs: those tasks answer no prediction
        assert retrieve(ls, project["id"]) < LS_TIMEOUT_S
    assert project_jobs(budget_backend, project["id"])[0]["state"] != "finished", "the job ended too soon"

    jobs = wait_for_jobs(budget_backend, project["id"])
    assert len(jobs) == 1, f"a repeated retrieve handed tasks over again: {jobs}"
    assert jobs[0]["done"] == jobs[0]["total"] and not jobs[0]["failed"]
    time.sleep(2)  # nothing else arrives late
    assert ls.predictions_per_task(project["id"], VERSION) == dict.fromkeys(task_ids, 1)
