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
from contextlib import nullcontext
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ml_backend.config import Settings
from ml_backend.engine import GPU_BATCH_GROUP, Engine, InferenceBackend
from ml_backend.labelstudio.interface import BRUSH, POLYGON, ProjectInterface
from ml_backend.labelstudio.prompts import SmartBox, SmartClick, TextPrompt, interaction_from_context
from ml_backend.labelstudio.results import build_prediction, detections_to_results, segment_results
from ml_backend.masks import PolygonOptions
from ml_backend.schemas import (
    BatchImage,
    BatchRequest,
    BatchResponse,
    DetectOptions,
    DetectRequest,
    DetectResponse,
    ImageSize,
    PolygonFields,
    RequestError,
    SegmentRequest,
    SegmentResponse,
)

if TYPE_CHECKING:
    from ml_backend.labelstudio.budget import Deadline

log = logging.getLogger(__name__)
IMAGE_FETCH_THREADS = 8
BUDGETED_OFFLOAD_GROUP = 16  # images per RunPod job when PREDICT_TIME_BUDGET_S applies
Prediction = dict[str, Any]


class NoUsableImagesError(RequestError):
    """Every task of a batch failed before inference; the message lists why."""


@dataclass(frozen=True)
class BatchOverrides:
    """What a background job may choose instead of the backend's defaults."""

    model: str | None = None
    prompt: str | None = None
    with_masks: bool | None = None
    polygon_tolerance: float | None = None
    polygon_max_points: int | None = None
    polygon_min_area: float | None = None


