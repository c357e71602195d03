"""End to end: a real Label Studio 1.23 opening tasks and sending clicks makes the backend prewarm the
SAM embeddings the annotator's next clicks need (asserted through /metrics, not a clock).

This module starts its own backend (gunicorn, tiny models) so that its prewarm counters see only the
calls made here.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.conftest import LabelStudio, running_backend
from tests.labelstudio.configs import SAM_CONFIG
from tests.support import make_image

pytestmark = [pytest.mark.e2e, pytest.mark.slow]
WAIT_S = 180.0


@pytest.fixture(scope="module")
def prewarm_backend(
    label_studio: LabelStudio, tiny_hf_cache: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    prewarm_on = {"PREWARM": "true", "PREWARM_NEXT_TASKS": "2"}
    with running_backend(label_studio, tmp_path_factory.mktemp("prewarm-backend"), prewarm_on) as url:
        yield url


def create_project(ls: LabelStudio, title: str, backend_url: str, images: int) -> tuple[int, list[dict]]:
    project = ls.api("POST", "/api/projects", json={"title": title, "label_config": SAM_CONFIG}).json()
    files = {f"{title}{index}.png": make_image(96 + index * 8, 64 + index * 4) for index in range(images)}
    ls.api(
        "POST",
        f"/api/projects/{project['id']}/import",
        files={name: (name, data, "image/png") for name, data in files.items()},
    )
    tasks = ls.tasks(project["id"])
    assert len(tasks) == images
    ml = ls.connect(project["id"], backend_url, interactive=True)
    return ml["id"], tasks


def metrics(backend_url: str) -> dict[str, Any]:
    return requests.get(f"{backend_url}/metrics", timeout=10).json()


def settled_prewarm(backend_url: str) -> dict[str, Any]:
    """The prewarm counters once the queue is empty and nothing is in flight."""
    deadline = time.monotonic() + WAIT_S
    while True:
        prewarm = metrics(backend_url)["prewarm"]
        if prewarm["queued"] == 0 and not prewarm["in_flight"]:
            return prewarm
        if time.monotonic() > deadline:
            raise TimeoutError(f"prewarm still busy: {prewarm}")
        time.sleep(0.1)


def click(ls: LabelStudio, ml_id: int, task: dict) -> list[dict]:
    """A smart keypoint click through Label Studio's own interactive-annotating endpoint."""
    width, height = 96, 64
    point = {
        "original_width": width,
        "original_height": height,
        "image_rotation": 0,
        "value": {"x": 40.0, "y": 45.0, "width": 0.26, "labels": ["Banana"], "keypointlabels": ["Banana"]},
        "is_positive": True,
        "id": "kp1",
        "from_name": "tag2",
        "to_name": "image",
        "type": "keypointlabels",
        "origin": "manual",
    }
    answer = ls.api(
        "POST",
        f"/api/ml/{ml_id}/interactive-annotating",
        json={"task": task["id"], "context": {"result": [point]}},
    ).json()
    assert "errors" not in answer, answer
    return answer["data"]["result"]


def test_opening_a_task_prewarms_its_embedding_before_the_click(
    label_studio: LabelStudio, prewarm_backend: str
) -> None:
    ml_id, tasks = create_project(label_studio, "open", prewarm_backend, images=1)
    before = settled_prewarm(prewarm_backend)
    calls_before = metrics(prewarm_backend)["predict"]["calls"]

    label_studio.api("GET", f"/api/tasks/{tasks[0]['id']}")  # the labeling page opening the task
    assert metrics(prewarm_backend)["predict"]["calls"] == calls_before + 1, (
        "Label Studio did not call /predict"
    )
    opened = settled_prewarm(prewarm_backend)
    assert opened["done"] == before["done"] + 1
    assert opened["failed"] == before["failed"]

    assert click(label_studio, ml_id, tasks[0])
    clicked = metrics(prewarm_backend)["prewarm"]
    assert clicked["hit"] == before["hit"] + 1, clicked


def test_a_click_on_a_task_prewarms_the_next_tasks_of_its_project(
    label_studio: LabelStudio, prewarm_backend: str
) -> None:
    ml_id, tasks = create_project(label_studio, "next", prewarm_backend, images=4)
    before = settled_prewarm(prewarm_backend)
    calls_before = metrics(prewarm_backend)["predict"]["calls"]

    assert click(label_studio, ml_id, tasks[0])  # tasks already pre-labelled give no signal of their own
    after_click = settled_prewarm(prewarm_backend)
    assert after_click["done"] == before["done"] + 2, after_click
    assert after_click["failed"] == before["failed"]
    # Looking the next tasks up did not make Label Studio call /predict for them.
    assert metrics(prewarm_backend)["predict"]["calls"] == calls_before + 1

    for task in tasks[1:3]:
        assert click(label_studio, ml_id, task)
    assert metrics(prewarm_backend)["prewarm"]["hit"] == before["hit"] + 2
    settled = settled_prewarm(prewarm_backend)
    assert settled["done"] == before["done"] + 3  # the click on task 2 also warmed task 4
