"""AUTO_ANNOTATE_ON_IMPORT=true: tasks imported into a real Label Studio get predictions unasked.

Connecting the backend registers a project webhook (Label Studio runs with SSRF protection off in the
tests); each import sends TASKS_CREATED to the backend's /webhook, which starts a background job.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from tests.conftest import LabelStudio, running_backend
from tests.labelstudio.configs import RECT_ONLY_CONFIG
from tests.support import make_image

pytestmark = [pytest.mark.e2e, pytest.mark.slow]
VERSION = "od-annotation/grounding_dino:IDEA-Research/grounding-dino-base"


@pytest.fixture(scope="module")
def import_backend(
    label_studio: LabelStudio, tiny_hf_cache: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    work = tmp_path_factory.mktemp("backend-import-hook")
    with running_backend(label_studio, work, {"AUTO_ANNOTATE_ON_IMPORT": "true"}) as url:
        yield url


def upload(ls: LabelStudio, project: int, names: list[str]) -> None:
    files = {name: (name, make_image(40 + len(name) * 4, 32), "image/png") for name in names}
    ls.api("POST", f"/api/projects/{project}/import", files=files)


def finished_import_jobs(backend: str, project: int, timeout: float = 240) -> list[dict]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        jobs = [
            job
            for job in requests.get(f"{backend}/jobs", timeout=30).json()["jobs"]
            if job["project"] == project
        ]
        if jobs and all(job["state"] == "finished" for job in jobs):
            return jobs
        time.sleep(1)
    raise AssertionError(f"no finished import job for project {project}")


def test_imported_tasks_get_predictions_unasked(label_studio: LabelStudio, import_backend: str) -> None:
    ls = label_studio
    project = ls.api(
        "POST", "/api/projects", json={"title": "import hook", "label_config": RECT_ONLY_CONFIG}
    ).json()
    ls.connect(project["id"], import_backend)
    webhooks = ls.api("GET", f"/api/webhooks?project={project['id']}").json()
    assert any(hook["url"] == f"{import_backend}/webhook" for hook in webhooks), webhooks

    upload(ls, project["id"], ["a.png", "bb.png"])
    upload(ls, project["id"], ["ccc.png"])  # a second import right after: gathered with the first
    ids = [task["id"] for task in ls.tasks(project["id"])]
    assert len(ids) == 3

    jobs = finished_import_jobs(import_backend, project["id"])
    assert {job["source"] for job in jobs} == {"import"}
    assert sum(job["total"] for job in jobs) == 3
    assert sum(job["done"] for job in jobs) == 3
    time.sleep(2)  # nothing else arrives late
    assert ls.predictions_per_task(project["id"], VERSION) == dict.fromkeys(ids, 1)


def test_without_the_setting_imports_wait_to_be_asked(label_studio: LabelStudio, backend_url: str) -> None:
    ls = label_studio
    project = ls.api(
        "POST", "/api/projects", json={"title": "no import hook", "label_config": RECT_ONLY_CONFIG}
    ).json()
    ls.connect(project["id"], backend_url)
    upload(ls, project["id"], ["a.png"])
    time.sleep(5)
    assert ls.predictions_per_task(project["id"], VERSION) == {}
    assert not [
        job
        for job in requests.get(f"{backend_url}/jobs", timeout=30).json()["jobs"]
        if job["project"] == project["id"]
    ]
