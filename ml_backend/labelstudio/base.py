"""The Label Studio ML-backend protocol on Flask 3: the subclass contract and the HTTP app.

A backend subclasses `LabelStudioMLBase` (the contract of label-studio-ml 2.x: `setup`, `predict`,
`fit`, `model_version`, `get`/`set`) and `create_app` serves it with the endpoints and payloads that
Label Studio 1.23 sends and accepts: /health, /setup, /predict, /webhook, /versions, plus /metrics.
Every error answers JSON `{"status": "error", "message": ...}`; tracebacks stay in the server log.
"""

from __future__ import annotations

import hmac
import json
import logging
import math
import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from flask import Flask, Response, jsonify, request
from label_studio_sdk._extensions.label_studio_tools.core.label_config import parse_config
from pydantic import BaseModel
from werkzeug.exceptions import HTTPException

from ml_backend.labelstudio.background import BackgroundAnnotator
from ml_backend.logs import redact
from ml_backend.schemas import RequestError

log = logging.getLogger(__name__)

FIT_EVENTS = frozenset({"ANNOTATION_CREATED", "ANNOTATION_UPDATED", "ANNOTATIONS_DELETED", "START_TRAINING"})
TASKS_CREATED = "TASKS_CREATED"
STATE_KEY = "label_studio_ml"
Prediction = dict[str, Any]
TasksCreatedHook = Callable[[int, list[int]], None]


class UserFacingError(ValueError):
    """A failure the Label Studio user can fix (bad config, bad prompt, unreachable image).

    The app answers `status_code` with the message as is, so it must be written for that user.
    """

    def __init__(self, message: str, status_code: int = 422) -> None:
        super().__init__(message)
        self.status_code = status_code


class ModelResponse(BaseModel):
    """What `predict` returns: one prediction per task, in task order.

    A prediction is `{"result": [...], "score": ..., "model_version": ...}` or a list of those.
    """

    predictions: list[Prediction | list[Prediction]]
    model_version: str | None = None

    def label_studio_results(self, default_model_version: str) -> list[Prediction | list[Prediction]]:
        """The `results` list Label Studio wants, every prediction stamped with a model version."""
        version = self.model_version or default_model_version
        return [_stamp_version(prediction, version) for prediction in self.predictions]

    def to_label_studio(self, default_model_version: str) -> dict[str, Any]:
        return {"results": self.label_studio_results(default_model_version)}


def _stamp_version(prediction: Prediction | list[Prediction], version: str) -> Prediction | list[Prediction]:
    if isinstance(prediction, list):
        return [{"model_version": version, **item} for item in prediction]
    return {"model_version": version, **prediction}


class LabelStudioMLBase:
    """Base class of a Label Studio ML backend: one instance per Label Studio project.

    The app constructs it, fills `hostname`, `access_token` and `extra_params` from /setup, then calls
    `setup()` once. A changed label config or changed /setup values get a fresh instance (set up
    again) that keeps the key-value store.
    """

    def __init__(self, project_id: str | None = None, label_config: str | None = None) -> None:
        self.project_id = project_id
        self.label_config = label_config
        self.hostname: str | None = None
        self.access_token: str | None = None
        self.extra_params: dict[str, Any] = {}
        # Where work goes that should not hold up Label Studio (set by the app before setup()).
        self.background: BackgroundAnnotator | None = None
        self._store: dict[str, Any] = {}

    def setup(self) -> None:
        """Hook for one-time initialisation, with `label_config` and the /setup values in place."""

    def predict(
        self, tasks: list[dict[str, Any]], context: dict[str, Any] | None = None, **kwargs: Any
    ) -> ModelResponse | list[Prediction] | Prediction:
        raise NotImplementedError(f"{type(self).__name__} does not implement predict()")

    def fit(self, event: str, data: dict[str, Any], **kwargs: Any) -> dict[str, Any] | None:
        """Called in the background for annotation events and START_TRAINING; the default ignores them."""
        return None

    @property
    def model_version(self) -> str:
        return self.get("model_version") or f"{type(self).__name__}-0.0.1"

    @model_version.setter
    def model_version(self, version: str) -> None:
        self.set("model_version", version)

    @cached_property
    def parsed_label_config(self) -> dict[str, Any]:
        """`{control name: {"type", "to_name", "inputs", "labels", ...}}`, as label-studio-ml 2.x gives it."""
        try:
            return parse_config(self.label_config) if self.label_config else {}
        except Exception as error:
            raise UserFacingError(f"label config: cannot parse it ({error})") from None

    def get(self, key: str) -> Any:
        return self._store.get(key)

    def set(self, key: str, value: Any) -> None:
        self._store[key] = value


