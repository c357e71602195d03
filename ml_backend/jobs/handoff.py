"""The Label Studio layer's `BackgroundAnnotator`, over the job manager.

Tasks handed over become an ordinary job (source "retrieve" or "import") that the status API lists.
`pending` reads the job store, so with Redis it sees the jobs of every backend process and worker.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

from ml_backend.config import Settings
from ml_backend.jobs.manager import JobManager
from ml_backend.jobs.spec import AnnotateSpec, JobsUnavailableError
from ml_backend.labelstudio.background import HandoffSource

log = logging.getLogger(__name__)
# A job that wrote its last prediction moments ago still counts: Label Studio may have chosen the tasks
# of a /predict before that prediction was stored.
RECENTLY_FINISHED_S = 30.0
PENDING_SCAN_JOBS = 200


class JobHandoff:
    """Hands tasks to background jobs and tells which tasks such jobs still hold."""

    def __init__(
        self,
        manager: JobManager,
        recently_finished_s: float = RECENTLY_FINISHED_S,
        clock: Callable[[], float] = time.time,
    ) -> None:
        from ml_backend.labelstudio.predictor import model_version_for

        self.manager = manager
        self.model_version = model_version_for(manager.settings)
        self._recently_finished_s = recently_finished_s
        self._clock = clock

    def annotate_later(self, project_id: int, task_ids: Sequence[int], source: HandoffSource) -> str:
        spec = AnnotateSpec(project=project_id, task_ids=list(dict.fromkeys(task_ids)))
        return self.manager.submit(spec, source=source, check_existing=False)

    def pending(self, project_id: int) -> set[int]:
        try:
            return self._pending(project_id)
        except JobsUnavailableError:
            raise
        except Exception as error:  # Redis went away between calls
            raise JobsUnavailableError(f"the job store cannot be read ({type(error).__name__})") from None

    def _pending(self, project_id: int) -> set[int]:
        store = self.manager.store
        held: set[int] = set()
        for job_id in store.job_ids(PENDING_SCAN_JOBS):
            meta = store.meta(job_id)
            if meta is not None and self._holds_tasks(meta, project_id):
                for index in store.chunk_states(job_id):
                    held.update(store.chunk(job_id, index))
        return held

    def _holds_tasks(self, meta: dict[str, Any], project_id: int) -> bool:
        """A job of this project writing this model version, unfinished or finished moments ago."""
        if meta["spec"]["project"] != project_id or meta["model_version"] != self.model_version:
            return False
        if meta["state"] in ("queued", "running"):
            return True
        finished_at = meta.get("finished_at")
        return finished_at is not None and self._clock() - finished_at < self._recently_finished_s


def handoff_for(settings: Settings, manager: JobManager) -> JobHandoff | None:
    """A handoff when jobs can write to Label Studio (LABEL_STUDIO_URL and LABEL_STUDIO_API_KEY), else None."""
    if not settings.label_studio_url or not settings.label_studio_api_key:
        return None
    return JobHandoff(manager)