@dataclass(frozen=True)
class TaskOutcome:
    """A task's prediction, or the error that kept it from getting one."""

    task_id: Any
    prediction: Prediction | None = None
    error: Exception | None = None


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
    before_segment: Callable[[dict, str], None] | None = None  # (task, image path): the prewarm's hook

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
        if self.before_segment is not None:
            self.before_segment(task, path)
        response = self.backend.run(request, arrays=True)
        assert isinstance(response, SegmentResponse)
        width, height = response.image.width, response.image.height
        results = segment_results(
            response.masks, interaction.label, interface, width, height, self.polygon_options()
        )
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
        response = self.backend.run(request, arrays=True)
        assert isinstance(response, DetectResponse)
        label_of = _interactive_labeller(interface)
        results = detections_to_results(
            response.detections,
            interface,
            response.image.width,
            response.image.height,
            label_of,
            self.polygon_options(),
        )
        return build_prediction(results, model_version_for(self.settings))

    # ---- batch ----

    def predict_batch(
        self, tasks: Sequence[dict], interface: ProjectInterface, deadline: Deadline | None = None
    ) -> list[Prediction]:
        """One prediction per task, in order; a task whose image fails gets an empty prediction.

        With a deadline, only the first tasks, those finished before it, get one (see `annotate`).
        """
        outcomes = self.annotate(tasks, interface, deadline=deadline)
        if tasks and len(outcomes) == len(tasks) and all(outcome.prediction is None for outcome in outcomes):
            reasons = "; ".join(f"task {outcome.task_id}: {outcome.error}" for outcome in outcomes)
            raise NoUsableImagesError(f"no task could be annotated ({reasons})")
        version = self.model_version(BatchOverrides())
        return [outcome.prediction or build_prediction([], version) for outcome in outcomes]

    def annotate(
        self,
        tasks: Sequence[dict],
        interface: ProjectInterface,
        overrides: BatchOverrides | None = None,
        deadline: Deadline | None = None,
    ) -> list[TaskOutcome]:
        """Pre-label tasks from the project's labels (or `overrides.prompt`); one outcome per task.

        Images download concurrently while earlier ones run on the model; offloaded, the images of the
        call travel as one batch job. With a deadline, no group of images starts that would end after
        it: the outcomes cover the first tasks only, and downloads still running finish into the cache.
        """
        overrides = overrides or BatchOverrides()
        options = self._detect_options(
            interface,
            overrides.prompt or " . ".join(interface.batch_phrases()),
            overrides.model,
            overrides.with_masks,
        ).model_copy(
            update={
                "polygon_tolerance": overrides.polygon_tolerance,
                "polygon_max_points": overrides.polygon_max_points,
                "polygon_min_area": overrides.polygon_min_area,
            }
        )
        version = self.model_version(overrides)
        pool = ThreadPoolExecutor(IMAGE_FETCH_THREADS, thread_name_prefix="ls-image")
        try:
            futures = [pool.submit(self._resolve, task, interface) for task in tasks]
            step = self._group_size(len(tasks), budgeted=deadline is not None)
            outcomes: list[TaskOutcome] = []
            for start in range(0, len(tasks), step):
                if deadline is not None and not deadline.ready_in_time(futures[start : start + step]):
                    break
                paths = [future.result() for future in futures[start : start + step]]
                with deadline.group() if deadline is not None else nullcontext():
                    outcomes += self._annotate_group(
                        tasks[start : start + step], paths, options, interface, version
                    )
            return outcomes
        finally:
            pool.shutdown(wait=deadline is None, cancel_futures=True)

    def _group_size(self, task_count: int, budgeted: bool = False) -> int:
        """Images per inference call: offloaded, all of them (one RunPod job; a few under a time budget,
        so it can stop between jobs); locally, one at a time on a CPU (each starts as soon as its
        download ends) or a GPU batch for Grounding DINO."""
        if not isinstance(self.backend, Engine):
            return max(1, min(task_count, BUDGETED_OFFLOAD_GROUP) if budgeted else task_count)
        return GPU_BATCH_GROUP if self.backend.registry.runtime.device.type == "cuda" else 1

    def model_version(self, overrides: BatchOverrides) -> str:
        return model_version_for(self.settings, overrides.model)

    def _resolve(self, task: dict, interface: ProjectInterface) -> str | Exception:
        try:
            return self.resolve_image(interface.task_image(task), task.get("id"))
        except (RequestError, ValueError) as error:
            return error

    def _annotate_group(
        self,
        tasks: Sequence[dict],
        paths: list[str | Exception],
        options: DetectOptions,
        interface: ProjectInterface,
        version: str,
    ) -> list[TaskOutcome]:
        ready = [
            (task, path) for task, path in zip(tasks, paths, strict=True) if not isinstance(path, Exception)
        ]
        items = {}
        if ready:
            images = [BatchImage(id=str(task.get("id")), path=path) for task, path in ready]
            response = self._run_batch(BatchRequest(images=images, **options.model_dump()))
            items = {str(item.id): item for item in response.results}
        outcomes = []
        for task, path in zip(tasks, paths, strict=True):
            item = items.get(str(task.get("id")))
            if isinstance(path, Exception) or item is None or item.image is None:
                error = (
                    path if isinstance(path, Exception) else RequestError(item.error if item else "no result")
                )
                outcomes.append(TaskOutcome(task.get("id"), error=error))
            else:
                outcomes.append(
                    self._outcome(task, item.detections or [], item.image, interface, version, options)
                )
        return outcomes

    def _run_batch(self, request: BatchRequest) -> BatchResponse:
        """Offloaded batches go as async jobs (`/run`, then `/status` polling) when the backend can."""
        run_async = getattr(self.backend, "run_async", None)
        if run_async is None:
            response = self.backend.run(request, arrays=True)
        else:
            response = self.backend.wait(run_async(request))  # type: ignore[attr-defined]
        assert isinstance(response, BatchResponse)
        return response

    def _outcome(
        self,
        task: dict,
        detections: list,
        image: ImageSize,
        interface: ProjectInterface,
        version: str,
        options: DetectOptions,
    ) -> TaskOutcome:
        results = detections_to_results(
            detections,
            interface,
            image.width,
            image.height,
            interface.label_for_phrase,
            self.polygon_options(options),
        )
        return TaskOutcome(task.get("id"), prediction=build_prediction(results, version))

    # ---- shared ----

    def polygon_options(self, fields: PolygonFields | None = None) -> PolygonOptions:
        """PolygonLabels outlines: the server's POLYGON_* settings unless a job chose others."""
        chosen = fields or PolygonFields()
        return PolygonOptions.from_settings(
            self.settings,
            tolerance=chosen.polygon_tolerance,
            max_points=chosen.polygon_max_points,
            min_area=chosen.polygon_min_area,
        )

    def _detect_options(
        self, interface: ProjectInterface, text: str, model: str | None = None, with_masks: bool | None = None
    ) -> DetectOptions:
        model = model or self.settings.text_prompt_model
        has_mask_tags = interface.first_of(BRUSH) is not None or interface.first_of(POLYGON) is not None
        wants_masks = has_mask_tags if with_masks is None else with_masks
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
