"""The RunPod worker: the handler in-process, and the SDK's real local API over HTTP."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from ml_backend import worker
from ml_backend.masks import decode_rle
from ml_backend.schemas import IMAGE_REF_MISS, parse_request
from tests.support import make_image, serve_images
from tests.test_schemas import GUIDE_EXAMPLES

ROOT = Path(__file__).resolve().parents[1]


def with_local_images(payload: dict, url: str) -> dict:
    """The guide's example with its placeholder image URLs pointed at a loopback server."""
    payload = json.loads(json.dumps(payload))
    if "image_url" in payload:
        payload["image_url"] = url
    for image in payload.get("images", []):
        image["url"] = url
    return payload


@pytest.fixture(scope="module")
def image_server() -> Iterator:
    with serve_images() as server:
        server.add("/test.jpg", make_image(64, 48, fmt="JPEG"), content_type="image/jpeg")
        yield server


@pytest.fixture(scope="module")
def worker_env(tiny_hf_cache: Path) -> dict[str, str]:
    return {**os.environ, "ALLOW_PRIVATE_URLS": "true", "DEVICE": "cpu", "PYTHONUNBUFFERED": "1"}


def test_sdk_arguments_default_to_the_worker_api() -> None:
    assert worker.sdk_arguments([], deployed=False) == ["--rp_serve_api"]
    assert worker.sdk_arguments(["--rp_api_port", "9000"], deployed=False) == [
        "--rp_serve_api",
        "--rp_api_port",
        "9000",
    ]
    assert worker.sdk_arguments(["--test_input", "{}"], deployed=False) == ["--test_input", "{}"]
    assert worker.sdk_arguments(["--rp_api_host", "0.0.0.0"], deployed=True) == ["--rp_api_host", "0.0.0.0"]


def test_shipped_test_input_is_a_valid_request() -> None:
    job = json.loads((ROOT / "test_input.json").read_text())
    assert parse_request(job["input"]).task == "detect"


def test_handler_returns_string_errors() -> None:
    result = worker.handler(
        {
            "id": "t",
            "input": {"task": "detect", "model": "yolo", "image_url": "https://x", "text_prompt": "a"},
        }
    )
    assert isinstance(result["error"], str) and result["error"].startswith("model:")
    assert worker.handler({"id": "t", "input": None})["error"] == "input: must be a JSON object"


@pytest.mark.slow
@pytest.mark.parametrize("example", GUIDE_EXAMPLES, ids=lambda e: f"{e['task']}-{e['model']}")
def test_guide_examples_over_http(worker_api: str, image_server, example: dict) -> None:
    payload = {"input": with_local_images(example, image_server.url("/test.jpg"))}
    response = requests.post(f"{worker_api}/runsync", json=payload, timeout=120)
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "COMPLETED", body
    output = body["output"]
    assert output["task"] == example["task"]
    if example["task"] == "batch":
        assert [item["id"] for item in output["results"]] == ["img1", "img2"]
        assert all(item["image"] == {"width": 64, "height": 48} for item in output["results"])
    elif example["task"] == "segment":
        assert decode_rle(output["masks"][0]["mask"]).shape == (48, 64)
    else:
        assert output["image"] == {"width": 64, "height": 48}
        assert all(0 <= v <= 1 for d in output["detections"] for v in d["box"])


@pytest.mark.slow
def test_http_bad_input_is_failed_with_the_message(worker_api: str) -> None:
    payload = {
        "input": {"task": "segment", "model": "sam2", "image_url": "https://x/a.png", "point": [1.5, 0.3]}
    }
    body = requests.post(f"{worker_api}/runsync", json=payload, timeout=60).json()
    assert body["status"] == "FAILED"
    assert body["error"].startswith("point.0:")


@pytest.mark.slow
def test_http_unreachable_image_names_the_field(worker_api: str, image_server) -> None:
    payload = {
        "input": {
            "task": "segment",
            "model": "sam2",
            "image_url": image_server.url("/nope.jpg"),
            "point": [0.5, 0.5],
        }
    }
    body = requests.post(f"{worker_api}/runsync", json=payload, timeout=60).json()
    assert body == {"id": body["id"], "status": "FAILED", "error": "image_url: download failed with HTTP 404"}


