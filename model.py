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
from ml_backend.labelstudio.interface import ProjectInterface
from ml_backend.labelstudio.predictor import Predictor, get_backend, model_version_for
from ml_backend.remote import RemoteInferenceError


class ODAnnotationModel(LabelStudioMLBase):
    def setup(self) -> None:
        self.model_version = model_version_for(settings)
        self.interface = ProjectInterface.from_config(self.label_config) if self.label_config else None
        auth = LabelStudioAuth.from_settings(settings, self.hostname, self.access_token)
        resolver = TaskImageResolver.from_settings(settings, auth)
        self.predictor = Predictor(get_backend(settings), resolver.local_path, settings)

    def predict(self, tasks: list[dict], context: dict | None = None, **kwargs: Any) -> ModelResponse:
        interface = self.interface or ProjectInterface.from_config(self.label_config or "")
        try:
            predictions = self.predictor.predict(tasks, interface, context)
        except RemoteInferenceError as error:
            raise UserFacingError(f"RunPod inference failed: {error}", status_code=502) from None
        return ModelResponse(predictions=predictions, model_version=self.model_version)

    @classmethod
    def health_details(cls) -> dict[str, Any]:
        return get_backend(settings).describe()

    @classmethod
    def preload(cls) -> None:
        """PRELOAD_MODELS: load them when the server starts rather than on the first request."""
        backend = get_backend(settings)
        registry = getattr(backend, "registry", None)
        if registry is not None and settings.preload_models:
            registry.preload(settings.preload_models)
