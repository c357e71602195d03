"""PREDICT_TIME_BUDGET_S: the deadline's arithmetic, the predictor stopping in time on the real engine
(tiny Grounding DINO, a loopback image server), and the retrieve budget's handoff and claims."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from ml_backend.config import load_settings
from ml_backend.engine import Engine, Request
from ml_backend.labelstudio import budget as budget_module
from ml_backend.labelstudio.access import LabelStudioAuth, TaskImageResolver
from ml_backend.labelstudio.budget import Deadline, RetrieveBudget, TaskClaims
from ml_backend.labelstudio.interface import ProjectInterface
from ml_backend.labelstudio.predictor import Predictor
from ml_backend.schemas import Response
from tests.labelstudio.configs import RECT_ONLY_CONFIG
from tests.support import Route, make_image, serve_images

PROJECT = 7


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


# ---- Deadline ----


def test_deadline_keeps_room_for_the_slowest_group_seen() -> None:
    clock = FakeClock()
    deadline = Deadline(10.0, clock)
    assert deadline.room() == 10.0
    with deadline.group():
        clock.now += 3.0
    with deadline.group():
        clock.now += 1.0
    assert deadline.group_estimate_s == 3.0
    assert deadline.remaining() == 6.0
    assert deadline.room() == 3.0  # the next group may take as long as the slowest one did


def test_deadline_starts_from_an_earlier_estimate_and_refuses_when_no_room_is_left() -> None:
    clock = FakeClock()
    deadline = Deadline(2.0, clock, expected_group_s=2.5)
    assert deadline.room() < 0
    assert not deadline.ready_in_time([])


def test_what_this_call_measures_replaces_an_earlier_estimate() -> None:
    """A first call that loaded the model must not slow every later one down."""
    clock = FakeClock()
    deadline = Deadline(10.0, clock, expected_group_s=6.0)
    assert deadline.room() == 4.0
    with deadline.group():
        clock.now += 0.5
    assert deadline.group_estimate_s == 0.5
    assert deadline.room() == 9.0


# ---- the predictor under a deadline (real engine, real HTTP downloads) ----


class ClockedEngine(Engine):
    """The real engine on a test clock: each inference takes the next of `costs_s` on that clock."""

    def __init__(self, *args: Any, clock: FakeClock, costs_s: list[float], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.clock = clock
        self.costs_s = costs_s

    def run(self, request: Request, **options: Any) -> Response:
        response = super().run(request, **options)
        self.clock.now += self.costs_s.pop(0)
        return response


def predictor_for(engine: Engine, cache: Path) -> Predictor:
    settings = load_settings(device="cpu", default_box_threshold=0.0, image_cache_dir=str(cache))
    resolver = TaskImageResolver.from_settings(settings, LabelStudioAuth(None, None))
    return Predictor(engine, resolver.local_path, settings)


def tasks_for(urls: Sequence[str]) -> list[dict]:
    return [{"id": index + 1, "data": {"photo": url}} for index, url in enumerate(urls)]


@pytest.fixture(scope="module")
def interface() -> ProjectInterface:
    return ProjectInterface.from_config(RECT_ONLY_CONFIG)


def test_no_group_starts_unless_the_slowest_so_far_still_fits(
    tiny_hf_cache: Path, tmp_path: Path, interface: ProjectInterface
) -> None:
    clock = FakeClock()
    engine = ClockedEngine(
        load_settings(device="cpu"), allow_local_paths=True, clock=clock, costs_s=[1.0, 2.0, 0.5, 0.5, 0.5]
    )
    predictor = predictor_for(engine, tmp_path)
    with serve_images({f"/{i}.png": Route(make_image(40 + i, 32)) for i in range(5)}) as server:
        tasks = tasks_for([server.url(f"/{i}.png") for i in range(5)])
        started = clock.now
        done = predictor.predict_batch(tasks, interface, Deadline(3.5, clock))
    # After 1 s + 2 s, 0.5 s are left: less than the slowest image so far (2 s), so none starts.
    assert len(done) == 2
    assert clock.now - started == 3.0
    assert all(isinstance(prediction["result"], list) for prediction in done)


def test_slow_downloads_end_the_batch_at_the_deadline_and_still_fill_the_cache(
    tiny_hf_cache: Path, tmp_path: Path, interface: ProjectInterface
) -> None:
    predictor = predictor_for(Engine(load_settings(device="cpu"), allow_local_paths=True), tmp_path)
    with serve_images({f"/{i}.png": Route(make_image(40, 32), delay_s=2.0) for i in range(3)}) as server:
        tasks = tasks_for([server.url(f"/{i}.png") for i in range(3)])
        started = time.monotonic()
        done = predictor.predict_batch(tasks, interface, Deadline(0.5))
        elapsed = time.monotonic() - started
        assert done == []
        assert elapsed < 1.5, f"the batch waited for downloads past its deadline ({elapsed:.2f} s)"
        deadline = time.monotonic() + 10
        while len(list(tmp_path.glob("*.img"))) < 3 and time.monotonic() < deadline:
            time.sleep(0.05)
    assert len(list(tmp_path.glob("*.img"))) == 3, "downloads in flight should finish into the image cache"


# ---- RetrieveBudget ----


class RecordingBackground:
    """The BackgroundAnnotator protocol in memory: remembers what it was handed."""

    def __init__(self, pending: set[int] | None = None) -> None:
        self.handed: list[tuple[int, list[int], str]] = []
        self.held = set(pending or ())

    def annotate_later(self, project_id: int, task_ids: Sequence[int], source: str) -> str:
        self.handed.append((project_id, list(task_ids), source))
        self.held |= set(task_ids)
        return f"job-{len(self.handed)}"

    def pending(self, project_id: int) -> set[int]:
        return set(self.held)


class PrefixBatch:
    """Predicts the first `finish` tasks it is given, as a batch stopped by its deadline would."""

    def __init__(self, finish: int | None = None) -> None:
        self.finish = finish
        self.calls: list[tuple[list[int], Deadline | None]] = []

    def __call__(self, tasks: Sequence[dict], deadline: Deadline | None) -> list[dict]:
        self.calls.append(([task.get("id") for task in tasks], deadline))
        chosen = tasks if self.finish is None or deadline is None else tasks[: self.finish]
        return [{"result": [], "score": 0.5, "model_version": "v", "task": task.get("id")} for task in chosen]


def batch_tasks(*ids: int) -> list[dict]:
    return [{"id": task_id, "data": {"photo": f"/data/upload/{task_id}.png"}} for task_id in ids]


def answered_ids(answer: list[Any]) -> list[int | None]:
    return [entry["task"] if entry else None for entry in answer]


def test_finished_tasks_answer_and_the_rest_go_to_one_background_job() -> None:
    background = RecordingBackground()
    batch = PrefixBatch(finish=2)
    budget = RetrieveBudget(80.0, background, TaskClaims())
    answer = budget.predict("7", batch_tasks(1, 2, 3, 4, 5), batch)
    assert answered_ids(answer) == [1, 2, None, None, None]
    assert answer[2:] == [[], [], []]
    assert background.handed == [(PROJECT, [3, 4, 5], "retrieve")]
    ((ids, deadline),) = batch.calls
    assert ids == [1, 2, 3, 4, 5] and deadline is not None
    assert 79.0 < deadline.remaining() <= 80.0


def test_a_repeated_retrieve_answers_nothing_for_tasks_a_job_holds() -> None:
    background = RecordingBackground()
    claims = TaskClaims(linger_s=0.0)
    budget = RetrieveBudget(80.0, background, claims)
    budget.predict("7", batch_tasks(1, 2, 3, 4, 5), PrefixBatch(finish=2))
    again = PrefixBatch(finish=2)
    answer = budget.predict("7", batch_tasks(3, 4, 5, 6), again)  # Label Studio skips 1, 2 (stored)
    assert answered_ids(answer) == [None, None, None, 6]
    assert again.calls[0][0] == [6]
    assert background.handed == [(PROJECT, [3, 4, 5], "retrieve")], "no task is handed over twice"


def test_concurrent_retrieves_never_predict_a_task_twice() -> None:
    background = RecordingBackground()
    budget = RetrieveBudget(80.0, background, TaskClaims())
    first_started, release_first = threading.Event(), threading.Event()
    predicted: list[int] = []

    def slow_batch(tasks: Sequence[dict], deadline: Deadline | None) -> list[dict]:
        first_started.set()
        release_first.wait(10)
        predicted.extend(task["id"] for task in tasks)
        return [{"result": [], "task": task["id"]} for task in tasks]

    def quick_batch(tasks: Sequence[dict], deadline: Deadline | None) -> list[dict]:
        predicted.extend(task["id"] for task in tasks)
        return [{"result": [], "task": task["id"]} for task in tasks]

    answers: dict[str, list[Any]] = {}
    first = threading.Thread(
        target=lambda: answers.update(first=budget.predict("7", batch_tasks(1, 2, 3), slow_batch))
    )
    first.start()
    assert first_started.wait(10)
    answers["second"] = budget.predict("7", batch_tasks(1, 2, 3, 4), quick_batch)
    release_first.set()
    first.join(10)
    assert answered_ids(answers["first"]) == [1, 2, 3]
    assert answered_ids(answers["second"]) == [None, None, None, 4]
    assert sorted(predicted) == [1, 2, 3, 4]


def test_claims_outlive_the_answer_until_label_studio_has_stored_it() -> None:
    clock = FakeClock()
    budget = RetrieveBudget(80.0, RecordingBackground(), TaskClaims(linger_s=30.0, clock=clock), clock=clock)
    assert answered_ids(budget.predict("7", batch_tasks(1, 2), PrefixBatch())) == [1, 2]
    clock.now += 5.0
    assert answered_ids(budget.predict("7", batch_tasks(1, 2), PrefixBatch())) == [None, None]
    clock.now += 30.0
    assert answered_ids(budget.predict("7", batch_tasks(1, 2), PrefixBatch())) == [1, 2]


def test_claims_are_per_project() -> None:
    claims = TaskClaims()
    assert claims.claim(1, [5, 6]) == {5, 6}
    assert claims.claim(2, [5, 6]) == {5, 6}
    assert claims.claim(1, [6, 7]) == {7}


def test_without_background_jobs_it_runs_to_the_end_and_says_so_once(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(budget_module, "_no_budget_logged", threading.Event())
    batch = PrefixBatch(finish=1)
    budget = RetrieveBudget(80.0, None)
    with caplog.at_level(logging.WARNING, logger="ml_backend.labelstudio.budget"):
        first = budget.predict("7", batch_tasks(1, 2, 3), batch)
        second = RetrieveBudget(80.0, None).predict("8", batch_tasks(4), batch)
    assert answered_ids(first) == [1, 2, 3] and answered_ids(second) == [4]
    assert [deadline for _, deadline in batch.calls] == [None, None]
    warnings = [record.getMessage() for record in caplog.records if "cannot apply" in record.getMessage()]
    assert len(warnings) == 1
    assert "LABEL_STUDIO_URL" in warnings[0] and "LABEL_STUDIO_API_KEY" in warnings[0]


def test_an_unreadable_job_store_means_a_synchronous_batch(caplog: pytest.LogCaptureFixture) -> None:
    class DownBackground(RecordingBackground):
        def pending(self, project_id: int) -> set[int]:
            raise RuntimeError("Redis at REDIS_URL is unreachable")

    batch = PrefixBatch(finish=1)
    with caplog.at_level(logging.WARNING, logger="ml_backend.labelstudio.budget"):
        answer = RetrieveBudget(80.0, DownBackground(), TaskClaims()).predict("7", batch_tasks(1, 2), batch)
    assert answered_ids(answer) == [1, 2]
    assert batch.calls[0][1] is None
    assert "unreachable" in caplog.text


def test_a_failed_handoff_is_logged_and_leaves_the_tasks_for_the_next_retrieve(
    caplog: pytest.LogCaptureFixture,
) -> None:
    class RefusingBackground(RecordingBackground):
        def annotate_later(self, project_id: int, task_ids: Sequence[int], source: str) -> str:
            raise RuntimeError("background jobs need LABEL_STUDIO_URL")

    claims = TaskClaims(linger_s=0.0)
    budget = RetrieveBudget(80.0, RefusingBackground(), claims)
    with caplog.at_level(logging.ERROR, logger="ml_backend.labelstudio.budget"):
        answer = budget.predict("7", batch_tasks(1, 2, 3), PrefixBatch(finish=1))
    assert answered_ids(answer) == [1, None, None]
    assert "2 tasks outran PREDICT_TIME_BUDGET_S" in caplog.text
    assert claims.claim(PROJECT, [2, 3]) == {2, 3}, "the tasks are free for the next retrieve"


def test_the_next_batch_starts_from_the_slowest_group_of_the_last() -> None:
    clock = FakeClock()

    def one_slow_group(tasks: Sequence[dict], deadline: Deadline | None) -> list[dict]:
        assert deadline is not None
        with deadline.group():
            clock.now += 4.0
        return [{"result": [], "task": tasks[0]["id"]}]

    budget = RetrieveBudget(80.0, RecordingBackground(), TaskClaims(), clock=clock)
    budget.predict("7", batch_tasks(1, 2), one_slow_group)
    batch = PrefixBatch()
    budget.predict("7", batch_tasks(3), batch)
    deadline = batch.calls[0][1]
    assert deadline is not None and deadline.group_estimate_s == 4.0


def test_tasks_without_integer_ids_run_without_a_budget() -> None:
    background = RecordingBackground()
    batch = PrefixBatch(finish=1)
    tasks = [{"data": {"photo": "/data/upload/1.png"}}, {"id": "x", "data": {"photo": "/data/upload/2.png"}}]
    answer = RetrieveBudget(80.0, background, TaskClaims()).predict("7", tasks, batch)
    assert len(answer) == 2 and all(answer)
    assert batch.calls[0][1] is None and background.handed == []


def test_an_estimate_carried_over_leaves_room_for_one_group() -> None:
    clock = FakeClock()

    def loading_group(tasks: Sequence[dict], deadline: Deadline | None) -> list[dict]:
        assert deadline is not None
        with deadline.group():
            clock.now += 30.0  # the model loaded during the first image
        return [{"result": [], "task": tasks[0]["id"]}]

    budget = RetrieveBudget(10.0, RecordingBackground(), TaskClaims(), clock=clock)
    budget.predict("7", batch_tasks(1), loading_group)
    batch = PrefixBatch()
    budget.predict("7", batch_tasks(2), batch)
    deadline = batch.calls[0][1]
    assert deadline is not None and deadline.group_estimate_s == 5.0 and deadline.room() > 0
