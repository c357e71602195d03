"""The RunPod offload client against a simulated RunPod API, and end to end against the real worker."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import logging
import re
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from ml_backend.config import Settings, load_settings
from ml_backend.engine import Engine
from ml_backend.masks import decode_rle, encode_rle
from ml_backend.remote import (
    RemoteEngine,
    RemoteInferenceError,
    RemoteTimeoutError,
    endpoint_url,
    job_outcome,
    share_budget,
    worker_error_text,
)
from ml_backend.schemas import (
    IMAGE_REF_MISS,
    BatchImage,
    BatchRequest,
    DetectRequest,
    EmbedRequest,
    EmbedResponse,
    RequestError,
    SegmentRequest,
)
from tests.counting_proxy import counting_proxy
from tests.fake_runpod import FakeRunPod, Reply, fake_runpod
from tests.support import free_port, make_image

ROOT = Path(__file__).resolve().parents[1]
API_KEY = "rp-test-key"
MB = 1024 * 1024


class FakeClock:
    """Time that only moves when the client sleeps, so retries and deadlines cost no real time."""

    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def detect_output(width: int = 64, height: int = 48) -> dict[str, Any]:
    return {
        "task": "detect",
        "model": "grounding_dino",
        "model_id": "IDEA-Research/grounding-dino-base",
        "image": {"width": width, "height": height},
        "detections": [{"label": "cat", "score": 0.9, "box": [0.1, 0.2, 0.3, 0.4]}],
        "timing_ms": {"download": 1.0, "inference": 2.0, "total": 3.0},
    }


def image_size_of(encoded: str) -> tuple[int, int]:
    with Image.open(io.BytesIO(base64.b64decode(encoded))) as image:
        return image.size


def sizing_handler(job: dict[str, Any]) -> dict[str, Any]:
    """A worker stand-in that reports the size of the image it received."""
    payload = job["input"]
    if payload["task"] == "batch":
        results = [
            {
                "id": image["id"],
                "image": dict(zip(("width", "height"), image_size_of(image["base64"]), strict=True)),
                "detections": [],
            }
            for image in payload["images"]
        ]
        return {
            "task": "batch",
            "model": "grounding_dino",
            "model_id": "m",
            "results": results,
            "timing_ms": {},
        }
    width, height = image_size_of(payload["image_base64"])
    output = detect_output(width, height)
    mask = np.zeros((height, width), dtype=bool)
    mask[: height // 2, : width // 2] = True
    output["detections"][0]["mask"] = encode_rle(mask).model_dump()
    return output


def noise_png(path: Path, width: int, height: int) -> Path:
    """Random pixels barely compress: a PNG of about 3 bytes per pixel."""
    pixels = np.random.default_rng(0).integers(0, 256, (height, width, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path, format="PNG")
    return path


def remote_settings(fake: FakeRunPod, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "runpod_api_key": API_KEY,
        "runpod_base_url": fake.base_url,
        "runpod_endpoint_od_annotation": fake.endpoint_id,
        "runpod_timeout_s": 60.0,
        **overrides,
    }
    return load_settings(**values)


@pytest.fixture
def fake() -> Iterator[FakeRunPod]:
    with fake_runpod(api_key=API_KEY, handler=lambda job: detect_output()) as server:
        yield server


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def small_png(tmp_path: Path) -> Path:
    path = tmp_path / "small.png"
    path.write_bytes(make_image(64, 48))
    return path


def client(fake: FakeRunPod, clock: FakeClock, **overrides: Any) -> RemoteEngine:
    return RemoteEngine(remote_settings(fake, **overrides), sleep=clock.sleep, clock=clock)


def detect_request(path: Path) -> DetectRequest:
    return DetectRequest(model="grounding_dino", image_path=str(path), text_prompt="cat")


# ---- pure functions ----


def test_endpoint_url_accepts_an_id_a_full_url_or_a_bare_server() -> None:
    assert endpoint_url(load_settings(runpod_endpoint_od_annotation="abc")) == "https://api.runpod.ai/v2/abc"
    full = load_settings(runpod_base_url="https://proxy.example/v2/abc/", runpod_endpoint_od_annotation="abc")
    assert endpoint_url(full) == "https://proxy.example/v2/abc"
    local = load_settings(runpod_base_url="http://127.0.0.1:8000", runpod_endpoint_od_annotation="")
    assert endpoint_url(local) == "http://127.0.0.1:8000"


def test_share_budget_lets_small_items_keep_their_size() -> None:
    assert share_budget([10, 500, 1000], 900) == [10, 445, 445]
    assert share_budget([100, 200], 1000) == [100, 200]
    assert share_budget([], 50) == []


def test_worker_error_text() -> None:
    assert worker_error_text("point.0: Input should be less than or equal to 1") == (
        "point.0: Input should be less than or equal to 1"
    )
    traceback = json.dumps(
        {
            "error_type": "<class 'RuntimeError'>",
            "error_message": "model exploded",
            "error_traceback": "Traceback ...",
        }
    )
    assert worker_error_text(traceback) == "RunPod worker failed (RuntimeError: model exploded)"
    assert worker_error_text(["a", "b"]) == "a; b"
    assert worker_error_text("") is None


@pytest.mark.parametrize(
    ("job", "expected"),
    [
        ({"id": "j1", "status": "CANCELLED"}, "RunPod job j1 was cancelled"),
        ({"id": "j1", "status": "TIMED_OUT"}, "RunPod job j1 timed out on RunPod"),
        ({"id": "j1", "status": "COMPLETED"}, "RunPod job j1 completed without a result"),
        ({"id": "j1", "status": "COMPLETED", "output": {"error": "boom"}}, "boom"),
        ({"id": "j1", "status": "COMPLETED", "output": {"detections": 3}}, "RunPod job j1 returned a result"),
    ],
)
def test_job_outcome_errors(job: dict, expected: str) -> None:
    with pytest.raises(RemoteInferenceError) as caught:
        job_outcome(job)
    assert str(caught.value).startswith(expected)
    assert caught.value.job_id == "j1"


# ---- against the simulated RunPod API ----


def test_runsync_sends_the_image_and_parses_the_result(
    fake: FakeRunPod, clock: FakeClock, small_png: Path
) -> None:
    response = client(fake, clock).run(detect_request(small_png))

    assert response.model_dump(mode="json", exclude_none=True) == detect_output()
    [sent] = fake.seen("runsync")
    assert sent.path == "/odannot123/runsync"
    assert sent.headers["Authorization"] == f"Bearer {API_KEY}"
    assert sent.headers["Content-Type"] == "application/json"
    assert 1_000 <= int(sent.query["wait"][0]) <= 60_000
    body = sent.json()
    assert set(body) == {"input"}
    assert "image_path" not in body["input"]
    assert base64.b64decode(body["input"]["image_base64"]) == small_png.read_bytes(), (
        "a small file goes as it is"
    )
    assert body["input"]["text_prompt"] == "cat" and body["input"]["task"] == "detect"
    assert fake.seen("status") == []


def test_429_is_retried_honouring_retry_after(fake: FakeRunPod, clock: FakeClock, small_png: Path) -> None:
    fake.fail_next("runsync", Reply(429, headers={"Retry-After": "3"}), Reply(429))
    response = client(fake, clock).run(detect_request(small_png))
    assert response.task == "detect"
    assert len(fake.seen("runsync")) == 3
    assert clock.sleeps == [3.0, 1.0]


def test_5xx_is_retried_on_submit_and_on_status(fake: FakeRunPod, clock: FakeClock, small_png: Path) -> None:
    fake.progress = ["IN_QUEUE"]
    fake.fail_next("runsync", Reply(500), Reply(503))
    fake.fail_next("status", Reply(502))
    response = client(fake, clock).run(detect_request(small_png))
    assert response.task == "detect"
    assert len(fake.seen("runsync")) == 3
    assert len(fake.seen("status")) == 2


def test_retries_are_bounded(fake: FakeRunPod, clock: FakeClock, small_png: Path) -> None:
    fake.fail_next("runsync", *[Reply(503)] * 5)
    with pytest.raises(RemoteInferenceError, match=r"HTTP 503; gave up after 5 tries"):
        client(fake, clock).run(detect_request(small_png))
    assert len(fake.seen("runsync")) == 5
    assert clock.sleeps == [0.5, 1.0, 2.0, 4.0]


def test_unreachable_endpoint_is_retried_then_reported(
    fake: FakeRunPod, clock: FakeClock, small_png: Path
) -> None:
    engine = client(fake, clock, runpod_base_url=f"http://127.0.0.1:{free_port()}")
    with pytest.raises(
        RemoteInferenceError, match=r"cannot reach RunPod at .*ConnectionError.*gave up after 5 tries"
    ):
        engine.run(detect_request(small_png))
    assert len(clock.sleeps) == 4


def test_slow_job_is_polled_to_completion(fake: FakeRunPod, clock: FakeClock, small_png: Path) -> None:
    fake.progress = ["IN_QUEUE", "IN_QUEUE", "IN_PROGRESS", "RUNNING"]
    response = client(fake, clock).run(detect_request(small_png))
    assert response.task == "detect"
    assert len(fake.seen("runsync")) == 1
    polls = fake.seen("status")
    assert len(polls) == 4
    [job_id] = fake.jobs
    assert all(poll.path == f"/odannot123/status/{job_id}" for poll in polls)
    assert clock.sleeps == sorted(clock.sleeps) and clock.sleeps[0] < clock.sleeps[-1], "polls back off"


def test_failed_job_error_reaches_the_user_verbatim(
    fake: FakeRunPod, clock: FakeClock, small_png: Path
) -> None:
    message = "image_url: download failed with HTTP 404"
    fake.fail_with(message)
    with pytest.raises(RemoteInferenceError) as caught:
        client(fake, clock).run(detect_request(small_png))
    assert str(caught.value) == message
    assert caught.value.status == "FAILED" and caught.value.job_id.startswith("sync-")


def test_handler_exception_shows_its_message_not_the_traceback(
    fake: FakeRunPod, clock: FakeClock, small_png: Path
) -> None:
    fake.fail_with(
        json.dumps(
            {
                "error_type": "<class 'torch.OutOfMemoryError'>",
                "error_message": "CUDA out of memory",
                "error_traceback": "Traceback (most recent call last): ...",
            }
        )
    )
    with pytest.raises(RemoteInferenceError) as caught:
        client(fake, clock).run(detect_request(small_png))
    assert str(caught.value) == "RunPod worker failed (OutOfMemoryError: CUDA out of memory)"


def test_timeout_cancels_the_job(fake: FakeRunPod, clock: FakeClock, small_png: Path) -> None:
    fake.stall = True
    with pytest.raises(RemoteTimeoutError, match=r"RUNPOD_TIMEOUT_S=10s") as caught:
        client(fake, clock, runpod_timeout_s=10).run(detect_request(small_png))
    job_id = caught.value.job_id
    assert job_id in fake.jobs
    [cancel] = fake.seen("cancel")
    assert cancel.path == f"/odannot123/cancel/{job_id}"
    assert fake.jobs[job_id]["state"] == "CANCELLED"
    assert 10 <= clock.now <= 10.5 and len(fake.seen("status")) < 20


def test_bad_key_is_a_clear_error_without_retries(
    fake: FakeRunPod, clock: FakeClock, small_png: Path
) -> None:
    with pytest.raises(RemoteInferenceError, match=r"HTTP 401\): check RUNPOD_API_KEY"):
        client(fake, clock, runpod_api_key="wrong").run(detect_request(small_png))
    with pytest.raises(RemoteInferenceError, match=r"HTTP 401\): RUNPOD_API_KEY is not set"):
        client(fake, clock, runpod_api_key=None).run(detect_request(small_png))
    assert len(fake.seen("runsync")) == 2
    assert clock.sleeps == []


def test_unknown_endpoint_names_the_setting(fake: FakeRunPod, clock: FakeClock, small_png: Path) -> None:
    with pytest.raises(RemoteInferenceError, match=r"HTTP 404\): check RUNPOD_ENDPOINT_OD_ANNOTATION"):
        client(fake, clock, runpod_endpoint_od_annotation="elsewhere").run(detect_request(small_png))


def test_status_404_means_the_job_expired(fake: FakeRunPod, clock: FakeClock, small_png: Path) -> None:
    engine = client(fake, clock)
    job_id = engine.run_async(detect_request(small_png))
    fake.forget_jobs()
    with pytest.raises(RemoteInferenceError, match=rf"RunPod job {job_id} expired"):
        engine.wait(job_id)


def test_run_async_then_wait(fake: FakeRunPod, clock: FakeClock, small_png: Path) -> None:
    fake.progress = ["IN_PROGRESS"]
    engine = client(fake, clock)
    job_id = engine.run_async(detect_request(small_png))
    [queued] = fake.seen("run")
    assert queued.path == "/odannot123/run" and "wait" not in queued.query
    assert not job_id.startswith("sync-")
    response = engine.wait(job_id)
    assert response.model_dump(mode="json", exclude_none=True) == detect_output()
    assert len(fake.seen("status")) == 2
    assert clock.sleeps == [0.5]


def test_large_image_is_downscaled_under_the_budget(
    fake: FakeRunPod, clock: FakeClock, tmp_path: Path
) -> None:
    fake.handler = sizing_handler
    big = noise_png(tmp_path / "noise.png", 400, 300)
    assert big.stat().st_size > 300_000
    budget_mb = 0.03
    response = client(fake, clock, runpod_max_payload_mb=budget_mb).run(detect_request(big))

    [sent] = fake.seen("runsync")
    assert len(sent.body) <= budget_mb * MB
    encoded = base64.b64decode(sent.json()["input"]["image_base64"])
    assert encoded[:2] == b"\xff\xd8", "re-encoded as JPEG"
    shipped_width, shipped_height = image_size_of(sent.json()["input"]["image_base64"])
    assert shipped_width < 400 and abs(shipped_width / shipped_height - 4 / 3) < 0.02
    # results come back at the caller's (original) size: Label Studio draws masks at that size
    assert (response.image.width, response.image.height) == (400, 300)
    mask = decode_rle(response.detections[0].mask)
    assert mask.shape == (300, 400)
    assert mask[:140, :190].all() and not mask[160:, 210:].any()


def test_batch_budget_is_shared_and_unreadable_images_keep_their_place(
    fake: FakeRunPod, clock: FakeClock, tmp_path: Path, small_png: Path
) -> None:
    fake.handler = sizing_handler
    images = [
        BatchImage(id="big1", path=str(noise_png(tmp_path / "a.png", 300, 300))),
        BatchImage(id="missing", path=str(tmp_path / "gone.png")),
        BatchImage(id="small", path=str(small_png)),
        BatchImage(id="big2", path=str(noise_png(tmp_path / "b.png", 200, 400))),
    ]
    request = BatchRequest(model="grounding_dino", text_prompt="cat", images=images)
    budget_mb = 0.12
    response = client(fake, clock, runpod_max_payload_mb=budget_mb).run(request)

    [sent] = fake.seen("runsync")
    assert len(sent.body) <= budget_mb * MB
    shipped = {image["id"]: base64.b64decode(image["base64"]) for image in sent.json()["input"]["images"]}
    assert list(shipped) == ["big1", "small", "big2"]
    assert shipped["small"] == small_png.read_bytes()
    assert shipped["big1"][:2] == shipped["big2"][:2] == b"\xff\xd8"
    assert [item.id for item in response.results] == ["big1", "missing", "small", "big2"]
    assert response.results[1].error == f"images.1.path: no such file {tmp_path / 'gone.png'}"
    assert response.results[2].image.width == 64
    assert (response.results[3].image.width, response.results[3].image.height) == (200, 400)


def test_unreadable_single_image_is_a_request_error(
    fake: FakeRunPod, clock: FakeClock, tmp_path: Path
) -> None:
    with pytest.raises(RequestError, match=r"^image_path: no such file"):
        client(fake, clock).run(detect_request(tmp_path / "gone.png"))
    assert fake.requests == []


def test_api_key_never_reaches_logs_errors_or_describe(
    fake: FakeRunPod, clock: FakeClock, small_png: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    engine = client(fake, clock, runpod_timeout_s=5)
    fake.fail_next("runsync", Reply(429), Reply(500))
    engine.run(detect_request(small_png))
    fake.stall = True
    with pytest.raises(RemoteTimeoutError) as caught:
        engine.run(detect_request(small_png))

    assert "retry 1 of 4" in caplog.text and "cancel answered HTTP 200" in caplog.text
    assert "/odannot123/runsync" in caplog.text, "urllib3's request log is captured too"
    assert API_KEY not in caplog.text
    assert API_KEY not in str(caught.value)
    assert engine.describe() == {
        "inference_mode": "runpod",
        "endpoint": "odannot123",
        "endpoint_url": fake.endpoint_url,
        "timeout_s": 5.0,
        "max_payload_mb": 18.0,
    }


# ---- end to end: the real worker behind the SDK's local API ----


@pytest.fixture(scope="module")
def scene(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("scene") / "scene.png"
    path.write_bytes(make_image(64, 48))
    return path


@pytest.fixture(scope="module")
def local_engine(tiny_hf_cache: Path) -> Engine:
    return Engine(load_settings(device="cpu", allow_private_urls=True), allow_local_paths=True)


@pytest.fixture(scope="module")
def remote_engine(worker_api: str) -> RemoteEngine:
    settings = load_settings(
        device="cpu", runpod_base_url=worker_api, runpod_endpoint_od_annotation="", runpod_timeout_s=120
    )
    return RemoteEngine(settings)


def without_timing(response: Any) -> dict[str, Any]:
    return response.model_dump(exclude={"timing_ms"})


@pytest.mark.slow
def test_remote_detect_equals_local(remote_engine: RemoteEngine, local_engine: Engine, scene: Path) -> None:
    request = DetectRequest(
        model="grounding_dino",
        image_path=str(scene),
        text_prompt="shelf . product",
        box_threshold=0.0,
        text_threshold=0.0,
    )
    remote = remote_engine.run(request)
    assert remote.detections, "threshold 0 keeps every query"
    assert without_timing(remote) == without_timing(local_engine.run(request))


@pytest.mark.slow
def test_remote_segment_equals_local(remote_engine: RemoteEngine, local_engine: Engine, scene: Path) -> None:
    request = SegmentRequest(
        model="sam2", image_path=str(scene), points=[(0.5, 0.5), (0.2, 0.3)], labels=[1, 0], multimask=True
    )
    remote = remote_engine.run(request)
    assert len(remote.masks) == 3 and all(mask.mask is not None for mask in remote.masks)
    assert without_timing(remote) == without_timing(local_engine.run(request))


@pytest.mark.slow
def test_remote_async_job_equals_local(
    remote_engine: RemoteEngine, local_engine: Engine, scene: Path
) -> None:
    request = SegmentRequest(
        model="sam2", image_path=str(scene), box=(0.1, 0.1, 0.8, 0.9), mask_format="both"
    )
    job_id = remote_engine.run_async(request)
    assert without_timing(remote_engine.wait(job_id)) == without_timing(local_engine.run(request))


@pytest.mark.slow
def test_remote_worker_rejection_reaches_the_user(remote_engine: RemoteEngine, tmp_path: Path) -> None:
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not an image at all")
    with pytest.raises(
        RemoteInferenceError, match=r"^image_base64: cannot decode image \(UnidentifiedImageError"
    ):
        remote_engine.run(SegmentRequest(model="sam2", image_path=str(broken), point=(0.5, 0.5)))


def without_region_ids(predictions: list[dict]) -> list[dict]:
    return [
        {**p, "result": [{k: v for k, v in item.items() if k != "id"} for item in p["result"]]}
        for p in predictions
    ]


@pytest.mark.slow
@pytest.mark.parametrize("config_name", ["SAM_CONFIG", "TEXT_PROMPT_CONFIG"])
def test_backend_in_runpod_mode_gives_the_local_results(
    worker_api: str, tiny_hf_cache: Path, scene: Path, config_name: str
) -> None:
    """The Label Studio predictor over RemoteEngine (the real worker) and over the local Engine."""
    from ml_backend.labelstudio.interface import ProjectInterface
    from ml_backend.labelstudio.predictor import Predictor
    from tests.labelstudio import configs

    loose = {"device": "cpu", "default_box_threshold": 0.0, "default_text_threshold": 0.0}
    local_settings = load_settings(**loose)
    remote_settings = load_settings(
        inference_mode="runpod",
        runpod_base_url=worker_api,
        runpod_endpoint_od_annotation="",
        runpod_timeout_s=120,
        **loose,
    )

    def same_path(value: str, task_id: int | None) -> str:
        return value

    local = Predictor(Engine(local_settings, allow_local_paths=True), same_path, local_settings)
    remote = Predictor(RemoteEngine(remote_settings), same_path, remote_settings)
    interface = ProjectInterface.from_config(getattr(configs, config_name))
    tasks = [{"id": 1, "data": {"image": str(scene)}}, {"id": 2, "data": {"image": str(scene)}}]
    if config_name == "SAM_CONFIG":
        point = {
            "value": {"x": 40.0, "y": 50.0, "keypointlabels": ["Banana"]},
            "is_positive": True,
            "from_name": "tag2",
            "to_name": "image",
            "type": "keypointlabels",
        }
        calls = [(tasks[:1], {"result": [point]})]
    else:
        prompt = {
            "value": {"text": ["bottle"]},
            "from_name": "prompt",
            "to_name": "image",
            "type": "textarea",
        }
        calls = [(tasks[:1], {"result": [prompt]}), (tasks, None)]  # a text prompt, then a batch (async job)
    for call_tasks, context in calls:
        expected = without_region_ids(local.predict(call_tasks, interface, context))
        assert all(prediction["result"] for prediction in expected)
        assert without_region_ids(remote.predict(call_tasks, interface, context)) == expected


# ---- image_ref: a repeated click names the image instead of sending it again ----


class CachingWorker:
    """A worker stand-in that remembers the images it decoded, like the real engine, and answers an
    `image_ref` it does not hold with the documented miss error."""

    def __init__(self) -> None:
        self.images: dict[tuple[str, int], tuple[int, int]] = {}
        self.inputs: list[dict[str, Any]] = []

    def __call__(self, job: dict[str, Any]) -> dict[str, Any]:
        payload = job["input"]
        self.inputs.append(payload)
        if "image_ref" in payload:
            key = (payload["image_ref"]["hash"], payload["image_ref"]["bytes"])
            if key not in self.images:
                return {"error": f"{IMAGE_REF_MISS}; send the image again as image_base64 or image_url"}
            width, height = self.images[key]
        else:
            data = base64.b64decode(payload["image_base64"])
            width, height = image_size_of(payload["image_base64"])
            self.images[(hashlib.blake2b(data, digest_size=16).hexdigest(), len(data))] = (width, height)
        output = sizing_handler({"input": {**payload, "image_base64": solid_png(width, height)}})
        return output if payload["task"] == "detect" else embed_output(width, height)

    def restart(self) -> None:
        self.images.clear()


def solid_png(width: int, height: int) -> str:
    out = io.BytesIO()
    Image.new("RGB", (width, height)).save(out, format="PNG")
    return base64.b64encode(out.getvalue()).decode()


def embed_output(width: int, height: int) -> dict[str, Any]:
    return {
        "task": "embed",
        "model": "sam2",
        "model_id": "facebook/sam2.1-hiera-large",
        "image": {"width": width, "height": height},
        "timing_ms": {},
    }


def sent_image(recorded: Any) -> str:
    """What a recorded /runsync carried for the image: "bytes" or "ref"."""
    payload = recorded.json()["input"]
    assert ("image_base64" in payload) != ("image_ref" in payload), payload.keys()
    return "bytes" if "image_base64" in payload else "ref"


@pytest.fixture
def worker() -> CachingWorker:
    return CachingWorker()


def test_a_repeated_request_sends_the_ref_of_the_bytes_sent_before(
    fake: FakeRunPod, clock: FakeClock, worker: CachingWorker, small_png: Path
) -> None:
    fake.handler = worker
    engine = client(fake, clock)
    first = engine.run(detect_request(small_png))
    again = [engine.run(detect_request(small_png)) for _ in range(2)]

    assert [sent_image(sent) for sent in fake.seen("runsync")] == ["bytes", "ref", "ref"]
    data = small_png.read_bytes()
    assert worker.inputs[1]["image_ref"] == {
        "hash": hashlib.blake2b(data, digest_size=16).hexdigest(),
        "bytes": len(data),
    }
    assert "image_path" not in worker.inputs[1]
    assert all(len(sent.body) < 1_000 for sent in fake.seen("runsync")[1:])
    assert all(response == first for response in again)


def test_a_miss_resends_the_bytes_once_and_the_ref_works_again(
    fake: FakeRunPod, clock: FakeClock, worker: CachingWorker, small_png: Path
) -> None:
    fake.handler = worker
    engine = client(fake, clock)
    engine.run(detect_request(small_png))
    worker.restart()  # or RunPod routed the job to another worker
    response = engine.run(detect_request(small_png))
    engine.run(detect_request(small_png))

    assert response.detections[0].label == "cat"
    assert [sent_image(sent) for sent in fake.seen("runsync")] == ["bytes", "ref", "bytes", "ref"]


def test_a_miss_on_the_resend_is_not_resent_again(
    fake: FakeRunPod, clock: FakeClock, worker: CachingWorker, small_png: Path
) -> None:
    fake.handler = worker
    engine = client(fake, clock)
    engine.run(detect_request(small_png))
    message = f"{IMAGE_REF_MISS}; something odd"
    fake.fail_with(message)
    with pytest.raises(RemoteInferenceError) as caught:
        engine.run(detect_request(small_png))
    assert str(caught.value) == message
    assert [sent_image(sent) for sent in fake.seen("runsync")] == ["bytes", "ref", "bytes"]


@pytest.mark.parametrize(
    ("fail", "expected"),
    [
        (lambda fake: fake.fail_with("point.0: Input should be less than or equal to 1"), "point.0: Input"),
        (lambda fake: fake.fail_next("runsync", *[Reply(503)] * 5), "RunPod answered HTTP 503; gave up"),
        (lambda fake: setattr(fake, "stall", True), "RunPod did not finish within RUNPOD_TIMEOUT_S"),
    ],
    ids=["worker-error", "http-error", "timeout"],
)
def test_other_errors_of_a_ref_request_are_not_resent(
    fake: FakeRunPod, clock: FakeClock, worker: CachingWorker, small_png: Path, fail: Any, expected: str
) -> None:
    fake.handler = worker
    engine = client(fake, clock)
    engine.run(detect_request(small_png))
    sent_before = len(fake.seen("runsync"))
    fail(fake)
    with pytest.raises(RemoteInferenceError, match=f"^{re.escape(expected)}"):
        engine.run(detect_request(small_png))
    assert {sent_image(sent) for sent in fake.seen("runsync")[sent_before:]} == {"ref"}, "never resent"


def test_a_changed_file_is_sent_in_full(
    fake: FakeRunPod, clock: FakeClock, worker: CachingWorker, tmp_path: Path
) -> None:
    fake.handler = worker
    engine = client(fake, clock)
    path = tmp_path / "photo.png"
    path.write_bytes(make_image(64, 48))
    engine.run(detect_request(path))
    path.write_bytes(make_image(80, 60))
    changed = engine.run(detect_request(path))
    assert (changed.image.width, changed.image.height) == (80, 60)
    assert [sent_image(sent) for sent in fake.seen("runsync")] == ["bytes", "bytes"]


def test_a_downscaled_image_is_named_by_the_bytes_sent_and_answered_at_full_size(
    fake: FakeRunPod, clock: FakeClock, worker: CachingWorker, tmp_path: Path
) -> None:
    fake.handler = worker
    big = noise_png(tmp_path / "noise.png", 400, 300)
    engine = client(fake, clock, runpod_max_payload_mb=0.03)
    first = engine.run(detect_request(big))
    again = engine.run(detect_request(big))

    shipped = base64.b64decode(worker.inputs[0]["image_base64"])
    assert shipped[:2] == b"\xff\xd8" and len(shipped) < big.stat().st_size
    assert worker.inputs[1]["image_ref"] == {
        "hash": hashlib.blake2b(shipped, digest_size=16).hexdigest(),
        "bytes": len(shipped),
    }
    assert (again.image.width, again.image.height) == (400, 300)
    assert again == first
    assert decode_rle(again.detections[0].mask).shape == (300, 400)


def test_a_worker_without_image_ref_gets_bytes_from_then_on(
    fake: FakeRunPod,
    clock: FakeClock,
    worker: CachingWorker,
    small_png: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    def older_worker(job: dict[str, Any]) -> dict[str, Any]:
        if "image_ref" in job["input"]:
            return {"error": "image_ref: unknown field"}
        return worker(job)

    fake.handler = older_worker
    engine = client(fake, clock)
    for _ in range(3):
        assert engine.run(detect_request(small_png)).detections
    assert [sent_image(sent) for sent in fake.seen("runsync")] == ["bytes", "ref", "bytes", "bytes"]
    assert "does not accept image_ref" in caplog.text


def test_embed_uploads_once_so_the_first_click_sends_the_ref(
    fake: FakeRunPod, clock: FakeClock, worker: CachingWorker, small_png: Path
) -> None:
    fake.handler = worker
    engine = client(fake, clock)
    embedded = engine.run(EmbedRequest(image_path=str(small_png), model="sam2"))
    clicked = engine.run(detect_request(small_png))
    assert isinstance(embedded, EmbedResponse) and (embedded.image.width, embedded.image.height) == (64, 48)
    assert clicked.detections
    assert [sent.json()["input"]["task"] for sent in fake.seen("runsync")] == ["embed", "detect"]
    assert [sent_image(sent) for sent in fake.seen("runsync")] == ["bytes", "ref"]


def test_batches_and_async_jobs_always_carry_their_images(
    fake: FakeRunPod, clock: FakeClock, worker: CachingWorker, small_png: Path
) -> None:
    fake.handler = worker
    engine = client(fake, clock)
    engine.run(detect_request(small_png))
    engine.wait(engine.run_async(detect_request(small_png)))
    [queued] = fake.seen("run")
    assert sent_image(queued) == "bytes", "a queued job cannot be resent on a miss"


@pytest.mark.slow
def test_repeated_offloaded_clicks_send_a_few_kb(
    worker_api: str, local_engine: Engine, tmp_path: Path
) -> None:
    """Bytes on the wire per click, counted by a proxy between the client and the real worker."""
    photo = noise_png(tmp_path / "photo.png", 320, 240)
    prewarmed = noise_png(tmp_path / "prewarmed.png", 240, 320)
    size = photo.stat().st_size
    with counting_proxy(worker_api) as proxy:
        settings = load_settings(
            runpod_base_url=proxy.url, runpod_endpoint_od_annotation="", runpod_timeout_s=120
        )
        engine = RemoteEngine(settings)
        clicks = [(0.5, 0.5), (0.2, 0.3), (0.5, 0.5)]
        sent, responses = [], []
        for point in clicks:
            mark = proxy.mark()
            responses.append(engine.run(SegmentRequest(model="sam2", image_path=str(photo), point=point)))
            sent.append(proxy.sent_since(mark))
        mark = proxy.mark()
        engine.run(EmbedRequest(model="sam2", image_path=str(prewarmed)))
        prewarm_sent = proxy.sent_since(mark)
        mark = proxy.mark()
        first_click_after_prewarm = engine.run(
            SegmentRequest(model="sam2", image_path=str(prewarmed), point=(0.5, 0.5))
        )
        after_prewarm_sent = proxy.sent_since(mark)

    assert size < sent[0] < size * 1.4, "the first click carries the image as base64"
    assert all(repeat < 5_000 for repeat in sent[1:]), sent
    assert prewarm_sent > prewarmed.stat().st_size and after_prewarm_sent < 5_000
    assert without_timing(responses[2]) == without_timing(responses[0]), "same click, same answer by ref"
    local = local_engine.run(SegmentRequest(model="sam2", image_path=str(photo), point=clicks[1]))
    assert without_timing(responses[1]) == without_timing(local)
    assert first_click_after_prewarm.masks


def test_a_click_during_the_upload_of_its_image_waits_and_sends_the_ref(
    fake: FakeRunPod, clock: FakeClock, worker: CachingWorker, small_png: Path
) -> None:
    uploading, finish = threading.Event(), threading.Event()

    def slow_embed(job: dict[str, Any]) -> dict[str, Any]:
        if job["input"]["task"] == "embed":
            uploading.set()
            finish.wait(10)
        return worker(job)

    fake.handler = slow_embed
    engine = client(fake, clock)
    prewarm = threading.Thread(target=engine.run, args=(EmbedRequest(image_path=str(small_png)),))
    prewarm.start()
    assert uploading.wait(10)
    clicked: list[Any] = []
    click = threading.Thread(target=lambda: clicked.append(engine.run(detect_request(small_png))))
    click.start()
    time.sleep(0.3)
    assert len(fake.seen("runsync")) == 1, "the click waits for the upload in flight"
    finish.set()
    prewarm.join(10)
    click.join(10)
    assert clicked and clicked[0].detections
    assert [sent_image(sent) for sent in fake.seen("runsync")] == ["bytes", "ref"]
