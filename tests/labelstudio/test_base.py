"""The ML-backend app against the payloads a real Label Studio 1.23.2 sends (captured in ls_protocol.md)."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import requests
from flask import Flask
from flask.testing import FlaskClient

from ml_backend.labelstudio.base import (
    STATE_KEY,
    BackendState,
    LabelStudioMLBase,
    Metrics,
    ModelResponse,
    UserFacingError,
    create_app,
    project_key,
)
from ml_backend.schemas import RequestError
from tests.labelstudio.configs import RECORDED_KEYPOINT_CONTEXT
from tests.support import free_port, wait_for_http

ROOT = Path(__file__).resolve().parents[2]

LABEL_CONFIG = (
    '<View><Image name="image" value="$image"/>'
    '<RectangleLabels name="tag3" toName="image"><Label value="Banana"/><Label value="Apple"/></RectangleLabels>'
    '<KeyPointLabels name="tag2" toName="image"><Label value="Banana"/></KeyPointLabels></View>'
)
OTHER_LABEL_CONFIG = LABEL_CONFIG.replace("Apple", "Cherry")
LEGACY_TOKEN = "6d418fe93567d01a6d8bf550920ae1edfef6a1d4"

SETUP_PAYLOAD = {
    "project": "1.1795903317",
    "schema": LABEL_CONFIG,
    "hostname": "http://localhost:8080",
    "access_token": LEGACY_TOKEN,
    "extra_params": None,
}


def batch_task(task_id: int, image: str, file_upload: int | None) -> dict[str, Any]:
    return {
        "id": task_id,
        "data": {"image": image},
        "meta": {},
        "created_at": "2026-11-28T10:00:00.000000Z",
        "updated_at": "2026-11-28T10:00:00.000000Z",
        "is_labeled": False,
        "overlap": 1,
        "inner_id": task_id,
        "total_annotations": 0,
        "cancelled_annotations": 0,
        "total_predictions": 0,
        "comment_count": 0,
        "unresolved_comment_count": 0,
        "last_comment_updated_at": None,
        "project": 1,
        "updated_by": 1,
        "file_upload": file_upload,
        "comment_authors": [],
        "annotations": [],
        "predictions": [],
    }


BATCH_PAYLOAD = {
    "tasks": [
        batch_task(1, "/data/upload/1/7fcdce48-fruit.png", 1),
        batch_task(2, "http://127.0.0.1:8765/fruit_small.png", None),
        batch_task(5, "/data/local-files/?d=img/fruit_local.png", None),
    ],
    "project": "1.1795903317",
    "label_config": LABEL_CONFIG,
    "params": {"login": None, "password": None, "context": None},
}

KEYPOINT_CONTEXT = RECORDED_KEYPOINT_CONTEXT

INTERACTIVE_PAYLOAD = {
    "tasks": [
        {
            "id": 1,
            "annotations": [],
            "file_upload": "7fcdce48-fruit.png",
            "drafts": [],
            "predictions": [{"id": 8, "result": [], "model_version": "capture-1", "score": 0.87}],
            "data": {"image": "/data/upload/1/7fcdce48-fruit.png"},
            "meta": {},
            "allow_skip": True,
            "inner_id": 1,
            "project": 1,
        }
    ],
    "project": "1.1795903317",
    "label_config": LABEL_CONFIG,
    "params": {"login": None, "password": None, "context": KEYPOINT_CONTEXT},
}


def webhook_payload(action: str) -> dict[str, Any]:
    project = {"id": 1, "title": "fruit", "label_config": LABEL_CONFIG, "model_version": "capture"}
    task = {"id": 1, "data": {"image": "/data/upload/1/7fcdce48-fruit.png"}, "project": 1}
    if action in ("ANNOTATION_CREATED", "ANNOTATION_UPDATED"):
        annotation = {"id": 3, "result": [], "was_cancelled": False, "task": 1, "project": 1}
        return {"action": action, "annotation": annotation, "project": project, "task": task}
    if action == "ANNOTATIONS_DELETED":
        return {"action": action, "annotations": [{"id": 1}], "project": project}
    if action == "TASKS_CREATED":
        return {"action": action, "tasks": [task], "project": project}
    return {"action": action, "project": project}


class EchoModel(LabelStudioMLBase):
    """Echoes each task back; special image values make it fail in the ways the app must handle."""

    def setup(self) -> None:
        self.setup_calls = getattr(self, "setup_calls", 0) + 1
        self.fit_calls: list[tuple[str, dict[str, Any]]] = []
        self.predict_kwargs: list[dict[str, Any]] = []
        time.sleep(0.02)  # widen the window for concurrent first requests

    def predict(
        self, tasks: list[dict[str, Any]], context: dict[str, Any] | None = None, **kwargs: Any
    ) -> ModelResponse | list[dict[str, Any]] | dict[str, Any]:
        self.predict_kwargs.append(kwargs)
        image = tasks[0]["data"]["image"]
        if image == "user-error":
            raise UserFacingError("label config: add a RectangleLabels control", 409)
        if image == "request-error":
            raise RequestError("image: cannot decode image")
        if image == "crash":
            raise RuntimeError("CUDA exploded token=abc123secret")
        predictions = [self._echo(task, context) for task in tasks]
        if image == "as-list":
            return predictions
        if image == "as-dict":
            return predictions[0]
        if image == "too-few":
            return ModelResponse(predictions=predictions[:-1])
        return ModelResponse(predictions=predictions)

    def fit(self, event: str, data: dict[str, Any], **kwargs: Any) -> dict[str, Any] | None:
        self.fit_calls.append((event, data))
        return {"seen": event}

    @staticmethod
    def _echo(task: dict[str, Any], context: dict[str, Any] | None) -> dict[str, Any]:
        result = {"task": task["id"], "image": task["data"]["image"], "context": context}
        return {"result": [result], "score": 0.5}


class VersionedModel(EchoModel):
    model_version = "echo-7"


def make_app(model_class: type[LabelStudioMLBase] = EchoModel, **kwargs: Any) -> Flask:
    app = create_app(model_class, **kwargs)
    app.testing = True
    return app


def state_of(app: Flask) -> BackendState:
    return app.extensions[STATE_KEY]


@pytest.fixture
def app() -> Flask:
    return make_app(health_details=lambda: {"models_loaded": ["sam2"], "device": "cpu"})


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


def predict_one(client: FlaskClient, image: str) -> Any:
    payload = {"tasks": [batch_task(1, image, None)], "project": "1.1795903317", "label_config": LABEL_CONFIG}
    return client.post("/predict", json=payload)


# ---- endpoints ----


def test_health_reports_up_with_model_class_and_details(client: FlaskClient) -> None:
    response = client.get("/health")
    assert response.status_code == 200
    assert response.get_json() == {
        "status": "UP",
        "model_class": "EchoModel",
        "models_loaded": ["sam2"],
        "device": "cpu",
    }


def test_setup_answers_model_version_and_keeps_what_label_studio_sent(
    app: Flask, client: FlaskClient
) -> None:
    response = client.post("/setup", json=SETUP_PAYLOAD)
    assert response.status_code == 200
    assert response.get_json() == {"model_version": "EchoModel-0.0.1"}
    model = state_of(app).models.get("1")
    assert model.project_id == "1"
    assert model.label_config == LABEL_CONFIG
    assert (model.hostname, model.access_token, model.extra_params) == (
        "http://localhost:8080",
        LEGACY_TOKEN,
        {},
    )
    assert model.parsed_label_config["tag3"]["type"] == "RectangleLabels"
    assert model.parsed_label_config["tag3"]["labels"] == ["Banana", "Apple"]


def test_repeated_setup_reuses_the_instance_and_a_new_label_config_replaces_it(
    app: Flask, client: FlaskClient
) -> None:
    client.post("/setup", json=SETUP_PAYLOAD)
    client.post("/setup", json=SETUP_PAYLOAD)
    first = state_of(app).models.get("1")
    assert first.setup_calls == 1
    first.set("model_version", "echo-2")

    response = client.post("/setup", json={**SETUP_PAYLOAD, "schema": OTHER_LABEL_CONFIG})
    second = state_of(app).models.get("1")
    assert second is not first
    assert second.label_config == OTHER_LABEL_CONFIG
    assert second.parsed_label_config["tag3"]["labels"] == ["Banana", "Cherry"]
    assert second.hostname == "http://localhost:8080"
    assert response.get_json() == {"model_version": "echo-2"}  # the key-value store survived


def test_setup_after_an_interactive_call_reruns_setup_with_the_hostname(
    app: Flask, client: FlaskClient
) -> None:
    client.post("/predict", json=INTERACTIVE_PAYLOAD)  # Label Studio sends no /setup before interactive calls
    early = state_of(app).models.get("1")
    assert early.hostname is None

    client.post("/setup", json=SETUP_PAYLOAD)
    client.post("/predict", json=INTERACTIVE_PAYLOAD)
    current = state_of(app).models.get("1")
    assert current is not early
    assert (current.hostname, current.access_token) == ("http://localhost:8080", LEGACY_TOKEN)
    assert current.setup_calls == 1
    assert len(current.predict_kwargs) == 1


def test_model_version_can_be_overridden_by_a_subclass() -> None:
    client = make_app(VersionedModel).test_client()
    assert client.post("/setup", json=SETUP_PAYLOAD).get_json() == {"model_version": "echo-7"}
    assert client.get("/versions").get_json() == {"versions": ["echo-7"]}


def test_batch_predict_returns_one_prediction_per_task_in_order(app: Flask, client: FlaskClient) -> None:
    response = client.post("/predict", json=BATCH_PAYLOAD)
    assert response.status_code == 200
    results = response.get_json()["results"]
    assert [prediction["result"][0]["task"] for prediction in results] == [1, 2, 5]
    assert [prediction["result"][0]["image"] for prediction in results] == [
        task["data"]["image"] for task in BATCH_PAYLOAD["tasks"]
    ]
    assert all(prediction["model_version"] == "EchoModel-0.0.1" for prediction in results)
    assert all(prediction["result"][0]["context"] is None for prediction in results)
    assert state_of(app).models.get("1").predict_kwargs == [{"login": None, "password": None}]


def test_interactive_predict_passes_the_context(client: FlaskClient) -> None:
    response = client.post("/predict", json=INTERACTIVE_PAYLOAD)
    assert response.status_code == 200
    (prediction,) = response.get_json()["results"]
    assert prediction["result"][0]["context"] == KEYPOINT_CONTEXT
    assert prediction["score"] == 0.5


@pytest.mark.parametrize("shape", ["as-list", "as-dict"])
def test_predict_accepts_a_list_or_a_single_prediction(client: FlaskClient, shape: str) -> None:
    response = predict_one(client, shape)
    assert response.status_code == 200
    (prediction,) = response.get_json()["results"]
    assert prediction["result"][0]["image"] == shape
    assert prediction["model_version"] == "EchoModel-0.0.1"


def test_model_response_keeps_explicit_versions() -> None:
    response = ModelResponse(
        predictions=[{"result": [], "model_version": "own"}, [{"result": []}], {"result": []}],
        model_version="batch-3",
    )
    assert response.to_label_studio("fallback") == {
        "results": [
            {"result": [], "model_version": "own"},
            [{"result": [], "model_version": "batch-3"}],
            {"result": [], "model_version": "batch-3"},
        ]
    }


@pytest.mark.parametrize(
    "action", ["ANNOTATION_CREATED", "ANNOTATION_UPDATED", "ANNOTATIONS_DELETED", "START_TRAINING"]
)
def test_webhook_queues_fit_for_training_events(app: Flask, client: FlaskClient, action: str) -> None:
    payload = webhook_payload(action)
    response = client.post("/webhook", json=payload)
    assert response.status_code == 200
    assert response.get_json() == {"status": "ok", "action": action, "fit_queued": True}
    assert state_of(app).fits.drain(timeout_s=5)
    model = state_of(app).models.get(1)
    assert model.label_config == LABEL_CONFIG
    assert model.fit_calls == [(action, payload)]


@pytest.mark.parametrize("action", ["TASKS_CREATED", "PROJECT_UPDATED", "SOMETHING_NEW"])
def test_webhook_acknowledges_other_events_without_fit(app: Flask, client: FlaskClient, action: str) -> None:
    response = client.post("/webhook", json=webhook_payload(action))
    assert response.status_code == 200
    assert response.get_json()["fit_queued"] is False
    assert state_of(app).fits.drain(timeout_s=5)
    assert len(state_of(app).models) == 0


def test_webhook_answers_before_a_slow_fit_finishes() -> None:
    release = threading.Event()

    class SlowFit(EchoModel):
        def fit(self, event: str, data: dict[str, Any], **kwargs: Any) -> None:
            release.wait(5)
            super().fit(event, data)

    app = make_app(SlowFit)
    started = time.perf_counter()
    response = app.test_client().post("/webhook", json=webhook_payload("START_TRAINING"))
    assert response.status_code == 200
    assert time.perf_counter() - started < 1.0
    release.set()
    assert state_of(app).fits.drain(timeout_s=5)
    assert state_of(app).models.get(1).fit_calls[0][0] == "START_TRAINING"


def test_versions_lists_the_model_version(client: FlaskClient) -> None:
    assert client.get("/versions").get_json() == {"versions": ["EchoModel-0.0.1"]}


def test_metrics_count_requests_errors_and_predict_latency(client: FlaskClient) -> None:
    client.get("/health")
    client.post("/predict", json=BATCH_PAYLOAD)
    client.post("/predict", data="{", content_type="application/json")
    metrics = client.get("/metrics").get_json()
    assert metrics["requests"] == {"/health": 1, "/predict": 2}
    assert metrics["errors"] == {"400": 1}
    assert metrics["predict"]["calls"] == 1
    assert metrics["predict"]["tasks"] == 3
    latency = metrics["predict"]["latency_ms"]
    assert 0 <= latency["p50"] <= latency["p95"] <= latency["max"]
    assert metrics["projects"] == 1


def test_metrics_percentiles_use_nearest_rank() -> None:
    metrics = Metrics()
    for milliseconds in range(1, 101):
        metrics.record_predict(milliseconds / 1000, tasks=1)
    latency = metrics.snapshot()["predict"]["latency_ms"]
    assert latency == {"p50": 50.0, "p95": 95.0, "max": 100.0}


def test_concurrent_first_requests_create_one_instance_per_project(app: Flask) -> None:
    def call(_: int) -> int:
        return app.test_client().post("/predict", json=INTERACTIVE_PAYLOAD).status_code

    with ThreadPoolExecutor(max_workers=8) as pool:
        statuses = list(pool.map(call, range(16)))
    assert statuses == [200] * 16
    model = state_of(app).models.get("1")
    assert model.setup_calls == 1
    assert len(model.predict_kwargs) == 16
    assert state_of(app).metrics.snapshot()["predict"]["calls"] == 16


@pytest.mark.parametrize(
    ("project", "key"),
    [("1.1795903317", "1"), (1, "1"), ({"id": 12, "title": "x"}, "12"), (None, ""), ("7", "7")],
)
def test_project_key(project: object, key: str) -> None:
    assert project_key(project) == key


# ---- basic auth ----


def basic(user: str, password: str) -> dict[str, str]:
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


@pytest.mark.parametrize(
    ("method", "path", "payload"),
    [
        ("GET", "/health", None),
        ("POST", "/setup", SETUP_PAYLOAD),
        ("POST", "/predict", BATCH_PAYLOAD),
        ("POST", "/webhook", webhook_payload("PROJECT_UPDATED")),
        ("GET", "/versions", None),
        ("GET", "/metrics", None),
    ],
)
def test_basic_auth_guards_every_endpoint(method: str, path: str, payload: dict[str, Any] | None) -> None:
    client = make_app(basic_auth_user="ls", basic_auth_pass="s3cret").test_client()
    for headers in ({}, basic("ls", "wrong"), basic("other", "s3cret")):
        refused = client.open(path, method=method, json=payload, headers=headers)
        assert refused.status_code == 401
        assert refused.headers["WWW-Authenticate"].startswith("Basic")
        assert refused.get_json()["status"] == "error"
    allowed = client.open(path, method=method, json=payload, headers=basic("ls", "s3cret"))
    assert allowed.status_code == 200


def test_without_basic_auth_no_credentials_are_needed(client: FlaskClient) -> None:
    assert client.get("/health").status_code == 200
    assert client.post("/setup", json=SETUP_PAYLOAD).status_code == 200


def test_basic_auth_needs_user_and_password_together() -> None:
    with pytest.raises(ValueError, match="BASIC_AUTH_USER and BASIC_AUTH_PASS"):
        create_app(EchoModel, basic_auth_user="ls")


# ---- errors ----


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ('{"tasks": [', "request body: not valid JSON"),
        ("", "request body: empty"),
        ("[1, 2]", "request body: must be a JSON object"),
        ('{"project": "1.1"}', "tasks: required"),
        ('{"tasks": []}', "tasks: required"),
        ('{"tasks": [1]}', "tasks: every task must be a JSON object"),
        ('{"tasks": [{"id": 1}], "params": {"context": 3}}', "params.context"),
    ],
)
def test_bad_predict_requests_answer_400_json(client: FlaskClient, body: str, message: str) -> None:
    response = client.post("/predict", data=body, content_type="application/json")
    assert response.status_code == 400
    assert response.get_json()["status"] == "error"
    assert response.get_json()["message"].startswith(message)


def test_setup_and_webhook_reject_malformed_json(client: FlaskClient) -> None:
    for path in ("/setup", "/webhook"):
        response = client.post(path, data="not json", content_type="application/json")
        assert response.status_code == 400
        assert "not valid JSON" in response.get_json()["message"]
    response = client.post("/webhook", json={"project": {"id": 1}})
    assert response.status_code == 400
    assert response.get_json()["message"].startswith("action: required")


def test_user_facing_error_keeps_its_status_and_message(client: FlaskClient) -> None:
    response = predict_one(client, "user-error")
    assert response.status_code == 409
    assert response.get_json() == {
        "status": "error",
        "message": "label config: add a RectangleLabels control",
    }


def test_request_errors_answer_422(client: FlaskClient) -> None:
    response = predict_one(client, "request-error")
    assert response.status_code == 422
    assert response.get_json()["message"] == "image: cannot decode image"


def test_unexpected_error_answers_500_without_traceback_or_token(
    client: FlaskClient, caplog: pytest.LogCaptureFixture
) -> None:
    response = predict_one(client, "crash")
    assert response.status_code == 500
    body = response.get_json()
    assert body["status"] == "error"
    assert "RuntimeError: CUDA exploded" in body["message"]
    text = json.dumps(body)
    assert "Traceback" not in text
    assert "abc123secret" not in text
    assert "Traceback" in caplog.text  # the server log keeps it


def test_wrong_number_of_predictions_is_a_500(client: FlaskClient) -> None:
    payload = {**BATCH_PAYLOAD, "tasks": [batch_task(1, "too-few", None), batch_task(2, "x", None)]}
    response = client.post("/predict", json=payload)
    assert response.status_code == 500
    assert "returned 1 predictions for 2 tasks" in response.get_json()["message"]


def test_unknown_routes_and_methods_answer_json(client: FlaskClient) -> None:
    missing = client.get("/nope")
    assert missing.status_code == 404
    assert missing.get_json()["status"] == "error"
    wrong_method = client.get("/predict")
    assert wrong_method.status_code == 405
    assert wrong_method.get_json()["status"] == "error"


def test_invalid_label_config_is_a_user_error() -> None:
    model = EchoModel(project_id="1", label_config="<View><Image")
    with pytest.raises(UserFacingError, match="label config: cannot parse it"):
        _ = model.parsed_label_config


# ---- the entry point ----


@pytest.mark.slow
def test_wsgi_dev_server_serves_the_backend_with_basic_auth_from_the_environment() -> None:
    port = free_port()
    env = {**os.environ, "BASIC_AUTH_USER": "ls", "BASIC_AUTH_PASS": "s3cret", "PRELOAD_MODELS": ""}
    command = [
        sys.executable,
        "_wsgi.py",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--log-level",
        "warning",
    ]
    server = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        url = f"http://127.0.0.1:{port}"
        wait_for_http(f"{url}/health", timeout=60, ok=lambda status: status == 401)
        health = requests.get(f"{url}/health", auth=("ls", "s3cret"), timeout=5)
        assert health.status_code == 200
        assert health.json()["status"] == "UP"
        assert health.json()["model_class"] == "ODAnnotationModel"
    finally:
        server.terminate()
        server.wait(timeout=10)
