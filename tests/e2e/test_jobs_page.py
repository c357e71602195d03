"""The jobs page (`GET /jobs` in a browser) in headless Chromium, against a real Label Studio project.

Starts a job from the page and watches the page's own refresh carry its bar to 100 % with the broken
image listed as a failed task; starts a slow second job and cancels it from the page.
`UPDATE_DOC_SCREENSHOTS=1` also writes docs/screenshots/jobs-running.png and jobs-finished.png.
"""

from __future__ import annotations

import os
import re
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from playwright.sync_api import Locator, Page

from tests.conftest import ROOT, LabelStudio
from tests.e2e.browser import BrowserDriver, browser_page, shots_dir_for
from tests.labelstudio.configs import RECT_ONLY_CONFIG
from tests.support import ImageServer, make_image, serve_images
from tests.test_jobs import make_project

pytestmark = [pytest.mark.e2e, pytest.mark.slow]
DOC_SHOTS = ROOT / "docs" / "screenshots"
LAPTOP = (1280, 800)
SLOW_TASKS = 48  # several chunks of JOB_CHUNK_SIZE: a cancel lands before the last one starts
SLOW_IMAGE_S = 2.0
JOB_TIMEOUT_MS = 240_000


@pytest.fixture(scope="module")
def image_server() -> Iterator[ImageServer]:
    with serve_images() as server:
        yield server


@pytest.fixture(scope="module")
def shelf_project(label_studio: LabelStudio) -> tuple[int, list[int], set[int]]:
    """Seven uploaded photos and one broken upload."""
    return make_project(label_studio, "Shelf photos", good=7, broken=1)


@pytest.fixture(scope="module")
def slow_project(label_studio: LabelStudio, image_server: ImageServer) -> int:
    """Photos that take SLOW_IMAGE_S each to download, one of them missing (404)."""
    urls = [
        image_server.url("/missing.png")
        if index == 3
        else image_server.add(f"/aisle{index}.png", make_image(64, 48), delay_s=SLOW_IMAGE_S)
        for index in range(SLOW_TASKS)
    ]
    project = label_studio.api(
        "POST", "/api/projects", json={"title": "Warehouse aisle 4", "label_config": RECT_ONLY_CONFIG}
    ).json()["id"]
    label_studio.api("POST", f"/api/projects/{project}/import", json=[{"photo": url} for url in urls])
    return project


@pytest.fixture
def jobs_page(backend_url: str, request: pytest.FixtureRequest) -> Iterator[BrowserDriver]:
    with browser_page(shots_dir_for(request), viewport=LAPTOP) as browser:
        browser.goto(f"{backend_url}/jobs", wait_for="#start-form")
        yield browser
        assert not browser.console_errors, browser.console_errors


def start_job(page: Page, project: int, masks: str, prompt: str = "") -> str:
    """Fill in the page's form and start; returns the job id the page reports."""
    page.select_option("select[name=project]", str(project))
    page.select_option("select[name=with_masks]", masks)
    page.fill("input[name=prompt]", prompt)
    page.click("#start-form button[type=submit]")
    status = page.locator("#form-status")
    page.wait_for_function(
        "() => /Started job|Not started/.test(document.getElementById('form-status').textContent)"
    )
    found = re.search(r"Started job (\w+)", status.inner_text())
    assert found, status.inner_text()
    return found.group(1)


def job_card(page: Page, job_id: str) -> Locator:
    return page.locator(f"article.job[data-job-id='{job_id}']")


def job_json(backend_url: str, job_id: str) -> dict:
    answer = requests.get(f"{backend_url}/jobs/{job_id}", timeout=30)
    answer.raise_for_status()
    return answer.json()


def save_doc_screenshot(path: Path, name: str) -> None:
    if os.environ.get("UPDATE_DOC_SCREENSHOTS"):
        DOC_SHOTS.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, DOC_SHOTS / name)


