"""Prewarm: the queue's bounds and counters, and the SAM embedding it computes through the real engine
(tiny SAM 2.1) being the one a later click uses."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from ml_backend.config import Settings, load_settings
from ml_backend.engine import Engine
from ml_backend.labelstudio.interface import ProjectInterface
from ml_backend.labelstudio.predictor import Predictor
from ml_backend.labelstudio.prewarm import (
    Prewarmer,
    ProjectImages,
    has_smart_segmenting,
    is_prewarm_event,
)
from ml_backend.labelstudio.prompts import interaction_from_context
from ml_backend.schemas import EmbedRequest
from tests.labelstudio.configs import RECORDED_KEYPOINT_CONTEXT, SAM_CONFIG, TEXT_PROMPT_CONFIG
from tests.support import make_image, serve_images

WAIT_S = 120.0


def tiny_settings(**overrides: Any) -> Settings:
    return load_settings(device="cpu", **overrides)


def wait_until(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"still waiting for {what}")
        time.sleep(0.02)


def wait_idle(prewarmer: Prewarmer) -> dict[str, Any]:
    def idle() -> bool:
        snapshot = prewarmer.snapshot()
        return snapshot["queued"] == 0 and not snapshot["in_flight"]

    wait_until(idle, "the prewarm queue to empty")
    return prewarmer.snapshot()


class GatedBackend:
    """The real engine behind a gate: the first request waits until the test opens it."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.gate = threading.Event()
        self.entered = threading.Event()
        self.requests: list[EmbedRequest] = []

    def run(self, request: EmbedRequest) -> Any:
        self.requests.append(request)
        self.entered.set()
        assert self.gate.wait(WAIT_S)
        return self.engine.run(request)

    def describe(self) -> dict:
        return self.engine.describe()


class EmbeddingCounter:
    """Counts the SAM image encoder's runs (embedding-cache computes); `hold` blocks them until released."""

    def __init__(self, engine: Engine, monkeypatch: pytest.MonkeyPatch) -> None:
        self.computed: list[str] = []
        self.hold = threading.Event()
        self.hold.set()
        self.computing = threading.Event()
        cache = engine.registry.get("sam2").cache
        cache.clear()  # the images of earlier tests have the same bytes
        original = cache.get_or_compute

        def counting(key: Any, compute: Callable[[], Any]) -> Any:
            def counted() -> Any:
                self.computed.append(key)
                self.computing.set()
                assert self.hold.wait(WAIT_S)
                return compute()

            return original(key, counted)

        monkeypatch.setattr(cache, "get_or_compute", counting)


@pytest.fixture(scope="module")
def engine(tiny_hf_cache: Path) -> Engine:
    return Engine(tiny_settings(), allow_local_paths=True)


@pytest.fixture
def images(tmp_path: Path) -> list[str]:
    paths = []
    for index in range(6):
        path = tmp_path / f"image{index}.png"
        path.write_bytes(make_image(64 + index * 8, 48))
        paths.append(str(path))
    return paths


@pytest.fixture
def make_prewarmer() -> Iterator[Callable[..., Prewarmer]]:
    made: list[Prewarmer] = []

    def make(backend: Any, **overrides: Any) -> Prewarmer:
        prewarmer = Prewarmer(backend, tiny_settings(**overrides))
        made.append(prewarmer)
        return prewarmer

    yield make
    for prewarmer in made:
        prewarmer.close()


LOCAL_FILES = ProjectImages(image_of=lambda task: task["data"]["image"], resolve=lambda value, task_id: value)


def task(task_id: int, path: str) -> dict[str, Any]:
    return {"id": task_id, "data": {"image": path}}


def click(engine: Engine, prewarmer: Prewarmer, task_: dict[str, Any]) -> dict:
    """A smart keypoint click on the task through the predictor, as model.py wires it."""
    interface = ProjectInterface.from_config(SAM_CONFIG)
    predictor = Predictor(engine, LOCAL_FILES.resolve, engine.settings, before_segment=prewarmer.note_click)
    interaction = interaction_from_context(RECORDED_KEYPOINT_CONTEXT, interface)
    assert interaction is not None
    return predictor.predict_interactive(task_, interface, interaction)


# ---- queue bounds and switches ----


