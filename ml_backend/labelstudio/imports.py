"""AUTO_ANNOTATE_ON_IMPORT: tasks that Label Studio reports created become background jobs.

Label Studio sends one TASKS_CREATED webhook per import and many during a cloud storage sync. The
webhooks of a project are gathered until none came for `quiet_s` (or `max_wait_s` passed since the
first), then handed over as one job.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from ml_backend.labelstudio.background import BackgroundAnnotator

log = logging.getLogger(__name__)
IMPORT_QUIET_S = 2.0
IMPORT_MAX_WAIT_S = 10.0
HANDOFF_RETRY_S = 30.0
HANDOFF_ATTEMPTS = 3


@dataclass
class _Gathered:
    first_at: float
    last_at: float
    task_ids: dict[int, None] = field(default_factory=dict)  # ordered, without repeats
    attempts: int = 0


class ImportBatcher:
    """Gathers created tasks per project and hands each gathered batch to the background annotator."""

    def __init__(
        self,
        background: BackgroundAnnotator,
        quiet_s: float = IMPORT_QUIET_S,
        max_wait_s: float = IMPORT_MAX_WAIT_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._background = background
        self._quiet_s = quiet_s
        self._max_wait_s = max_wait_s
        self._clock = clock
        self._gathered: dict[int, _Gathered] = {}
        self._changed = threading.Condition()
        self._thread: threading.Thread | None = None

    def add(self, project_id: int, task_ids: list[int]) -> None:
        """Note created tasks; returns at once (Label Studio waits 1 s for a webhook)."""
        if not task_ids:
            return
        now = self._clock()
        with self._changed:
            gathered = self._gathered.setdefault(project_id, _Gathered(first_at=now, last_at=now))
            gathered.last_at = now
            gathered.task_ids.update(dict.fromkeys(task_ids))
            self._start_thread()
            self._changed.notify()

    def flush(self) -> list[str]:
        """Hand every gathered batch over now; returns the job ids (for shutdown and tests)."""
        with self._changed:
            batches, self._gathered = self._gathered, {}
        return [job for project, batch in batches.items() if (job := self._hand_over(project, batch))]

    def _start_thread(self) -> None:
        if self._thread is None or not self._thread.is_alive():
            self._thread = threading.Thread(target=self._run, name="import-batcher", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        while True:
            with self._changed:
                due = self._take_due()
                if not due:
                    self._changed.wait(self._seconds_to_next())
                    continue
            for project_id, batch in due.items():
                self._hand_over(project_id, batch)

    def _take_due(self) -> dict[int, _Gathered]:
        now = self._clock()
        due = {project: batch for project, batch in self._gathered.items() if self._due_at(batch) <= now}
        for project in due:
            del self._gathered[project]
        return due

    def _seconds_to_next(self) -> float | None:
        if not self._gathered:
            return None
        return max(0.0, min(self._due_at(batch) for batch in self._gathered.values()) - self._clock())

    def _due_at(self, batch: _Gathered) -> float:
        return min(batch.last_at + self._quiet_s, batch.first_at + self._max_wait_s)

    def _hand_over(self, project_id: int, batch: _Gathered) -> str | None:
        task_ids = list(batch.task_ids)
        try:
            job_id = self._background.annotate_later(project_id, task_ids, "import")
        except Exception as error:
            self._retry_later(project_id, batch, error)
            return None
        log.info("project %s: %d imported tasks handed to job %s", project_id, len(task_ids), job_id)
        return job_id

    def _retry_later(self, project_id: int, batch: _Gathered, error: Exception) -> None:
        batch.attempts += 1
        if batch.attempts >= HANDOFF_ATTEMPTS:
            log.error(
                "project %s: %d imported tasks could not start a background job (%s); gave up after %d "
                "attempts, use Retrieve predictions for them",
                project_id,
                len(batch.task_ids),
                error,
                batch.attempts,
            )
            return
        log.warning(
            "project %s: %d imported tasks could not start a background job (%s); trying again in %g s",
            project_id,
            len(batch.task_ids),
            error,
            HANDOFF_RETRY_S,
        )
        with self._changed:
            later = self._clock() + HANDOFF_RETRY_S
            waiting = self._gathered.setdefault(project_id, _Gathered(first_at=later, last_at=later))
            waiting.task_ids = {**batch.task_ids, **waiting.task_ids}
            waiting.first_at = waiting.last_at = max(waiting.last_at, later)
            waiting.attempts = batch.attempts
            self._start_thread()
            self._changed.notify()