def test_a_job_started_from_the_page_reaches_100_percent_and_lists_its_failed_task(
    jobs_page: BrowserDriver, label_studio: LabelStudio, backend_url: str, shelf_project
) -> None:
    project, task_ids, broken = shelf_project
    page = jobs_page.page
    job_id = start_job(page, project, masks="false")
    card = job_card(page, job_id)
    card.wait_for()
    assert card.locator(".badge--source").inner_text() == "jobs page"

    # The page refreshes itself (no reload here): sample the bar until it reads 100 %.
    bar = card.locator("[role=progressbar]")
    seen: list[int] = []
    deadline = time.monotonic() + JOB_TIMEOUT_MS / 1000
    while not seen or seen[-1] < 100:
        assert time.monotonic() < deadline, f"the bar stopped at {seen[-1:]}"
        seen.append(int(bar.get_attribute("aria-valuenow") or 0))
        time.sleep(0.3)
    assert seen == sorted(seen), seen
    page.locator(f"article.job[data-job-id='{job_id}'][data-state=finished]").wait_for()
    jobs_page.screenshot("finished")

    status = job_json(backend_url, job_id)
    assert (status["state"], status["source"], status["done"], status["total"]) == (
        "finished",
        "page",
        len(task_ids) - 1,
        len(task_ids),
    )
    assert card.locator(".count-done").inner_text() == str(len(task_ids) - 1)
    assert card.locator(".count-failed").inner_text() == "1"
    (broken_id,) = broken
    failure = card.locator("li.failure")
    assert failure.count() == 1
    link = failure.locator("a")
    assert link.inner_text() == f"Task {broken_id}"
    assert link.get_attribute("href") == f"{label_studio.url}/projects/{project}/data?task={broken_id}"
    assert failure.locator(".failure__reason").inner_text() == status["failed"][str(broken_id)]
    predictions = label_studio.api("GET", f"/api/predictions?project={project}").json()
    assert {p["task"] for p in predictions} == set(task_ids) - broken


def test_a_running_job_is_cancelled_from_the_page(
    jobs_page: BrowserDriver, backend_url: str, slow_project: int
) -> None:
    page = jobs_page.page
    job_id = start_job(page, slow_project, masks="false", prompt="pallet . box")
    card = job_card(page, job_id)
    page.wait_for_function(
        """id => { const card = document.querySelector(`article.job[data-job-id='${id}']`);
                   return card && card.dataset.state === 'running'
                       && Number(card.querySelector('.count-done').textContent) > 0; }""",
        arg=job_id,
        timeout=JOB_TIMEOUT_MS,
    )
    assert card.locator(".job__what q").inner_text() == "pallet . box"
    save_doc_screenshot(jobs_page.screenshot("running"), "jobs-running.png")

    card.locator("button[data-cancel]").click()
    page.locator(f"article.job[data-job-id='{job_id}'][data-state=cancelled]").wait_for()
    assert card.locator("button[data-cancel]").count() == 0
    status = job_json(backend_url, job_id)
    assert status["state"] == "cancelled"
    assert status["done"] + len(status["failed"]) < status["total"] == SLOW_TASKS
    save_doc_screenshot(jobs_page.screenshot("finished"), "jobs-finished.png")


def test_jobs_answers_json_to_api_clients_and_the_page_to_browsers(
    backend_url: str, label_studio: LabelStudio, slow_project: int
) -> None:
    listed = requests.get(f"{backend_url}/jobs", timeout=30)
    assert listed.headers["Content-Type"].startswith("application/json")
    assert isinstance(listed.json()["jobs"], list)
    page = requests.get(f"{backend_url}/jobs", headers={"Accept": "text/html,*/*;q=0.8"}, timeout=30)
    assert page.headers["Content-Type"].startswith("text/html")
    assert f'<option value="{slow_project}">' in page.text
    assert label_studio.token not in page.text
    script = requests.get(f"{backend_url}/jobs/static/jobs.js", timeout=30)
    assert script.status_code == 200 and "fetch(" in script.text
