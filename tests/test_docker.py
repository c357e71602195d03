"""The Docker images, built and run: the worker answers the guide's requests, the backend predicts, and
docker-compose.yml's rq worker runs jobs, all on a Debian base made with debootstrap.

Needs root for the private dockerd and debootstrap (`make test` runs as root in CI); the debootstrap
root file system, the daemon's data root and so the build cache stay under /var/cache/od-annotation.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
import requests
import yaml
from rq import Queue

from ml_backend.masks import decode_rle
from tests import docker_support
from tests.docker_support import Docker, DockerUnavailable, run_container
from tests.labelstudio.configs import keypoint_click_body
from tests.support import free_port, make_image, running_redis, serve_images, wait_for_http
from tests.test_logs import UNREDACTED_COUNTS
from tests.test_schemas import GUIDE_EXAMPLES
from tests.test_worker import with_local_images

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
APP_UID = "10001"
TAGS = {"worker": "od-annotation-worker:test", "backend": "od-annotation-backend:test"}
CONTAINER_HF_HOME = "/models/huggingface"


@pytest.fixture(scope="module")
def docker() -> Iterator[Docker]:
    try:
        with docker_support.docker_daemon() as daemon:
            yield daemon
    except DockerUnavailable as error:
        pytest.fail(str(error))


@pytest.fixture(scope="module")
def images(docker: Docker) -> dict[str, str]:
    """Both targets built on the debootstrap base, as a user would with `--build-arg BASE_IMAGE=...`."""
    try:
        base = docker_support.base_image(docker)
    except DockerUnavailable as error:
        pytest.fail(str(error))
    for target, tag in TAGS.items():
        docker_support.build_image(docker, ROOT, target, tag, {"BASE_IMAGE": base})
    if docker.host is not None:  # our own daemon: drop what earlier builds left behind
        docker("image", "prune", "--force")
        docker("builder", "prune", "--force", "--keep-storage", "10GB")  # least recently used go first
    return TAGS


@pytest.fixture(scope="module")
def image_server() -> Iterator:
    with serve_images() as server:
        server.add("/test.jpg", make_image(64, 48, fmt="JPEG"), content_type="image/jpeg")
        yield server


def runtime_env(**extra: str) -> dict[str, str]:
    """What the containers share: CPU, the mounted tiny models offline, loopback image URLs allowed."""
    return {
        "DEVICE": "cpu",
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "ALLOW_PRIVATE_URLS": "true",
        "DEFAULT_BOX_THRESHOLD": "0",
        "DEFAULT_TEXT_THRESHOLD": "0",
        **extra,
    }


@pytest.fixture(scope="module")
def tiny_models_volume(tiny_hf_cache: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[Path, str]:
    """The tiny models' HF home, mounted read-only; a copy readable by the image's non-root user
    (the fixture writes some files owner-only)."""
    home = tmp_path_factory.mktemp("container-hf") / "hf"
    shutil.copytree(tiny_hf_cache.parent, home, symlinks=True)
    for path in [home, *home.rglob("*")]:
        path.chmod(path.stat().st_mode | 0o444 | (0o111 if path.is_dir() else 0))
    return {home: f"{CONTAINER_HF_HOME}:ro"}


def wait_or_fail(url: str, container: docker_support.Container, timeout: float = 180) -> None:
    try:
        wait_for_http(url, timeout=timeout)
    except TimeoutError:
        pytest.fail(f"{container.name} did not answer {url}:\n{container.logs()[-4000:]}")


def test_images_run_as_the_app_user_without_dev_tools(docker: Docker, images: dict[str, str]) -> None:
    for tag in images.values():
        probe = (
            "import os, importlib.util as u; print(os.getuid(), u.find_spec('pytest'), u.find_spec('ruff'))"
        )
        result = docker("run", "--rm", "--network", "host", tag, "python", "-c", probe)
        assert result.stdout.split() == [APP_UID, "None", "None"]


def test_compose_file_validates(tmp_path: Path) -> None:
    """`docker compose config` (or Debian's docker-compose) on the file, with .env from .env.example."""
    shutil.copy(ROOT / "docker-compose.yml", tmp_path / "docker-compose.yml")
    shutil.copy(ROOT / ".env.example", tmp_path / ".env")
    command = ["docker-compose"] if shutil.which("docker-compose") else ["docker", "compose"]
    result = subprocess.run(
        [*command, "--profile", "label-studio", "config"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    services = yaml.safe_load(result.stdout)["services"]
    assert set(services) == {"redis", "ml-backend", "rq-worker", "label-studio"}
    assert services["ml-backend"]["build"]["target"] == "backend"


def mask_counts_of_guide_output(example: dict, output: dict) -> list[str]:
    """Checks one guide request's output; returns the RLE counts it carries."""
    assert output["task"] == example["task"]
    if example["task"] == "batch":
        assert [item["id"] for item in output["results"]] == ["img1", "img2"]
        return []
    if example["task"] == "segment":
        assert decode_rle(output["masks"][0]["mask"]).shape == (48, 64)
        return [mask["mask"]["counts"] for mask in output["masks"]]
    assert output["image"] == {"width": 64, "height": 48}
    return []


def test_worker_container_answers_the_guide_requests(
    docker: Docker, images: dict[str, str], tiny_models_volume: dict[Path, str], image_server
) -> None:
    port = free_port()
    command = ["python", "-u", "-m", "ml_backend.worker", "--rp_api_host", "127.0.0.1", "--rp_api_port", str(port)]  # fmt: skip
    env = runtime_env(LOG_LEVEL="DEBUG")  # the SDK's DEBUG lines are the ones that used to print outputs
    with run_container(
        docker, images["worker"], "od-annotation-test-worker", command, env, tiny_models_volume
    ) as container:
        url = f"http://127.0.0.1:{port}"
        wait_or_fail(f"{url}/openapi.json", container)
        counts: list[str] = []
        for example in GUIDE_EXAMPLES:
            payload = {"input": with_local_images(example, image_server.url("/test.jpg"))}
            body = requests.post(f"{url}/runsync", json=payload, timeout=180).json()
            assert body["status"] == "COMPLETED", (body, container.logs()[-3000:])
            counts += mask_counts_of_guide_output(example, body["output"])
        log, python_log = container.logs(), container.python_log()
    first_line = python_log.splitlines()[0]
    assert first_line.endswith("OD annotation worker on device cpu, dtype float32"), python_log[:2000]
    assert "run_job return:" in log  # the SDK logged at DEBUG, so the check below means something
    assert not UNREDACTED_COUNTS.search(log)
    assert all(value not in log for value in counts if len(value) >= 8)


def test_worker_container_with_device_cuda_and_no_gpu_fails_saying_why(
    docker: Docker, images: dict[str, str]
) -> None:
    result = docker(
        "run", "--rm", "--network", "host", "-e", "DEVICE=cuda", images["worker"],
        "python", "-m", "ml_backend.worker", "--rp_api_port", str(free_port()),
        check=False, timeout=120,
    )  # fmt: skip
    assert result.returncode != 0
    log = result.stdout + result.stderr
    assert "DEVICE=cuda: CUDA is not usable" in log and "needs CUDA 13" in log, log[-3000:]


def test_backend_container_health_and_predict(
    docker: Docker, images: dict[str, str], tiny_models_volume: dict[Path, str], image_server
) -> None:
    port = free_port()
    command = ["gunicorn", "--bind", f"127.0.0.1:{port}", "--workers", "1", "--threads", "8", "--timeout", "300", "_wsgi:app"]  # fmt: skip
    with run_container(
        docker, images["backend"], "od-annotation-test-backend", command, runtime_env(),
        tiny_models_volume,
    ) as container:  # fmt: skip
        url = f"http://127.0.0.1:{port}"
        wait_or_fail(f"{url}/health", container)
        health = requests.get(f"{url}/health", timeout=10).json()
        assert (health["status"], health["device"], health["dtype"]) == ("UP", "cpu", "float32"), health
        body = keypoint_click_body(image_server.url("/test.jpg"), 64, 48)
        answer = requests.post(f"{url}/predict", json=body, timeout=180)
        assert answer.status_code == 200, (answer.text[:2000], container.logs()[-3000:])
        results = answer.json()["results"][0]["result"]
        assert results and {result["from_name"] for result in results} <= {"tag", "outline"}


@pytest.fixture
def redis_url(tmp_path: Path) -> Iterator[str]:
    with running_redis(tmp_path) as url:
        yield url


def compose_rq_worker_command(redis_url: str) -> list[str]:
    """The rq-worker service's command from docker-compose.yml, pointed at the test's Redis."""
    command = list(
        yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]["rq-worker"]["command"]
    )
    command[command.index("--url") + 1] = redis_url
    return command


def test_compose_rq_worker_runs_jobs_in_the_backend_image(
    docker: Docker, images: dict[str, str], redis_url: str
) -> None:
    command = compose_rq_worker_command(redis_url)
    queue_name = command[-1]
    with run_container(
        docker, images["backend"], "od-annotation-test-rq-worker", command, runtime_env(REDIS_URL=redis_url)
    ) as container:
        connection = redis.Redis.from_url(redis_url)
        job = Queue(queue_name, connection=connection).enqueue("ml_backend.config.load_settings")
        deadline = time.monotonic() + 120
        while job.get_status(refresh=True) not in ("finished", "failed"):
            if time.monotonic() > deadline or not container.running():
                pytest.fail(f"job not run:\n{container.logs()[-3000:]}")
            time.sleep(0.5)
        assert job.get_status() == "finished", container.logs()[-3000:]
        settings = job.return_value()
    assert settings.redis_url == redis_url  # the worker ran our code with the container's environment
