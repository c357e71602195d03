"""Shared fixtures.

The environment block runs when pytest loads this file, before any test module imports transformers or
huggingface_hub (both read these variables at import time). Subprocesses started by tests inherit it.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests

from tests.support import free_port, stop_process, wait_for_http

ROOT = Path(__file__).resolve().parents[1]

# ---- offline Hugging Face cache holding the tiny models (git-ignored, reused across runs) ----

TINY_HF_HOME = ROOT / ".cache" / "tiny-hf"
TINY_HUB_CACHE = TINY_HF_HOME / "hub"

os.environ.update(
    HF_HUB_OFFLINE="1",
    TRANSFORMERS_OFFLINE="1",
    HF_HOME=str(TINY_HF_HOME),
    HF_HUB_CACHE=str(TINY_HUB_CACHE),
)
TINY_HUB_CACHE.mkdir(parents=True, exist_ok=True)

# In-process code reads the global settings: run on the CPU, allow the loopback test servers, and
# keep downloaded task images in a throwaway folder.
os.environ.setdefault("DEVICE", "cpu")
os.environ.setdefault("ALLOW_PRIVATE_URLS", "true")
os.environ.setdefault("IMAGE_CACHE_DIR", str(ROOT / ".cache" / "test-images"))


@pytest.fixture(scope="session")
def tiny_hf_cache() -> Path:
    """The hub cache with every tiny model installed under its production hub id."""
    from tests.fixtures.tiny_models import build_hf_cache  # lazily: it imports torch and transformers

    build_hf_cache(TINY_HUB_CACHE)
    return TINY_HUB_CACHE


@pytest.fixture(scope="session")
def tiny_hub_ids(tiny_hf_cache: Path) -> dict[str, str]:
    """{family: hub id} of the installed tiny models, e.g. {"sam3": "facebook/sam3", ...}."""
    from tests.fixtures.tiny_models import DEFAULT_HUB_IDS

    return dict(DEFAULT_HUB_IDS)


# ---- a real Label Studio and the real backend (session-scoped, started only when a test asks) ----
LABEL_STUDIO_BIN = ROOT / ".cache" / "label-studio-venv" / "bin" / "label-studio"


@dataclass(frozen=True)
class LabelStudio:
    url: str
    token: str

    def api(self, method: str, path: str, **kwargs) -> requests.Response:
        headers = {"Authorization": f"Token {self.token}", **kwargs.pop("headers", {})}
        response = requests.request(method, f"{self.url}{path}", headers=headers, timeout=120, **kwargs)
        assert response.status_code < 400, f"{method} {path}: {response.status_code} {response.text[:500]}"
        return response

    def tasks(self, project: int) -> list[dict]:
        """The project's tasks by id (the list endpoint answers a list or `{"tasks": [...]}`)."""
        listed = self.api("GET", f"/api/projects/{project}/tasks/?page_size=1000").json()
        return sorted(listed["tasks"] if isinstance(listed, dict) else listed, key=lambda task: task["id"])

    def connect(self, project: int, backend_url: str, *, interactive: bool = False) -> dict:
        """Connect the ML backend at `backend_url` to the project; Label Studio must reach it (state CO)."""
        body = {"url": backend_url, "project": project, "title": "od"}
        ml = self.api("POST", "/api/ml", json=body | ({"is_interactive": True} if interactive else {})).json()
        assert ml["state"] == "CO", ml
        return ml

    def predictions_per_task(self, project: int, version: str) -> dict[int, int]:
        """How many predictions each task of the project has; every one must be of `version`."""
        counts: dict[int, int] = {}
        for prediction in self.api("GET", f"/api/predictions?project={project}").json():
            assert prediction["model_version"] == version
            counts[prediction["task"]] = counts.get(prediction["task"], 0) + 1
        return counts


def wait_for_models(url: str, names: set[str], timeout: float) -> None:
    """PRELOAD_MODELS load in the background after start; wait until /health lists them."""
    deadline = time.monotonic() + timeout
    while not names <= set(requests.get(f"{url}/health", timeout=5).json().get("models_loaded", [])):
        if time.monotonic() > deadline:
            raise TimeoutError(f"models {names} not loaded after {timeout}s")
        time.sleep(0.5)


def _log_tail(path: Path) -> str:
    return path.read_text(errors="replace")[-3000:] if path.exists() else ""


@pytest.fixture(scope="session")
def label_studio(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LabelStudio]:
    with running_label_studio(tmp_path_factory.mktemp("label-studio")) as instance:
        yield instance


