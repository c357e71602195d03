"""AUTO_ANNOTATE_ON_IMPORT: TASKS_CREATED webhooks through the app, gathered per project into few jobs."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import pytest
from flask.testing import FlaskClient

from ml_backend.labelstudio import imports as imports_module
from ml_backend.labelstudio.base import LabelStudioMLBase, create_app
from ml_backend.labelstudio.imports import ImportBatcher
from tests.labelstudio.configs import RECT_ONLY_CONFIG

WAIT_S = 10.0


class RecordingBackground:
    """The BackgroundAnnotator protocol in memory; `refuse` first calls raise like an unreachable Redis."""

    def __init__(self, refuse: int = 0) -> None:
        self.handed: list[tuple[int, list[int], str]] = []
        self.refuse = refuse
        self.lock = threading.Lock()

    def annotate_later(self, project_id: int, task_ids: Sequence[int], source: str) -> str:
        with self.lock:
            if self.refuse:
                self.refuse -= 1
                raise RuntimeError("Redis at REDIS_URL is unreachable")
            self.handed.append((project_id, list(task_ids), source))
            return f"job-{len(self.handed)}"

    def pending(self, project_id: int) -> set[int]:
        return {task for project, tasks, _ in self.handed if project == project_id for task in tasks}


def wait_until(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"still waiting for {what}")
        time.sleep(0.02)


def tasks_created(project: int, *task_ids: int) -> dict[str, Any]:
    """A TASKS_CREATED webhook body as Label Studio 1.23.2 sends it (ls_protocol.md §5, trimmed)."""
    return {
        "action": "TASKS_CREATED",
        "tasks": [
            {"id": task_id, "data": {"photo": f"/data/upload/{project}/{task_id}.png"}, "project": project}
            for task_id in task_ids
        ],
        "project": {"id": project, "title": "imports", "label_config": RECT_ONLY_CONFIG, "model_version": ""},
    }


# ---- ImportBatcher ----


def test_a_burst_of_webhooks_becomes_one_job() -> None:
    background = RecordingBackground()
    batcher = ImportBatcher(background, quiet_s=0.3, max_wait_s=5.0)
    batcher.add(7, [1, 2])
    batcher.add(7, [3])
    batcher.add(7, [2, 4])  # a repeated task id is handed over once
    wait_until(lambda: background.handed, "the gathered tasks to be handed over")
    time.sleep(0.5)
    assert background.handed == [(7, [1, 2, 3, 4], "import")]


def test_each_project_gets_its_own_job() -> None:
    background = RecordingBackground()
    batcher = ImportBatcher(background, quiet_s=0.2, max_wait_s=5.0)
    batcher.add(7, [1])
    batcher.add(8, [1, 2])
    wait_until(lambda: len(background.handed) == 2, "both projects' jobs")
    assert sorted(background.handed) == [(7, [1], "import"), (8, [1, 2], "import")]


def test_a_long_sync_is_handed_over_in_slices_of_at_most_max_wait() -> None:
    background = RecordingBackground()
    batcher = ImportBatcher(background, quiet_s=0.4, max_wait_s=0.6)
    for task_id in range(1, 21):  # a webhook every 0.1 s for 2 s: never quiet for 0.4 s
        batcher.add(7, [task_id])
        time.sleep(0.1)
    wait_until(lambda: sum(len(tasks) for _, tasks, _ in background.handed) == 20, "all 20 tasks")
    handed = [task for _, tasks, _ in background.handed for task in tasks]
    assert sorted(handed) == list(range(1, 21)), "every task once"
    assert 2 <= len(background.handed) <= 6, background.handed


def test_a_refused_handoff_is_tried_again(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(imports_module, "HANDOFF_RETRY_S", 0.1)
    background = RecordingBackground(refuse=1)
    batcher = ImportBatcher(background, quiet_s=0.1, max_wait_s=5.0)
    batcher.add(7, [1, 2])
    wait_until(lambda: background.handed, "the second attempt")
    assert background.handed == [(7, [1, 2], "import")]


def test_a_handoff_refused_every_time_gives_up_and_says_so(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(imports_module, "HANDOFF_RETRY_S", 0.05)
    background = RecordingBackground(refuse=100)
    batcher = ImportBatcher(background, quiet_s=0.05, max_wait_s=5.0)
    batcher.add(7, [1, 2])
    wait_until(lambda: "gave up after 3 attempts" in caplog.text, "the batcher to give up")
    assert background.refuse == 100 - imports_module.HANDOFF_ATTEMPTS
    assert background.handed == []


def test_flush_hands_everything_over_now() -> None:
    background = RecordingBackground()
    batcher = ImportBatcher(background, quiet_s=60.0, max_wait_s=60.0)
    batcher.add(7, [1])
    batcher.add(9, [4])
    assert batcher.flush() == ["job-1", "job-2"]
    assert sorted(background.handed) == [(7, [1], "import"), (9, [4], "import")]


# ---- the webhook route ----


class IdleModel(LabelStudioMLBase):
    def predict(self, tasks: list[dict], context: dict | None = None, **kwargs: Any) -> list[dict]:
        return [{"result": []} for _ in tasks]


def client_with(on_tasks_created: Callable[[int, list[int]], None] | None) -> FlaskClient:
    return create_app(IdleModel, on_tasks_created=on_tasks_created).test_client()


def test_tasks_created_reaches_the_hook_at_once() -> None:
    heard: list[tuple[int, list[int]]] = []
    client = client_with(lambda project, task_ids: heard.append((project, task_ids)))
    answer = client.post("/webhook", json=tasks_created(7, 11, 12))
    assert answer.status_code == 200
    assert answer.get_json() == {
        "status": "ok",
        "action": "TASKS_CREATED",
        "fit_queued": False,
        "annotate_queued": True,
    }
    assert heard == [(7, [11, 12])]


def test_without_the_setting_tasks_created_is_only_acknowledged() -> None:
    answer = client_with(None).post("/webhook", json=tasks_created(7, 11))
    assert answer.status_code == 200
    assert answer.get_json() == {"status": "ok", "action": "TASKS_CREATED", "fit_queued": False}


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"tasks": None}, "tasks: required"),
        ({"tasks": [{"data": {}}]}, "integer ids"),
        ({"tasks": [7]}, "integer ids"),
        ({"project": None}, "project: required"),
    ],
)
def test_a_malformed_tasks_created_is_a_clear_400(change: dict[str, Any], message: str) -> None:
    heard: list[Any] = []
    answer = client_with(lambda *args: heard.append(args)).post(
        "/webhook", json={**tasks_created(7, 1), **change}
    )
    assert answer.status_code == 400
    assert message in answer.get_json()["message"]
    assert heard == []


def test_webhooks_through_the_app_coalesce_into_one_job() -> None:
    background = RecordingBackground()
    client = client_with(ImportBatcher(background, quiet_s=0.3, max_wait_s=5.0).add)
    for first in (1, 4, 7):
        assert client.post("/webhook", json=tasks_created(3, first, first + 1, first + 2)).status_code == 200
    wait_until(lambda: background.handed, "the job")
    time.sleep(0.4)
    assert background.handed == [(3, list(range(1, 10)), "import")]