@pytest.mark.slow
def test_test_input_mode_runs_one_job(worker_env: dict[str, str], image_server) -> None:
    job = {
        "input": {
            "task": "segment",
            "model": "sam2",
            "image_url": image_server.url("/test.jpg"),
            "point": [0.5, 0.5],
        }
    }
    result = subprocess.run(
        [sys.executable, "-m", "ml_backend.worker", "--test_input", json.dumps(job)],
        cwd=ROOT,
        env=worker_env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "masks" in result.stdout + result.stderr


EVERY_TASK_AND_MODEL = [
    {
        "task": "detect",
        "model": "grounding_dino",
        "text_prompt": "cat . dog",
        "with_masks": True,
        "box_threshold": 0,
        "text_threshold": 0,
    },
    {"task": "detect", "model": "florence2", "florence2_task": "od"},
    {
        "task": "detect",
        "model": "florence2",
        "florence2_task": "referring_expression_segmentation",
        "text_prompt": "the cat",
    },
    {"task": "detect", "model": "sam3", "text_prompt": "cat", "box_threshold": 0},
    {"task": "segment", "model": "sam2", "point": [0.5, 0.5]},
    {"task": "segment", "model": "sam2", "box": [0.1, 0.1, 0.8, 0.9], "mask_format": "both"},
    {"task": "segment", "model": "sam3", "points": [[0.3, 0.3], [0.6, 0.6]], "labels": [1, 0]},
    {"task": "segment", "model": "sam3", "prompt_type": "text", "text_prompt": "cat", "threshold": 0},
    {
        "task": "batch",
        "model": "grounding_dino",
        "text_prompt": "cat",
        "box_threshold": 0,
        "text_threshold": 0,
    },
    {"task": "batch", "model": "florence2"},
    {"task": "batch", "model": "sam3", "text_prompt": "cat", "box_threshold": 0},
]


def assert_output_geometry(output: dict) -> None:
    items = output["results"] if output["task"] == "batch" else [output]
    for item in items:
        assert item["image"] == {"width": 64, "height": 48}
        for region in item.get("detections", []) + item.get("masks", []):
            assert all(0 <= value <= 1 for value in region["box"])
            if "mask" in region:
                assert decode_rle(region["mask"]).shape == (48, 64)
            for polygon in region.get("polygons", []):
                assert all(0 <= value <= 1 for value in polygon)


def with_image(payload: dict, url: str) -> dict:
    if payload["task"] == "batch":
        return {**payload, "images": [{"id": "a", "url": url}, {"id": "b", "url": url}]}
    return {**payload, "image_url": url}


@pytest.mark.parametrize("payload", EVERY_TASK_AND_MODEL, ids=lambda p: f"{p['task']}-{p['model']}-{len(p)}")
def test_every_task_and_model_through_the_handler(image_server, tiny_hf_cache: Path, payload: dict) -> None:
    output = worker.handler({"id": "t", "input": with_image(payload, image_server.url("/test.jpg"))})
    assert "error" not in output, output
    assert (output["task"], output["model"]) == (payload["task"], payload["model"])
    assert_output_geometry(output)


@pytest.mark.slow
@pytest.mark.parametrize("payload", EVERY_TASK_AND_MODEL, ids=lambda p: f"{p['task']}-{p['model']}-{len(p)}")
def test_every_task_and_model_over_http(worker_api: str, image_server, payload: dict) -> None:
    body = requests.post(
        f"{worker_api}/runsync",
        json={"input": with_image(payload, image_server.url("/test.jpg"))},
        timeout=120,
    ).json()
    assert body["status"] == "COMPLETED", body
    assert (body["output"]["task"], body["output"]["model"]) == (payload["task"], payload["model"])
    assert_output_geometry(body["output"])


# ---- embed and image_ref ----


def image_ref_of(data: bytes) -> dict:
    return {"hash": hashlib.blake2b(data, digest_size=16).hexdigest(), "bytes": len(data)}


def test_handler_embeds_then_serves_the_image_by_ref(tiny_hf_cache: Path) -> None:
    data = make_image(64, 48, fmt="JPEG")
    embedded = worker.handler(
        {
            "id": "e",
            "input": {"task": "embed", "model": "sam2", "image_base64": base64.b64encode(data).decode()},
        }
    )
    assert embedded["task"] == "embed" and embedded["image"] == {"width": 64, "height": 48}, embedded
    click = {"task": "segment", "model": "sam2", "point": [0.5, 0.5], "image_ref": image_ref_of(data)}
    output = worker.handler({"id": "c", "input": click})
    assert "error" not in output, output
    assert_output_geometry(output)


def test_handler_answers_an_unknown_ref_with_the_documented_miss(tiny_hf_cache: Path) -> None:
    click = {
        "task": "segment",
        "model": "sam2",
        "point": [0.5, 0.5],
        "image_ref": image_ref_of(b"never sent"),
    }
    result = worker.handler({"id": "c", "input": click})
    assert set(result) == {"error"} and result["error"].startswith(IMAGE_REF_MISS)


@pytest.mark.slow
def test_http_image_ref_miss_then_hit(worker_api: str, image_server) -> None:
    data = make_image(64, 48, mode="L", fmt="JPEG")  # an image no other test sends this worker
    click = {"task": "segment", "model": "sam2", "point": [0.5, 0.5], "image_ref": image_ref_of(data)}
    missed = requests.post(f"{worker_api}/runsync", json={"input": click}, timeout=120).json()
    assert missed["status"] == "FAILED" and missed["error"].startswith(IMAGE_REF_MISS), missed
    embed = {"task": "embed", "model": "sam2", "image_url": image_server.add("/gray.jpg", data)}
    embedded = requests.post(f"{worker_api}/runsync", json={"input": embed}, timeout=120).json()
    assert embedded["status"] == "COMPLETED" and embedded["output"]["task"] == "embed", embedded
    served = requests.post(f"{worker_api}/runsync", json={"input": click}, timeout=120).json()
    assert served["status"] == "COMPLETED", served
    assert_output_geometry(served["output"])
