"""Label Studio tasks and interaction contexts → wire-contract requests → Label Studio predictions.

The predictor neither knows nor cares whether inference runs here (`Engine`) or on RunPod
(`RemoteEngine`): both take the same requests. Task images are resolved to local files first
(uploads and local files need Label Studio credentials that must never leave for another host).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from ml_backend.config import Settings
from ml_backend.engine import Engine, InferenceBackend
from ml_backend.labelstudio.interface import BRUSH, POLYGON, ProjectInterface
from ml_backend.labelstudio.prompts import SmartBox, SmartClick, TextPrompt, interaction_from_context
from ml_backend.labelstudio.results import build_prediction, detections_to_results, segment_results
from ml_backend.schemas import (
    BatchImage,
    BatchRequest,
    DetectOptions,
    DetectRequest,
    DetectResponse,
    RequestError,
    SegmentRequest,
    SegmentResponse,
)

log = logging.getLogger(__name__)
IMAGE_FETCH_THREADS = 8
Prediction = dict[str, Any]


class NoUsableImagesError(RequestError):
    """Every task of a batch failed before inference; the message lists why."""


def model_version_for(settings: Settings, model: str | None = None) -> str:
    """Names the model and its hub id, e.g. `od-annotation/grounding_dino:IDEA-Research/grounding-dino-base`."""
    name = model or settings.text_prompt_model
    return f"od-annotation/{name}:{settings.model_id(name)}"  # type: ignore[arg-type]


_backend: InferenceBackend | None = None
_backend_lock = threading.Lock()


def get_backend(settings: Settings) -> InferenceBackend:
    """The process-wide inference backend: the local engine, or the RunPod client in runpod mode."""
    global _backend
    if _backend is None:
        with _backend_lock:
            if _backend is None:
                _backend = _create_backend(settings)
    return _backend


def _create_backend(settings: Settings) -> InferenceBackend:
    if settings.inference_mode == "runpod":
        from ml_backend.remote import RemoteEngine

        return RemoteEngine(settings)
    return Engine(settings, allow_local_paths=True)


@dataclass
class Predictor:
    backend: InferenceBackend
    resolve_image: Callable[[str, int | None], str]
    settings: Settings

    # ---- entry ----

    def predict(
        self, tasks: Sequence[dict], interface: ProjectInterface, context: dict | None
    ) -> list[Prediction]:
        interaction = interaction_from_context(context, interface)
        if interaction is None:
            return self.predict_batch(tasks, interface)
        if len(tasks) != 1:
            raise RequestError(f"tasks: an interactive call carries one task, got {len(tasks)}")
        return [self.predict_interactive(tasks[0], interface, interaction)]

    # ---- interactive ----

    def predict_interactive(
        self, task: dict, interface: ProjectInterface, interaction: SmartClick | SmartBox | TextPrompt
    ) -> Prediction:
        path = self.resolve_image(interface.task_image(task), task.get("id"))
        if isinstance(interaction, TextPrompt):
            return self._text_prompt(path, interface, interaction.text)
        request = self._segment_request(path, interaction)
        response = self.backend.run(request)
        assert isinstance(response, SegmentResponse)
        width, height = response.image.width, response.image.height
        results = segment_results(response.masks, interaction.label, interface, width, height)
        return build_prediction(results, model_version_for(self.settings, request.model))

    def _segment_request(self, path: str, interaction: SmartClick | SmartBox) -> SegmentRequest:
        model = self.settings.interactive_segmenter
        if isinstance(interaction, SmartBox):
            return SegmentRequest(model=model, image_path=path, prompt_type="box", box=interaction.box)
        return SegmentRequest(
            model=model,
            image_path=path,
            prompt_type="points",
            points=list(interaction.points),
            labels=list(interaction.labels),
            box=interaction.box,
        )

    def _text_prompt(self, path: str, interface: ProjectInterface, text: str) -> Prediction:
        request = DetectRequest(image_path=path, **self._detect_options(interface, text).model_dump())
        response = self.backend.run(request)
        assert isinstance(response, DetectResponse)
        label_of = _interactive_labeller(interface)
        results = detections_to_results(
            response.detections, interface, response.image.width, response.image.height, label_of
        )
        return build_prediction(results, model_version_for(self.settings))

    # ---- batch ----

    def predict_batch(self, tasks: Sequence[dict], interface: ProjectInterface) -> list[Prediction]:
        phrases = interface.batch_phrases()
        paths = self._resolve_all(tasks, interface)
        ready = [
            (task, path) for task, path in zip(tasks, paths, strict=True) if not isinstance(path, Exception)
        ]
        if not ready:
            reasons = "; ".join(
                f"task {task.get('id')}: {error}" for task, error in zip(tasks, paths, strict=True)
            )
            raise NoUsableImagesError(f"no task image could be read ({reasons})")
        options = self._detect_options(interface, " . ".join(phrases))
        images = [BatchImage(id=str(task.get("id")), path=path) for task, path in ready]
        response = self.backend.run(BatchRequest(images=images, **options.model_dump()))
        by_id = {str(item.id): item for item in response.results}
        version = model_version_for(self.settings)
        predictions = []
        for task, path in zip(tasks, paths, strict=True):
            item = by_id.get(str(task.get("id")))
            error = str(path) if isinstance(path, Exception) else (item.error if item else "no result")
            if error or item is None or item.image is None:
                log.warning("task %s: no prediction (%s)", task.get("id"), error)
                predictions.append(build_prediction([], version))
                continue
            results = detections_to_results(
                item.detections or [],
                interface,
                item.image.width,
                item.image.height,
                interface.label_for_phrase,
            )
            predictions.append(build_prediction(results, version))
        return predictions

    def _resolve_all(self, tasks: Sequence[dict], interface: ProjectInterface) -> list[str | Exception]:
        def resolve(task: dict) -> str | Exception:
            try:
                return self.resolve_image(interface.task_image(task), task.get("id"))
            except (RequestError, ValueError) as error:
                return error

        with ThreadPoolExecutor(
            min(IMAGE_FETCH_THREADS, max(1, len(tasks))), thread_name_prefix="ls-image"
        ) as pool:
            return list(pool.map(resolve, tasks))

    # ---- shared ----

    def _detect_options(self, interface: ProjectInterface, text: str) -> DetectOptions:
        model = self.settings.text_prompt_model
        wants_masks = interface.first_of(BRUSH) is not None or interface.first_of(POLYGON) is not None
        options: dict[str, Any] = {"model": model, "text_prompt": text}
        if model == "grounding_dino":
            options["with_masks"] = wants_masks
        elif model == "florence2":
            options["florence2_task"] = (
                "referring_expression_segmentation" if wants_masks else "phrase_grounding"
            )
            options["text_prompt"] = text.replace(" . ", ", ")
        return DetectOptions(**options)


def _interactive_labeller(interface: ProjectInterface) -> Callable[[str], str | None]:
    """A typed prompt maps to a label like a batch phrase does; when the project has exactly one
    label, every box of the prompt takes it (there is no other reading)."""
    labels = interface.labels()
    only_label = labels[0] if len(labels) == 1 else None

    def label_of(phrase: str) -> str | None:
        return interface.label_for_phrase(phrase) or only_label

    return label_of