def test_a_full_queue_drops_the_oldest(
    engine: Engine, images: list[str], make_prewarmer: Callable[..., Prewarmer]
) -> None:
    backend = GatedBackend(engine)
    prewarmer = make_prewarmer(backend, prewarm_next_tasks=2)
    assert prewarmer.capacity == 3
    prewarmer.warm_tasks([task(0, images[0])], LOCAL_FILES)
    assert backend.entered.wait(WAIT_S)  # the worker holds task 0
    prewarmer.warm_tasks([task(index, images[index]) for index in range(1, 6)], LOCAL_FILES)
    assert prewarmer.snapshot()["queued"] == 3
    assert prewarmer.snapshot()["dropped"] == 2
    backend.gate.set()
    snapshot = wait_idle(prewarmer)
    assert [request.image_path for request in backend.requests] == [images[0], *images[3:]]
    assert all(request.model == "sam2" for request in backend.requests)
    assert (snapshot["done"], snapshot["dropped"], snapshot["failed"]) == (4, 2, 0)


@pytest.mark.parametrize(
    ("cache_size", "next_tasks", "capacity"), [(16, 2, 3), (3, 8, 2), (2, 2, 1), (1, 2, 1), (16, 0, 1)]
)
def test_the_queue_never_holds_more_than_the_cache_keeps_beside_the_current_image(
    engine: Engine, make_prewarmer: Callable[..., Prewarmer], cache_size: int, next_tasks: int, capacity: int
) -> None:
    prewarmer = make_prewarmer(engine, embedding_cache_size=cache_size, prewarm_next_tasks=next_tasks)
    assert prewarmer.capacity == capacity


def test_a_task_already_queued_is_not_queued_twice(
    engine: Engine, images: list[str], make_prewarmer: Callable[..., Prewarmer]
) -> None:
    backend = GatedBackend(engine)
    prewarmer = make_prewarmer(backend)
    prewarmer.warm_tasks([task(0, images[0])], LOCAL_FILES)
    assert backend.entered.wait(WAIT_S)
    prewarmer.warm_tasks([task(1, images[1]), task(1, images[1])], LOCAL_FILES)
    assert prewarmer.snapshot()["queued"] == 1
    backend.gate.set()
    assert wait_idle(prewarmer)["done"] == 2


@pytest.mark.parametrize("overrides", [{"prewarm": False}, {"embedding_cache_size": 0}])
def test_prewarm_off_queues_nothing_and_starts_no_thread(
    engine: Engine, images: list[str], make_prewarmer: Callable[..., Prewarmer], overrides: dict
) -> None:
    backend = GatedBackend(engine)
    backend.gate.set()
    prewarmer = make_prewarmer(backend, **overrides)
    prewarmer.warm_tasks([task(0, images[0])], LOCAL_FILES)
    prewarmer.note_click(task(0, images[0]), images[0])
    assert prewarmer.snapshot() == {
        "enabled": False,
        "done": 0,
        "dropped": 0,
        "hit": 0,
        "failed": 0,
        "queued": 0,
        "in_flight": False,
    }
    assert backend.requests == []
    assert prewarmer._worker is None


def test_a_failed_prewarm_is_counted_and_the_next_one_runs(
    engine: Engine, images: list[str], make_prewarmer: Callable[..., Prewarmer], tmp_path: Path
) -> None:
    prewarmer = make_prewarmer(engine)
    missing = str(tmp_path / "gone.png")
    prewarmer.warm_tasks([task(0, missing), task(1, images[1])], LOCAL_FILES)
    snapshot = wait_idle(prewarmer)
    assert (snapshot["failed"], snapshot["done"]) == (1, 1)


# ---- what a click gets from it (real engine, tiny SAM 2.1) ----


