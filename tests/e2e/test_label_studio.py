"""End to end: a real Label Studio 1.23 talks to the real backend (gunicorn) on tiny models.

Covers (a) the Data Manager's "Retrieve predictions" storing valid predictions and (b) the
labeling UI's interactive calls (smart keypoints positive + negative, smart rectangle, text prompt).
"""

from __future__ import annotations

import numpy as np
import pytest
import requests
from label_studio_sdk.converter.brush import decode_rle

from tests.conftest import LabelStudio
from tests.labelstudio.configs import SAM_CONFIG, TEXT_PROMPT_CONFIG
from tests.support import make_image

pytestmark = [pytest.mark.e2e, pytest.mark.slow]
WIDTH, HEIGHT = 96, 64
MODEL_VERSION = "od-annotation/grounding_dino:IDEA-Research/grounding-dino-base"


def create_project(ls: LabelStudio, title: str, config: str, backend_url: str) -> tuple[int, int, list[dict]]:
    project = ls.api("POST", "/api/projects", json={"title": title, "label_config": config}).json()
    files = {f"image{index}.png": make_image(WIDTH + index * 8, HEIGHT) for index in range(2)}
    ls.api(
        "POST",
        f"/api/projects/{project['id']}/import",
        files={name: (name, data, "image/png") for name, data in files.items()},
    )
    tasks = ls.tasks(project["id"])
    assert len(tasks) == 2
    assert all(task["data"]["image"].startswith("/data/upload/") for task in tasks)
    ml = ls.connect(project["id"], backend_url, interactive=True)
    return project["id"], ml["id"], tasks


def image_size_of(task: dict) -> tuple[int, int]:
    index = int(task["data"]["image"].rsplit("image", 1)[1].split(".")[0])
    return WIDTH + index * 8, HEIGHT


def assert_valid_regions(results: list[dict], width: int, height: int) -> set[str]:
    assert results, "the backend returned no region"
    for item in results:
        assert (item["original_width"], item["original_height"]) == (width, height)
        value = item["value"]
        if item["type"] == "rectanglelabels":
            assert 0 <= value["x"] <= value["x"] + value["width"] <= 100 + 1e-6
            assert 0 <= value["y"] <= value["y"] + value["height"] <= 100 + 1e-6
        elif item["type"] == "brushlabels":
            pixels = decode_rle(value["rle"])
            assert pixels.size == width * height * 4
            assert set(np.unique(pixels)) <= {0, 255}
        elif item["type"] == "polygonlabels":
            assert all(0 <= x <= 100 and 0 <= y <= 100 for x, y in value["points"])
        elif item["type"] != "keypointlabels":
            pytest.fail(f"unexpected result type {item['type']}")
    return {item["type"] for item in results}


@pytest.fixture(scope="module")
def text_project(label_studio: LabelStudio, backend_url: str):
    return create_project(label_studio, "text prompt", TEXT_PROMPT_CONFIG, backend_url)


@pytest.fixture(scope="module")
def sam_project(label_studio: LabelStudio, backend_url: str):
    return create_project(label_studio, "sam clicks", SAM_CONFIG, backend_url)


def test_retrieve_predictions_stores_valid_predictions(
    label_studio: LabelStudio, text_project, backend_url: str
) -> None:
    project_id, _, tasks = text_project
    answer = label_studio.api(
        "POST",
        f"/api/dm/actions?id=retrieve_tasks_predictions&project={project_id}",
        json={"selectedItems": {"all": True, "excluded": []}},
    ).json()
    assert "detail" in answer
    for task in tasks:
        predictions = label_studio.api("GET", f"/api/predictions?task={task['id']}").json()
        metrics = requests.get(f"{backend_url}/metrics", timeout=10).json()
        assert len(predictions) == 1, f"no prediction stored; backend metrics: {metrics}"
        prediction = predictions[0]
        assert prediction["model_version"] == MODEL_VERSION
        types = assert_valid_regions(prediction["result"], *image_size_of(task))
        assert types == {"rectanglelabels", "brushlabels"}
        labels = {
            label for item in prediction["result"] for label in item["value"].get("rectanglelabels", [])
        }
        assert labels <= {"Product", "Price tag"}


def interactive(ls: LabelStudio, ml_id: int, task: dict, context: dict) -> list[dict]:
    answer = ls.api(
        "POST", f"/api/ml/{ml_id}/interactive-annotating", json={"task": task["id"], "context": context}
    )
    body = answer.json()
    assert "errors" not in body, body
    return body["data"]["result"]


def keypoint(x: float, y: float, positive: bool, width: int, height: int) -> dict:
    return {
        "original_width": width,
        "original_height": height,
        "image_rotation": 0,
        "value": {"x": x, "y": y, "width": 0.26, "labels": ["Banana"], "keypointlabels": ["Banana"]},
        "is_positive": positive,
        "id": f"kp{x:.0f}{y:.0f}",
        "from_name": "tag2",
        "to_name": "image",
        "type": "keypointlabels",
        "origin": "manual",
    }


def test_interactive_keypoints_positive_and_negative(label_studio: LabelStudio, sam_project) -> None:
    _, ml_id, tasks = sam_project
    width, height = image_size_of(tasks[1])
    context = {
        "result": [keypoint(32.2, 40.1, True, width, height), keypoint(70.8, 53.9, False, width, height)]
    }
    results = interactive(label_studio, ml_id, tasks[1], context)
    types = assert_valid_regions(results, width, height)
    assert "brushlabels" in types
    assert all(item["value"].get(item["type"]) == ["Banana"] for item in results)


def test_interactive_smart_rectangle(label_studio: LabelStudio, sam_project) -> None:
    _, ml_id, tasks = sam_project
    width, height = image_size_of(tasks[0])
    rectangle = {
        "original_width": width,
        "original_height": height,
        "image_rotation": 0,
        "value": {
            "x": 15.9,
            "y": 30.2,
            "width": 34.0,
            "height": 19.8,
            "rotation": 0,
            "rectanglelabels": ["Orange"],
        },
        "id": "IcCNbmaigL",
        "from_name": "tag3",
        "to_name": "image",
        "type": "rectanglelabels",
        "origin": "manual",
    }
    results = interactive(label_studio, ml_id, tasks[0], {"result": [rectangle]})
    assert "brushlabels" in assert_valid_regions(results, width, height)
    assert all(item["value"].get(item["type"]) == ["Orange"] for item in results)


def test_interactive_text_prompt(label_studio: LabelStudio, text_project) -> None:
    _, ml_id, tasks = text_project
    width, height = image_size_of(tasks[0])
    prompt = {
        "value": {"text": ["bottle"]},
        "id": "uuguVZyRiz",
        "from_name": "prompt",
        "to_name": "image",
        "type": "textarea",
        "origin": "manual",
    }
    results = interactive(label_studio, ml_id, tasks[0], {"result": [prompt]})
    assert assert_valid_regions(results, width, height) == {"rectanglelabels", "brushlabels"}
    assert {item["value"][item["type"]][0] for item in results} == {"Product"}