# ---- per-project instances ----


@dataclass(frozen=True)
class SetupInfo:
    """What Label Studio tells the backend in POST /setup."""

    hostname: str | None = None
    access_token: str | None = None
    extra_params: dict[str, Any] = field(default_factory=dict)


def project_key(project: object) -> str:
    """Label Studio's project reference ("1.1795903317", 1, or {"id": 1, ...}) → "1"; "" when absent."""
    if isinstance(project, dict):
        project = project.get("id")
    if project is None:
        return ""
    return str(project).split(".", 1)[0]


class ProjectModels:
    """A thread-safe cache of one model instance per project, rebuilt when what setup() saw changes."""

    def __init__(
        self, model_class: type[LabelStudioMLBase], background: BackgroundAnnotator | None = None
    ) -> None:
        self._model_class = model_class
        self._background = background
        self._instances: dict[str, LabelStudioMLBase] = {}
        self._lock = threading.Lock()

    def get(
        self, project: object, label_config: str | None = None, setup_info: SetupInfo | None = None
    ) -> LabelStudioMLBase:
        key = project_key(project)
        with self._lock:
            current = self._instances.get(key)
            if current is not None and _still_fits(current, label_config, setup_info):
                return current
            model = self._create(key, label_config, current, setup_info)
            self._instances[key] = model
            return model

    def versions(self) -> list[str]:
        with self._lock:
            models = list(self._instances.values())
        return list(dict.fromkeys(model.model_version for model in models))

    def __len__(self) -> int:
        return len(self._instances)

    def _create(
        self,
        key: str,
        label_config: str | None,
        previous: LabelStudioMLBase | None,
        setup_info: SetupInfo | None,
    ) -> LabelStudioMLBase:
        if label_config is None and previous is not None:
            label_config = previous.label_config
        model = self._model_class(project_id=key or None, label_config=label_config)
        info = _setup_info_of(previous) if previous is not None else SetupInfo()
        if setup_info is not None:
            info = _merged(info, setup_info)
        model.hostname, model.access_token, model.extra_params = (
            info.hostname,
            info.access_token,
            info.extra_params,
        )
        model.background = self._background
        if previous is not None:
            model._store = previous._store
        model.setup()
        log.info("model %s ready for project %s", type(model).__name__, key or "(none)")
        return model


def _still_fits(model: LabelStudioMLBase, label_config: str | None, setup_info: SetupInfo | None) -> bool:
    """False when Label Studio sent a new label config or new connection details: setup() must rerun."""
    if label_config not in (None, model.label_config):
        return False
    return setup_info is None or _merged(_setup_info_of(model), setup_info) == _setup_info_of(model)


def _merged(current: SetupInfo, update: SetupInfo) -> SetupInfo:
    return SetupInfo(
        update.hostname or current.hostname,
        update.access_token or current.access_token,
        update.extra_params or current.extra_params,
    )


def _setup_info_of(model: LabelStudioMLBase) -> SetupInfo:
    return SetupInfo(model.hostname, model.access_token, model.extra_params)


# ---- background fit ----


