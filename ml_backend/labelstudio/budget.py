"""PREDICT_TIME_BUDGET_S: a "Retrieve predictions" answers in time and hands the rest to a background job.

Label Studio sends every selected task in one /predict and stores nothing when it times out
(`ML_TIMEOUT_PREDICT`, default 100 s). Within the budget the batch answers predictions for the tasks
finished by then and `[]` (no prediction) for the others, which a background job annotates and writes
through the API. A task is never predicted twice: tasks a job holds, or another /predict of this process
is working on, answer `[]` too.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, wait
from contextlib import contextmanager
from typing import Any

from ml_backend.labelstudio.background import BackgroundAnnotator

log = logging.getLogger(__name__)
Prediction = dict[str, Any]
# After a /predict answers, Label Studio still has to store what it got; a second "Retrieve predictions"
# filtered before that happened may arrive meanwhile and must not predict those tasks again.
CLAIM_LINGER_S = 30.0
BatchPredict = Callable[[Sequence[dict], "Deadline | None"], list[Prediction]]


class Deadline:
    """When a batch must answer, and whether one more group of images still fits before then.

    The next group is expected to take as long as the slowest group of this call (inference only;
    downloads overlap it), or, before any ran, as long as `expected_group_s` (from an earlier call): a
    group starts only when that much time is left.
    """

    def __init__(
        self, seconds: float, clock: Callable[[], float] = time.monotonic, expected_group_s: float = 0.0
    ) -> None:
        self._clock = clock
        self.ends_at = clock() + seconds
        self._expected_group_s = expected_group_s
        self._slowest_group_s: float | None = None

    @property
    def group_estimate_s(self) -> float:
        return self._expected_group_s if self._slowest_group_s is None else self._slowest_group_s

    def remaining(self) -> float:
        return self.ends_at - self._clock()

    def room(self) -> float:
        """Seconds that may still pass before the next group has to start."""
        return self.remaining() - self.group_estimate_s

    def ready_in_time(self, downloads: Sequence[Future]) -> bool:
        """Wait for a group's downloads as long as the budget allows; True when the group may start."""
        if self.room() <= 0:
            return False
        _, not_done = wait(downloads, timeout=self.room())
        return not not_done and self.room() > 0

    @contextmanager
    def group(self) -> Iterator[None]:
        started = self._clock()
        yield
        took = self._clock() - started
        self._slowest_group_s = max(self._slowest_group_s or 0.0, took)


class TaskClaims:
    """Task ids each /predict of this process is working on, held a little longer after it answers."""

    def __init__(self, linger_s: float = CLAIM_LINGER_S, clock: Callable[[], float] = time.monotonic) -> None:
        self._linger_s = linger_s
        self._clock = clock
        self._lock = threading.Lock()
        self._held_until: dict[tuple[int, int], float] = {}

    def claim(self, project_id: int, task_ids: Sequence[int]) -> set[int]:
        """Claims the tasks no one holds; returns those (the others belong to another call)."""
        now = self._clock()
        with self._lock:
            self._forget_expired(now)
            free = {task_id for task_id in task_ids if (project_id, task_id) not in self._held_until}
            for task_id in free:
                self._held_until[(project_id, task_id)] = float("inf")
            return free

    def release(self, project_id: int, task_ids: Sequence[int] | set[int]) -> None:
        until = self._clock() + self._linger_s
        with self._lock:
            for task_id in task_ids:
                self._held_until[(project_id, task_id)] = until

    def _forget_expired(self, now: float) -> None:
        expired = [key for key, until in self._held_until.items() if until <= now]
        for key in expired:
            del self._held_until[key]


_process_claims = TaskClaims()
_no_budget_logged = threading.Event()