def test_a_click_on_a_prewarmed_image_is_a_hit_and_computes_no_embedding(
    engine: Engine,
    images: list[str],
    make_prewarmer: Callable[..., Prewarmer],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    counter = EmbeddingCounter(engine, monkeypatch)
    prewarmer = make_prewarmer(engine)
    prewarmer.warm_tasks([task(1, images[1])], LOCAL_FILES)
    assert wait_idle(prewarmer)["done"] == 1
    assert len(counter.computed) == 1

    prediction = click(engine, prewarmer, task(1, images[1]))
    assert prediction["result"], "the click returned no region"
    assert len(counter.computed) == 1, "the click computed the embedding again"
    assert prewarmer.snapshot()["hit"] == 1

    click(engine, prewarmer, task(1, images[1]))
    assert prewarmer.snapshot()["hit"] == 1, "a prewarm counts one hit, not one per click"


def test_a_click_during_the_prewarm_of_its_image_waits_for_it(
    engine: Engine,
    images: list[str],
    make_prewarmer: Callable[..., Prewarmer],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    counter = EmbeddingCounter(engine, monkeypatch)
    counter.hold.clear()
    prewarmer = make_prewarmer(engine)
    prewarmer.warm_tasks([task(2, images[2])], LOCAL_FILES)
    assert counter.computing.wait(WAIT_S)  # the prewarm is inside the image encoder

    clicker = threading.Thread(target=click, args=(engine, prewarmer, task(2, images[2])))
    clicker.start()
    wait_until(lambda: prewarmer.snapshot()["hit"] == 1, "the click to arrive")
    counter.hold.set()
    clicker.join(WAIT_S)
    assert not clicker.is_alive()
    assert len(counter.computed) == 1, "the click computed the embedding a second time"
    assert wait_idle(prewarmer)["done"] == 1


def test_a_click_never_waits_behind_the_prewarm_of_another_image(
    engine: Engine, images: list[str], make_prewarmer: Callable[..., Prewarmer]
) -> None:
    backend = GatedBackend(engine)
    prewarmer = make_prewarmer(backend)
    prewarmer.warm_tasks([task(3, images[3])], LOCAL_FILES)
    assert backend.entered.wait(WAIT_S)  # the prewarm of image 3 is stuck in flight

    result: list[dict] = []
    clicker = threading.Thread(target=lambda: result.append(click(engine, prewarmer, task(4, images[4]))))
    clicker.start()
    clicker.join(WAIT_S)
    assert not clicker.is_alive() and result, "the click on another image waited for the prewarm"
    assert prewarmer.snapshot()["in_flight"]
    assert prewarmer.snapshot()["hit"] == 0
    backend.gate.set()
    wait_idle(prewarmer)


def test_a_click_removes_the_queued_prewarm_of_its_image(
    engine: Engine, images: list[str], make_prewarmer: Callable[..., Prewarmer]
) -> None:
    backend = GatedBackend(engine)
    prewarmer = make_prewarmer(backend)
    prewarmer.warm_tasks([task(0, images[0]), task(5, images[5])], LOCAL_FILES)
    assert backend.entered.wait(WAIT_S)
    assert prewarmer.snapshot()["queued"] == 1

    click(engine, prewarmer, task(5, images[5]))
    assert prewarmer.snapshot()["queued"] == 0
    backend.gate.set()
    snapshot = wait_idle(prewarmer)
    assert (snapshot["done"], snapshot["hit"]) == (1, 0)
    assert [request.image_path for request in backend.requests] == [images[0]]


# ---- signals ----


def test_signals() -> None:
    assert is_prewarm_event({"event": "prewarm"})
    assert not is_prewarm_event(None)
    assert not is_prewarm_event(RECORDED_KEYPOINT_CONTEXT)
    assert has_smart_segmenting(SAM_CONFIG)
    assert has_smart_segmenting(SAM_CONFIG.replace('smart="true"', 'smartOnly="true"'))
    assert not has_smart_segmenting(SAM_CONFIG.replace('smart="true"', ""))
    assert not has_smart_segmenting(TEXT_PROMPT_CONFIG)  # a smart TextArea runs the detector, not SAM
    assert not has_smart_segmenting("<View><Image")
    assert not has_smart_segmenting(None)


def test_next_tasks_need_a_project_and_label_studio_access(
    engine: Engine, make_prewarmer: Callable[..., Prewarmer]
) -> None:
    from ml_backend.labelstudio.access import LabelStudioAuth
    from ml_backend.labelstudio.prewarm import NextTasks

    prewarmer = make_prewarmer(engine)
    no_access = ProjectImages(
        LOCAL_FILES.image_of, LOCAL_FILES.resolve, NextTasks(LabelStudioAuth(None, None), 5)
    )
    prewarmer.warm_next_tasks("7", 3, no_access)
    prewarmer.warm_next_tasks(None, 3, LOCAL_FILES)
    assert prewarmer.snapshot()["queued"] == 0 and prewarmer._worker is None


# ---- through model.py and the app: what Label Studio sends ----


@pytest.fixture
def backend_app(tiny_hf_cache: Path) -> Any:
    from ml_backend.labelstudio.base import create_app
    from model import ODAnnotationModel

    app = create_app(ODAnnotationModel, metrics_details=ODAnnotationModel.metrics_details)
    app.testing = True
    return app


def prewarm_metrics(client: Any) -> dict[str, Any]:
    return client.get("/metrics").get_json()["prewarm"]


def wait_app_idle(client: Any) -> dict[str, Any]:
    wait_until(
        lambda: prewarm_metrics(client)["queued"] == 0 and not prewarm_metrics(client)["in_flight"], "idle"
    )
    return prewarm_metrics(client)


def test_opening_a_task_prewarms_its_image_and_the_first_click_hits(backend_app: Any) -> None:
    client = backend_app.test_client()
    before = prewarm_metrics(client)
    with serve_images() as server:
        url = server.add("/open.png", make_image(120, 90))
        body = {"tasks": [{"id": 901, "data": {"image": url}}], "project": "31.1", "label_config": SAM_CONFIG}
        opened = client.post("/predict", json=body)  # Label Studio opening a task without predictions
        assert opened.status_code == 200
        assert len(opened.get_json()["results"]) == 1
        after_open = wait_app_idle(client)
        assert after_open["done"] == before["done"] + 1

        clicked = client.post("/predict", json={**body, "params": {"context": RECORDED_KEYPOINT_CONTEXT}})
        assert clicked.status_code == 200
        assert clicked.get_json()["results"][0]["result"]
        assert prewarm_metrics(client)["hit"] == before["hit"] + 1
        assert len(server.requests_seen) == 1, "the click downloaded the image again"


def test_the_prewarm_event_answers_an_empty_result_per_task_and_embeds(backend_app: Any) -> None:
    client = backend_app.test_client()
    before = prewarm_metrics(client)
    with serve_images() as server:
        url = server.add("/event.png", make_image(100, 70))
        body = {
            "tasks": [{"id": 902, "data": {"image": url}}],
            "project": "32.1",
            "label_config": SAM_CONFIG,
            "params": {"context": {"event": "prewarm"}},
        }
        answer = client.post("/predict", json=body)
        assert answer.status_code == 200
        assert answer.get_json() == {"results": [[]]}  # Label Studio stores no prediction for `[]`
        assert wait_app_idle(client)["done"] == before["done"] + 1


def test_a_project_without_smart_tools_is_not_prewarmed(backend_app: Any) -> None:
    client = backend_app.test_client()
    before = prewarm_metrics(client)
    with serve_images() as server:
        url = server.add("/text.png", make_image(100, 70))
        body = {
            "tasks": [{"id": 903, "data": {"image": url}}],
            "project": "33.1",
            "label_config": TEXT_PROMPT_CONFIG,
        }
        assert client.post("/predict", json=body).status_code == 200
        assert wait_app_idle(client)["done"] == before["done"]


def test_an_image_a_click_embedded_is_not_prewarmed_again(
    engine: Engine, images: list[str], make_prewarmer: Callable[..., Prewarmer]
) -> None:
    backend = GatedBackend(engine)
    backend.gate.set()
    prewarmer = make_prewarmer(backend)
    click(engine, prewarmer, task(4, images[4]))
    prewarmer.warm_tasks([task(4, images[4]), task(0, images[0])], LOCAL_FILES)
    assert wait_idle(prewarmer)["done"] == 1
    assert [request.image_path for request in backend.requests] == [images[0]]


def test_a_click_that_waited_on_a_failing_prewarm_is_no_hit(
    engine: Engine, images: list[str], make_prewarmer: Callable[..., Prewarmer]
) -> None:
    class FailingBackend(GatedBackend):
        def run(self, request: EmbedRequest) -> Any:
            self.entered.set()
            assert self.gate.wait(WAIT_S)
            raise RuntimeError("the model failed")

    backend = FailingBackend(engine)
    prewarmer = make_prewarmer(backend)
    prewarmer.warm_tasks([task(0, images[0])], LOCAL_FILES)
    assert backend.entered.wait(WAIT_S)
    prewarmer.note_click(task(0, images[0]), images[0])
    assert prewarmer.snapshot()["hit"] == 1
    backend.gate.set()
    snapshot = wait_idle(prewarmer)
    assert (snapshot["hit"], snapshot["failed"], snapshot["done"]) == (0, 1, 0)