class FitQueue:
    """Runs `fit` one call at a time off the request thread: Label Studio waits only 1 s for a webhook."""

    def __init__(self) -> None:
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ls-fit")

    def submit(self, run_fit: Callable[[], object], action: str) -> None:
        self._executor.submit(self._run_logged, run_fit, action)

    def drain(self, timeout_s: float) -> bool:
        """Wait until every fit queued so far has run; True when it did within the timeout."""
        done, _ = wait([self._executor.submit(lambda: None)], timeout=timeout_s)
        return bool(done)

    @staticmethod
    def _run_logged(run_fit: Callable[[], object], action: str) -> None:
        try:
            run_fit()
        except Exception:
            log.exception("fit for %s failed", action)


# ---- metrics ----


class Metrics:
    """Request and error counters and a predict-latency window, safe to update from many threads."""

    def __init__(self, latency_window: int = 1000) -> None:
        self._lock = threading.Lock()
        self._started = time.monotonic()
        self._requests: Counter[str] = Counter()
        self._errors: Counter[str] = Counter()
        self._predict_calls = 0
        self._predicted_tasks = 0
        self._latencies_ms: deque[float] = deque(maxlen=latency_window)

    def record_request(self, endpoint: str, status: int) -> None:
        with self._lock:
            self._requests[endpoint] += 1
            if status >= 400:
                self._errors[str(status)] += 1

    def record_predict(self, seconds: float, tasks: int) -> None:
        with self._lock:
            self._predict_calls += 1
            self._predicted_tasks += tasks
            self._latencies_ms.append(seconds * 1000.0)

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            latencies = sorted(self._latencies_ms)
            return {
                "uptime_s": round(time.monotonic() - self._started, 1),
                "requests": dict(self._requests),
                "errors": dict(self._errors),
                "predict": {
                    "calls": self._predict_calls,
                    "tasks": self._predicted_tasks,
                    "latency_ms": _latency_summary(latencies),
                },
            }


def _latency_summary(sorted_ms: list[float]) -> dict[str, float | None]:
    if not sorted_ms:
        return {"p50": None, "p95": None, "max": None}
    return {
        "p50": round(_percentile(sorted_ms, 0.50), 1),
        "p95": round(_percentile(sorted_ms, 0.95), 1),
        "max": round(sorted_ms[-1], 1),
    }


def _percentile(sorted_values: list[float], fraction: float) -> float:
    rank = max(1, math.ceil(fraction * len(sorted_values)))  # nearest-rank
    return sorted_values[rank - 1]


# ---- request parsing and response shaping ----


@dataclass(frozen=True)
class PredictCall:
    tasks: list[dict[str, Any]]
    project: object
    label_config: str | None
    context: dict[str, Any] | None
    params: dict[str, Any]

    @classmethod
    def from_body(cls, body: dict[str, Any]) -> PredictCall:
        tasks = body.get("tasks")
        if not isinstance(tasks, list) or not tasks:
            raise UserFacingError("tasks: required, a non-empty list of Label Studio tasks", 400)
        if not all(isinstance(task, dict) for task in tasks):
            raise UserFacingError("tasks: every task must be a JSON object", 400)
        params = body.get("params") or {}
        if not isinstance(params, dict):
            raise UserFacingError("params: must be a JSON object", 400)
        context = params.get("context")
        if context is not None and not isinstance(context, dict):
            raise UserFacingError("params.context: must be a JSON object or null", 400)
        other_params = {name: value for name, value in params.items() if name not in ("context", "tasks")}
        return cls(tasks, body.get("project"), body.get("label_config"), context, other_params)


def created_tasks(body: dict[str, Any]) -> tuple[int, list[int]]:
    """The project id and task ids of a TASKS_CREATED webhook (`{action, tasks: [...], project: {...}}`)."""
    key = project_key(body.get("project"))
    if not key.isdigit():
        raise UserFacingError("project: required, the Label Studio project of the created tasks", 400)
    tasks = body.get("tasks")
    listed = tasks if isinstance(tasks, list) else [None]
    ids = [task.get("id") if isinstance(task, dict) else None for task in listed]
    if not all(type(task_id) is int for task_id in ids):
        raise UserFacingError("tasks: required, a list of Label Studio tasks with integer ids", 400)
    return int(key), ids


