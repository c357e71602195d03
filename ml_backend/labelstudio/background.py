"""The one thing the Label Studio layer needs from background jobs, without importing them.

`ml_backend.jobs.handoff.JobHandoff` implements it over the job manager; `_wsgi.py` hands that to
the app. The time budget of "Retrieve predictions" and the import hook only see this protocol.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal, Protocol

# Who hands tasks over: a "Retrieve predictions" that outran its time budget, or a TASKS_CREATED webhook.
HandoffSource = Literal["retrieve", "import"]


class BackgroundAnnotator(Protocol):
    """Annotates tasks later and writes their predictions through the Label Studio API."""

    def annotate_later(self, project_id: int, task_ids: Sequence[int], source: HandoffSource) -> str:
        """Start a background job for these tasks; returns its job id. Raises when jobs cannot start."""
        ...

    def pending(self, project_id: int) -> set[int]:
        """Task ids of the project that a job will still write (or wrote moments ago) a prediction for."""
        ...