class RetrieveBudget:
    """Runs a batch /predict within `seconds`, handing what is left to a background annotator."""

    def __init__(
        self,
        seconds: float,
        background: BackgroundAnnotator | None,
        claims: TaskClaims | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.seconds = seconds
        self.background = background
        self.claims = claims or _process_claims
        self._clock = clock
        self._expected_group_s = 0.0

    def predict(self, project: object, tasks: Sequence[dict], predict_batch: BatchPredict) -> list[Any]:
        """One entry per task, in order: a prediction, or `[]` for a task a background job takes."""
        deadline = Deadline(self.seconds, self._clock, self._expected_group_s)
        project_id, task_ids = _project_and_task_ids(project, tasks)
        if self.background is None:
            self._warn_once()
            return list(predict_batch(tasks, None))
        if project_id is None or task_ids is None:
            log.info("batch without a project or task ids: no time budget, it runs to the end")
            return list(predict_batch(tasks, None))
        try:
            pending = self.background.pending(project_id)
        except Exception as error:
            log.warning("background jobs unavailable (%s): this batch runs to the end", error)
            return list(predict_batch(tasks, None))
        mine = self.claims.claim(project_id, [task_id for task_id in task_ids if task_id not in pending])
        try:
            answered = self._predict_claimed(project_id, tasks, mine, deadline, predict_batch)
        finally:
            self.claims.release(project_id, mine)
        return [answered.get(task["id"], []) for task in tasks]

    def _predict_claimed(
        self,
        project_id: int,
        tasks: Sequence[dict],
        mine: set[int],
        deadline: Deadline,
        predict_batch: BatchPredict,
    ) -> dict[int, Prediction]:
        ours = [task for task in tasks if task["id"] in mine]
        done = predict_batch(ours, deadline) if ours else []
        # At most half the budget: one slow group (a model loading) must not keep every later call from
        # starting one, which is what replaces the estimate with a fresh measurement.
        self._expected_group_s = min(deadline.group_estimate_s, self.seconds / 2)
        left = [task["id"] for task in ours[len(done) :]]
        if left:
            self._hand_off(project_id, left, answered=len(done), total=len(tasks))
        elif len(ours) < len(tasks):
            # A job's own GET /api/tasks/<id> makes Label Studio ask for that one task: not worth an INFO.
            log.log(
                logging.INFO if len(tasks) > 1 else logging.DEBUG,
                "project %s: %d of %d tasks are already being annotated; they answer no prediction here",
                project_id,
                len(tasks) - len(ours),
                len(tasks),
            )
        return {task["id"]: prediction for task, prediction in zip(ours, done, strict=False)}

    def _hand_off(self, project_id: int, task_ids: list[int], answered: int, total: int) -> None:
        try:
            job_id = self.background.annotate_later(project_id, task_ids, "retrieve")  # type: ignore[union-attr]
        except Exception as error:
            log.error(
                "project %s: %d tasks outran PREDICT_TIME_BUDGET_S=%g s and no background job could take "
                "them (%s); they stay without a prediction until the next retrieve",
                project_id,
                len(task_ids),
                self.seconds,
                error,
            )
            return
        log.info(
            "project %s: %d of %d tasks answered within PREDICT_TIME_BUDGET_S=%g s; %d handed to job %s",
            project_id,
            answered,
            total,
            self.seconds,
            len(task_ids),
            job_id,
        )

    @staticmethod
    def _warn_once() -> None:
        if _no_budget_logged.is_set():
            return
        _no_budget_logged.set()
        log.warning(
            "PREDICT_TIME_BUDGET_S cannot apply: handing tasks to a background job needs LABEL_STUDIO_URL "
            "and LABEL_STUDIO_API_KEY; batch predictions run to the end (Label Studio stores nothing when "
            "that takes longer than its ML_TIMEOUT_PREDICT)"
        )


def _project_and_task_ids(project: object, tasks: Sequence[dict]) -> tuple[int | None, list[int] | None]:
    project_id = int(project) if isinstance(project, str) and project.isdigit() else None
    if isinstance(project, int) and not isinstance(project, bool):
        project_id = project
    ids = [task.get("id") for task in tasks]
    if not all(isinstance(task_id, int) and not isinstance(task_id, bool) for task_id in ids):
        return project_id, None
    return project_id, ids  # type: ignore[return-value]