def read_json_object() -> dict[str, Any]:
    raw = request.get_data(cache=False)
    if not raw.strip():
        raise UserFacingError("request body: empty, expected a JSON object", 400)
    try:
        body = json.loads(raw)
    except ValueError as error:
        raise UserFacingError(f"request body: not valid JSON ({error})", 400) from None
    if not isinstance(body, dict):
        raise UserFacingError("request body: must be a JSON object", 400)
    return body


def as_model_response(output: object) -> ModelResponse:
    if isinstance(output, ModelResponse):
        return output
    if isinstance(output, list):
        return ModelResponse(predictions=output)
    if isinstance(output, dict):
        if "predictions" in output:
            return ModelResponse.model_validate(output)
        return ModelResponse(predictions=[output])
    raise TypeError(f"predict() returned {type(output).__name__}, expected ModelResponse, a list or a dict")


def predictions_for(
    model: LabelStudioMLBase, output: object, task_count: int
) -> list[Prediction | list[Prediction]]:
    results = as_model_response(output).label_studio_results(model.model_version)
    if len(results) != task_count:
        raise RuntimeError(f"predict() returned {len(results)} predictions for {task_count} tasks")
    return results


def error_response(message: str, status: int) -> tuple[Response, int]:
    return jsonify({"status": "error", "message": message}), status


# ---- the app ----


@dataclass
class BackendState:
    """Everything the app keeps between requests; `app.extensions["label_studio_ml"]`."""

    model_class: type[LabelStudioMLBase]
    models: ProjectModels
    metrics: Metrics
    fits: FitQueue
    on_tasks_created: TasksCreatedHook | None = None


def create_app(
    model_class: type[LabelStudioMLBase],
    *,
    basic_auth_user: str | None = None,
    basic_auth_pass: str | None = None,
    health_details: Callable[[], dict[str, Any]] | None = None,
    metrics_details: Callable[[], dict[str, Any]] | None = None,
    background: BackgroundAnnotator | None = None,
    on_tasks_created: TasksCreatedHook | None = None,
) -> Flask:
    """A Flask app serving `model_class` to Label Studio; with basic auth set, every endpoint needs it.
    `health_details` and `metrics_details` add the model's own fields to /health and /metrics.
    `background` is handed to every model instance; `on_tasks_created(project_id, task_ids)` hears
    TASKS_CREATED webhooks (imports, storage syncs) and must return at once."""
    if bool(basic_auth_user) != bool(basic_auth_pass):
        raise ValueError("BASIC_AUTH_USER and BASIC_AUTH_PASS must be set together")
    app = Flask(model_class.__name__, static_folder=None)
    models = ProjectModels(model_class, background)
    state = BackendState(model_class, models, Metrics(), FitQueue(), on_tasks_created)
    app.extensions[STATE_KEY] = state
    _install_hooks(app, state, basic_auth_user, basic_auth_pass)
    _install_error_handlers(app)
    _install_routes(app, state, health_details, metrics_details)
    return app


def _install_hooks(app: Flask, state: BackendState, user: str | None, password: str | None) -> None:
    @app.before_request
    def require_basic_auth() -> tuple[Response, int] | None:
        if user is None or _basic_auth_matches(user, password or ""):
            return None
        response, status = error_response("authentication required: use the backend's basic auth", 401)
        response.headers["WWW-Authenticate"] = 'Basic realm="od-annotation ML backend"'
        return response, status

    @app.after_request
    def count_request(response: Response) -> Response:
        endpoint = request.url_rule.rule if request.url_rule else "(unknown)"
        state.metrics.record_request(endpoint, response.status_code)
        return response


