"""The Label Studio ML backend class: Label Studio interactions → od-annotation engine → predictions.

Smart keypoints (positive and Alt+click negative) and smart rectangles become SAM masks, a text
prompt becomes detections, and calls without a context ("Retrieve predictions") pre-label tasks
from the project's labels. The work happens in `ml_backend.labelstudio.predictor`.
"""

from __future__ import annotations

from typing import Any

from ml_backend.config import settings
from ml_backend.labelstudio.access import LabelStudioAuth, TaskImageResolver
from ml_backend.labelstudio.base import LabelStudioMLBase, ModelResponse, UserFacingError
from ml_backend.labelstudio.budget import RetrieveBudget
from ml_backend.labelstudio.interface import ProjectInterface
from ml_backend.labelstudio.predictor import Predictor, get_backend, model_version_for
from ml_backend.labelstudio.prewarm import (
    NextTasks,
    ProjectImages,
    get_prewarmer,
    has_smart_segmenting,
    is_prewarm_event,
)
from ml_backend.labelstudio.prompts import interaction_from_context
from ml_backend.remote import RemoteInferenceError


class ODAnnotationModel(LabelStudioMLBase):
    def setup(self) -> None:
        self.model_version = model_version_for(settings)
        self.interface = ProjectInterface.from_config(self.label_config) if self.label_config else None
        auth = LabelStudioAuth.from_settings(settings, self.hostname, self.access_token)
        resolver = TaskImageResolver.from_settings(settings, auth)
        self.prewarmer = get_prewarmer(settings, lambda: get_backend(settings))
        self.predictor = Predictor(
            get_backend(settings), resolver.local_path, settings, before_segment=self.prewarmer.note_click
        )
        self.resolve_image = resolver.local_path
        self.next_tasks = NextTasks(auth, settings.image_timeout_s)
        self.smart_segmenting = has_smart_segmenting(self.label_config)
        self.budget = RetrieveBudget(settings.predict_time_budget_s, self.background)

    def predict(self, tasks: list[dict], context: dict | None = None, **kwargs: Any) -> ModelResponse:
        interface = self.interface or ProjectInterface.from_config(self.label_config or "")
        if is_prewarm_event(context):
            self.prewarmer.warm_tasks(tasks, self._project_images(interface))
            return ModelResponse(predictions=[[] for _ in tasks], model_version=self.model_version)
        try:
            predictions = self._predict(tasks, interface, context)
        except RemoteInferenceError as error:
            raise UserFacingError(f"RunPod inference failed: {error}", status_code=502) from None
        self._prewarm_after(tasks, interface, context)
        return ModelResponse(predictions=predictions, model_version=self.model_version)

    def _predict(self, tasks: list[dict], interface: ProjectInterface, context: dict | None) -> list[Any]:
        """A batch ("Retrieve predictions", an opened task) answers within PREDICT_TIME_BUDGET_S."""
        if interaction_from_context(context, interface) is not None:
            return self.predictor.predict(tasks, interface, context)
        return self.budget.predict(
            self.project_id,
            tasks,
            lambda chosen, deadline: self.predictor.predict_batch(chosen, interface, deadline),
        )

    def _prewarm_after(self, tasks: list[dict], interface: ProjectInterface, context: dict | None) -> None:
        """One task without a prompt: Label Studio opened it. A prompt: the project's next tasks come next."""
        if not self.smart_segmenting:
            return
        images = self._project_images(interface)
        if interaction_from_context(context, interface) is not None:
            self.prewarmer.warm_next_tasks(self.project_id, tasks[0].get("id"), images)
        elif len(tasks) == 1:
            self.prewarmer.warm_tasks(tasks, images)

    def _project_images(self, interface: ProjectInterface) -> ProjectImages:
        return ProjectImages(interface.task_image, self.resolve_image, self.next_tasks)

    @classmethod
    def health_details(cls) -> dict[str, Any]:
        return get_backend(settings).describe()

    @classmethod
    def metrics_details(cls) -> dict[str, Any]:
        return {"prewarm": get_prewarmer(settings, lambda: get_backend(settings)).snapshot()}

    @classmethod
    def preload(cls) -> None:
        """PRELOAD_MODELS: load them when the server starts rather than on the first request."""
        backend = get_backend(settings)
        registry = getattr(backend, "registry", None)
        if registry is not None and settings.preload_models:
            registry.preload(settings.preload_models)