@contextmanager
def running_label_studio(data: Path, extra_env: dict[str, str] | None = None) -> Iterator[LabelStudio]:
    """A real Label Studio keeping its files in `data`, with `extra_env` (e.g. ML_TIMEOUT_PREDICT)."""
    if not LABEL_STUDIO_BIN.exists():
        pytest.fail(f"{LABEL_STUDIO_BIN} missing: run `make label-studio-venv` (make test does)")
    port = free_port()
    token = secrets.token_hex(20)
    env = {
        **os.environ,
        "LABEL_STUDIO_BASE_DATA_DIR": str(data),
        "LATEST_VERSION_CHECK": "false",
        "SENTRY_DSN": "",
        "FRONTEND_SENTRY_DSN": "",
        "COLLECT_ANALYTICS": "false",
        "ML_BLOCK_LOCAL_IP": "false",
        "SSRF_PROTECTION_ENABLED": "false",
        **(extra_env or {}),
    }
    for stray in ("USERNAME", "PASSWORD"):
        env.pop(stray, None)
    log_path = data / "label-studio.log"
    command = [
        str(LABEL_STUDIO_BIN), "start", "--no-browser", "--internal-host", "127.0.0.1", "-p", str(port),
        "--username", "admin@example.com", "--password", "pass1234", "--user-token", token,
        "--enable-legacy-api-token",
    ]  # fmt: skip
    with log_path.open("wb") as log:
        process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=data)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for_http(f"{url}/health", timeout=300, ok=lambda status: status == 200)
        yield LabelStudio(url, token)
    except TimeoutError:
        pytest.fail(f"Label Studio did not start:\n{_log_tail(log_path)}")
    finally:
        stop_process(process)


@pytest.fixture(scope="session")
def backend_url(
    label_studio: LabelStudio, tiny_hf_cache: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """The backend exactly as `make run` starts it (gunicorn, threads), on tiny models."""
    with running_backend(label_studio, tmp_path_factory.mktemp("backend")) as url:
        yield url


@contextmanager
def running_backend(
    label_studio: LabelStudio, work: Path, extra_env: dict[str, str] | None = None
) -> Iterator[str]:
    """The backend under gunicorn on tiny models, connected to `label_studio`, with `extra_env`."""
    port = free_port()
    env = {
        **os.environ,
        "DEVICE": "cpu",
        "ALLOW_PRIVATE_URLS": "true",
        "LABEL_STUDIO_URL": label_studio.url,
        "LABEL_STUDIO_API_KEY": label_studio.token,
        "IMAGE_CACHE_DIR": str(work / "images"),
        "DEFAULT_BOX_THRESHOLD": "0",
        "DEFAULT_TEXT_THRESHOLD": "0",
        "PRELOAD_MODELS": "grounding_dino,sam2",
        **(extra_env or {}),
    }
    log_path = work / "backend.log"
    gunicorn = Path(sys.executable).with_name("gunicorn")
    command = [
        str(gunicorn),
        "--bind",
        f"127.0.0.1:{port}",
        "--workers",
        "1",
        "--threads",
        "4",
        "--timeout",
        "300",
        "_wsgi:app",
    ]
    with log_path.open("wb") as log:
        process = subprocess.Popen(command, env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for_http(f"{url}/health", timeout=120, ok=lambda status: status == 200)
        wait_for_models(url, {"grounding_dino", "sam2"}, timeout=180)
        yield url
    except TimeoutError:
        pytest.fail(f"backend did not start:\n{_log_tail(log_path)}")
    finally:
        stop_process(process)


@pytest.fixture(scope="session")
def worker_api(tiny_hf_cache: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The RunPod worker's local test API (`python -m ml_backend.worker --rp_serve_api`), tiny models."""
    log_path = tmp_path_factory.mktemp("worker") / "worker.log"
    env = {
        **os.environ,
        "ALLOW_PRIVATE_URLS": "true",
        "DEVICE": "cpu",
        "PYTHONUNBUFFERED": "1",
        "DEFAULT_BOX_THRESHOLD": "0",
        "DEFAULT_TEXT_THRESHOLD": "0",
    }
    port = free_port()
    command = [
        sys.executable,
        "-m",
        "ml_backend.worker",
        "--rp_serve_api",
        "--rp_api_host",
        "127.0.0.1",
        "--rp_api_port",
        str(port),
    ]
    with log_path.open("wb") as log:
        process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for_http(f"{url}/openapi.json", timeout=120)
        yield url
    except TimeoutError:
        pytest.fail(f"worker did not start:\n{_log_tail(log_path)}")
    finally:
        stop_process(process)