def _basic_auth_matches(user: str, password: str) -> bool:
    given = request.authorization
    if given is None or given.type != "basic":
        return False
    user_ok = hmac.compare_digest((given.username or "").encode(), user.encode())
    password_ok = hmac.compare_digest((given.password or "").encode(), password.encode())
    return user_ok and password_ok


def _install_error_handlers(app: Flask) -> None:
    @app.errorhandler(UserFacingError)
    def user_error(error: UserFacingError) -> tuple[Response, int]:
        log.info("%s %s rejected: %s", request.method, request.path, error)
        return error_response(str(error), error.status_code)

    @app.errorhandler(RequestError)
    def request_error(error: RequestError) -> tuple[Response, int]:
        log.info("%s %s rejected: %s", request.method, request.path, error)
        return error_response(str(error), 422)

    @app.errorhandler(HTTPException)
    def http_error(error: HTTPException) -> tuple[Response, int]:
        return error_response(error.description or error.name, error.code or 500)

    @app.errorhandler(Exception)
    def unexpected_error(error: Exception) -> tuple[Response, int]:
        log.exception("%s %s failed", request.method, request.path)
        detail = redact(str(error)) or "no details"
        return error_response(
            f"ML backend error ({type(error).__name__}: {detail}); the backend log has the details", 500
        )


def _install_routes(
    app: Flask,
    state: BackendState,
    health_details: Callable[[], dict[str, Any]] | None,
    metrics_details: Callable[[], dict[str, Any]] | None = None,
) -> None:
    @app.get("/health")
    def health() -> dict[str, Any]:
        details = health_details() if health_details else {}
        return {"status": "UP", "model_class": state.model_class.__name__, **details}

    @app.post("/setup")
    def setup() -> dict[str, Any]:
        body = read_json_object()
        info = SetupInfo(
            hostname=body.get("hostname") or None,
            access_token=body.get("access_token") or None,
            extra_params=body.get("extra_params") or {},
        )
        model = state.models.get(body.get("project"), body.get("schema"), info)
        return {"model_version": model.model_version}

    @app.post("/predict")
    def predict() -> dict[str, Any]:
        call = PredictCall.from_body(read_json_object())
        model = state.models.get(call.project, call.label_config)
        started = time.perf_counter()
        output = model.predict(call.tasks, context=call.context, **call.params)
        results = predictions_for(model, output, len(call.tasks))
        elapsed = time.perf_counter() - started
        state.metrics.record_predict(elapsed, len(call.tasks))
        log.info(
            "predicted %d task(s) for project %s in %.0f ms%s",
            len(call.tasks),
            project_key(call.project) or "(none)",
            elapsed * 1000,
            " (interactive)" if call.context else "",
        )
        return {"results": results}

    @app.post("/webhook")
    def webhook() -> dict[str, Any]:
        body = read_json_object()
        action = body.get("action")
        if not isinstance(action, str) or not action:
            raise UserFacingError("action: required, the Label Studio webhook event name", 400)
        if action == TASKS_CREATED and state.on_tasks_created is not None:
            state.on_tasks_created(*created_tasks(body))
            return {"status": "ok", "action": action, "fit_queued": False, "annotate_queued": True}
        if action not in FIT_EVENTS:
            return {"status": "ok", "action": action, "fit_queued": False}
        project = body.get("project")
        label_config = project.get("label_config") if isinstance(project, dict) else None
        state.fits.submit(lambda: state.models.get(project, label_config).fit(action, body), action)
        return {"status": "ok", "action": action, "fit_queued": True}

    @app.get("/versions")
    def versions() -> dict[str, Any]:
        known = state.models.versions() or [state.models.get(None).model_version]
        return {"versions": known}

    @app.get("/metrics")
    def metrics() -> dict[str, Any]:
        details = metrics_details() if metrics_details else {}
        return {**state.metrics.snapshot(), "projects": len(state.models), **details}
