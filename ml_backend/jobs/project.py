"""The few Label Studio API calls a job makes, through label-studio-sdk."""

from __future__ import annotations

import json
from typing import Any

from ml_backend.config import Settings
from ml_backend.jobs.spec import JobsUnavailableError


class LabelStudioProject:
    """The few Label Studio API calls a job makes, through label-studio-sdk."""

    def __init__(self, settings: Settings) -> None:
        from label_studio_sdk import LabelStudio

        if not settings.label_studio_url or not settings.label_studio_api_key:
            raise JobsUnavailableError("background jobs need LABEL_STUDIO_URL and LABEL_STUDIO_API_KEY")
        self.client = LabelStudio(
            base_url=settings.label_studio_url, api_key=settings.label_studio_api_key.get_secret_value()
        )

    def projects(self) -> list[tuple[int, str]]:
        """(id, title) of every project this token can see, newest first."""
        found = self.client.projects.list(ordering="-id", page_size=100)
        return [(project.id, project.title or f"Project {project.id}") for project in found]

    def label_config(self, project: int) -> str:
        return self.client.projects.get(project).label_config

    def task_ids(self, project: int) -> list[int]:
        return sorted(task.id for task in self.client.tasks.list(project=project, fields="task_only"))

    def tasks_with_version(self, project: int, model_version: str) -> set[int]:
        predictions = self.client.predictions.list(project=project)
        return {p.task for p in predictions if p.model_version == model_version}

    def tasks(self, project: int, task_ids: list[int]) -> list[dict[str, Any]]:
        """The tasks' data as Label Studio sends it to `/predict`, in the order asked.

        Through the task list API: `GET /api/tasks/<id>` would make Label Studio call the connected
        backend's `/predict` for every task without a prediction, and resolve cloud URIs.
        """
        if not task_ids:
            return []
        query = json.dumps({"selectedItems": {"all": False, "included": list(task_ids)}})
        found = self.client.tasks.list(
            project=project, query=query, resolve_uri=False, fields="all", page_size=len(task_ids)
        )
        by_id = {task.id: {"id": task.id, "data": dict(task.data or {})} for task in found}
        return [by_id[task_id] for task_id in task_ids if task_id in by_id]

    def predictions_of(self, task_id: int, model_version: str) -> list[int]:
        return [p.id for p in self.client.predictions.list(task=task_id) if p.model_version == model_version]

    def write_prediction(self, task_id: int, prediction: dict[str, Any], replace: bool) -> None:
        if replace:
            for prediction_id in self.predictions_of(task_id, prediction["model_version"]):
                self.client.predictions.delete(prediction_id)
        self.client.predictions.create(
            task=task_id,
            result=prediction["result"],
            model_version=prediction["model_version"],
            score=prediction["score"],
        )
