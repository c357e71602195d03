"""Task × model dispatch: the one entry point both fronts use.

`Engine.run(request)` takes a validated wire-contract request and returns its response. The
Label Studio backend and the RunPod worker both call it; the offload client (`remote.py`) has
the same `run` so the backend can swap one for the other.
"""

from __future__ import annotations

import logging
import os
import re
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Protocol, TypeVar

import numpy as np
from pydantic import PrivateAttr

from ml_backend.config import Settings
from ml_backend.config import settings as default_settings
from ml_backend.images import ImageLimits, RGBImage, content_key, decode_image, load_source_bytes
from ml_backend.masks import PolygonOptions, encode_rle, mask_box, mask_polygons
from ml_backend.models.base import Detection, EmbeddingCache, SegmentMask, SegmentPrompt
from ml_backend.models.registry import ModelRegistry
from ml_backend.schemas import (
    BatchItem,
    BatchRequest,
    BatchResponse,
    DetectionOut,
    DetectOptions,
    DetectRequest,
    DetectResponse,
    EmbedRequest,
    EmbedResponse,
    ImageRef,
    ImageRefMiss,
    ImageSize,
    ImageSource,
    MaskFormat,
    MaskOut,
    PolygonFields,
    RequestError,
    Response,
    SegmentRequest,
    SegmentResponse,
    Timing,
)

log = logging.getLogger(__name__)
Request = DetectRequest | SegmentRequest | BatchRequest | EmbedRequest
BATCH_DOWNLOAD_THREADS = 8
DECODED_FILE_CACHE_SIZE = 4
GPU_BATCH_GROUP = 8  # images per Grounding DINO forward in a batch request on a GPU


class InferenceBackend(Protocol):
    """What a front needs: the local Engine and the RunPod offload client both satisfy it."""

    def run(self, request: Request, *, arrays: bool = False) -> Response: ...

    def describe(self) -> dict: ...


# Set for the duration of one `Engine.run(..., arrays=True)`: masks stay arrays, no COCO RLE is encoded.
_MASK_ARRAYS: ContextVar[bool] = ContextVar("mask_arrays", default=False)


class MaskOutWithArray(MaskOut):
    """A segment mask that hands its boolean array to a caller in this process; never serialised."""

    _array: np.ndarray | None = PrivateAttr(default=None)


class DetectionOutWithArray(DetectionOut):
    """A detection that hands its boolean mask to a caller in this process; never serialised."""

    _array: np.ndarray | None = PrivateAttr(default=None)


def mask_array(out: MaskOut | DetectionOut) -> np.ndarray | None:
    """The boolean mask a local `run(..., arrays=True)` attached instead of RLE; None otherwise."""
    return out._array if isinstance(out, MaskOutWithArray | DetectionOutWithArray) else None


class ResourceError(RuntimeError):
    """The accelerator ran out of memory; caches were emptied so the next request can run."""


def split_phrases(text_prompt: str) -> list[str]:
    """ "shelf . product . price tag" → ["shelf", "product", "price tag"]; commas split when no dot does."""
    separator = "." if "." in text_prompt else ","
    phrases = [part.strip() for part in re.split(re.escape(separator), text_prompt)]
    return list(dict.fromkeys(phrase for phrase in phrases if phrase))


class Engine:
    def __init__(
        self,
        settings: Settings | None = None,
        registry: ModelRegistry | None = None,
        *,
        allow_local_paths: bool = False,
    ) -> None:
        self.settings = settings or default_settings
        self.registry = registry or ModelRegistry(self.settings)
        self.limits = ImageLimits.from_settings(self.settings)
        self.allow_local_paths = allow_local_paths
        self._decoded_files: EmbeddingCache[RGBImage] = EmbeddingCache(DECODED_FILE_CACHE_SIZE)
        self._decoded_sources: EmbeddingCache[RGBImage] = EmbeddingCache(self.settings.embedding_cache_size)

    # ---- public ----

    def run(self, request: Request, *, arrays: bool = False) -> Response:
        """`arrays=True` (a caller in this process, e.g. the Label Studio backend in local mode): masks
        come back as boolean arrays (`mask_array`) instead of COCO RLE, sparing an encode and a decode."""
        token = _MASK_ARRAYS.set(arrays)
        try:
            return self._run(request)
        finally:
            _MASK_ARRAYS.reset(token)

    def _run(self, request: Request) -> Response:
        with self._out_of_memory_guard():
            if isinstance(request, DetectRequest):
                return self._detect(request)
            if isinstance(request, SegmentRequest):
                return self._segment(request)
            if isinstance(request, EmbedRequest):
                return self._embed(request)
            return self._batch(request)

    def describe(self) -> dict:
        return {
            "inference_mode": "local",
            "device": str(self.registry.runtime.device),
            "dtype": str(self.registry.runtime.dtype).removeprefix("torch."),
            "models_loaded": self.registry.loaded(),
        }

    def load_image(self, source: ImageSource, prefix: str = "image_", remember: bool = True) -> RGBImage:
        """The decoded image; `remember` keeps a url/base64 image for later `image_ref` requests."""
        if source.image_path:
            return self._load_local_file(source.image_path, prefix)
        if source.image_ref:
            return self._load_by_ref(source.image_ref)
        data = load_source_bytes(
            self.limits, url=source.image_url, base64_data=source.image_base64, prefix=prefix
        )
        field = f"{prefix}{_source_kind(source)}"
        if not remember:
            return decode_image(data, self.limits, field=field)
        return self._decoded_sources.get_or_compute(
            (content_key(data), len(data)), lambda: decode_image(data, self.limits, field=field)
        )

    def _load_by_ref(self, ref: ImageRef) -> RGBImage:
        """An image decoded here before, by content hash and size (an LRU of EMBEDDING_CACHE_SIZE images):
        a repeated offloaded click names the image instead of carrying it again."""

        def miss() -> RGBImage:
            raise ImageRefMiss()

        return self._decoded_sources.get_or_compute((ref.hash, ref.bytes), miss)

    def _load_local_file(self, path: str, prefix: str) -> RGBImage:
        """Local files (the Label Studio backend's downloads) stay decoded in a small LRU keyed by path,
        size and mtime: an annotator clicks the same image many times, and decoding costs as much as a click."""
        if not self.allow_local_paths:
            raise RequestError(
                f"{prefix}path: local files are not accepted here; send {prefix}url or {prefix}base64"
            )
        try:
            stat = os.stat(path)
        except OSError:
            raise RequestError(f"{prefix}path: no such file {path}") from None

        def decode() -> RGBImage:
            return decode_image(
                load_source_bytes(self.limits, path=path, prefix=prefix), self.limits, f"{prefix}path"
            )

        return self._decoded_files.get_or_compute((path, stat.st_size, stat.st_mtime_ns), decode)

    def detect_image(self, image: RGBImage, options: DetectOptions) -> list[DetectionOut]:
        [detections] = self._run_detector([image], options)
        return self._finish_detections(image, detections, options)

    def _finish_detections(
        self, image: RGBImage, detections: list[Detection], options: DetectOptions
    ) -> list[DetectionOut]:
        detections = sorted(detections, key=lambda detection: detection.score, reverse=True)
        if options.max_detections:
            detections = detections[: options.max_detections]
        if options.with_masks:
            detections = self._add_masks(image, detections)
        outline = self.polygon_options(options)
        return [_detection_out(detection, options.mask_format, outline) for detection in detections]

    # ---- tasks ----

    def _detect(self, request: DetectRequest) -> DetectResponse:
        started = time.perf_counter()
        image = self.load_image(request)
        loaded = time.perf_counter()
        detections = self.detect_image(image, request)
        return DetectResponse(
            model=request.model,
            model_id=self._model_id(request.model),
            image=ImageSize(width=image.width, height=image.height),
            detections=detections,
            timing_ms=_timing(started, loaded),
        )

    def _segment(self, request: SegmentRequest) -> SegmentResponse:
        started = time.perf_counter()
        image = self.load_image(request)
        loaded = time.perf_counter()
        masks = self._segment_image(image, request)
        return SegmentResponse(
            model=request.model,
            model_id=self._model_id(request.model),
            image=ImageSize(width=image.width, height=image.height),
            masks=[_mask_out(mask, request.mask_format, self.polygon_options(request)) for mask in masks],
            timing_ms=_timing(started, loaded),
        )

    def _embed(self, request: EmbedRequest) -> EmbedResponse:
        started = time.perf_counter()
        image = self.load_image(request)
        loaded = time.perf_counter()
        self._segmenter(request.model).embed(image)
        return EmbedResponse(
            model=request.model,
            model_id=self._model_id(request.model),
            image=ImageSize(width=image.width, height=image.height),
            timing_ms=_timing(started, loaded),
        )

    def _batch(self, request: BatchRequest) -> BatchResponse:
        if len(request.images) > self.settings.max_batch_images:
            raise RequestError(
                f"images: {len(request.images)} images, over the MAX_BATCH_IMAGES limit {self.settings.max_batch_images}"
            )
        started = time.perf_counter()
        download_s = 0.0
        results: dict[int, BatchItem] = {}
        group: list[tuple[int, RGBImage]] = []
        group_size = GPU_BATCH_GROUP if self.registry.runtime.device.type == "cuda" else 1
        for index, (item, (image, seconds)) in enumerate(
            zip(request.images, self._prefetch(request), strict=True)
        ):
            download_s += seconds
            if isinstance(image, str):
                results[index] = BatchItem(id=item.id, error=image)
                continue
            group.append((index, image))
            if len(group) == group_size:
                results.update(self._detect_group(group, request))
                group = []
        results.update(self._detect_group(group, request))
        total = (time.perf_counter() - started) * 1000
        return BatchResponse(
            model=request.model,
            model_id=self._model_id(request.model),
            results=[results[index] for index in range(len(request.images))],
            timing_ms=Timing(
                download=round(download_s * 1000, 1),
                inference=round(total - download_s * 1000, 1),
                total=round(total, 1),
            ),
        )

    def _prefetch(self, request: BatchRequest) -> Iterator[tuple[RGBImage | str, float]]:
        """Download and decode the batch's images in a thread pool while earlier ones run on the model.

        A failed image yields its error message instead of an image; it never stops the batch.
        """

        def load(index: int) -> tuple[RGBImage | str, float]:
            started = time.perf_counter()
            try:
                image: RGBImage | str = self.load_image(request.images[index].as_source(), remember=False)
            except RequestError as error:
                image = str(error)
            return image, time.perf_counter() - started

        workers = min(BATCH_DOWNLOAD_THREADS, len(request.images))
        with ThreadPoolExecutor(workers, thread_name_prefix="batch-download") as pool:
            futures = [pool.submit(load, index) for index in range(len(request.images))]
            for future in futures:
                yield future.result()

    # ---- model calls ----

    def _detect_group(self, group: list[tuple[int, RGBImage]], request: BatchRequest) -> dict[int, BatchItem]:
        """Detections for loaded images of a batch, in one model call where the model batches."""
        if not group:
            return {}
        try:
            found = self._run_detector([image for _, image in group], request)
        except RequestError as error:
            return {index: BatchItem(id=request.images[index].id, error=str(error)) for index, _ in group}
        return {
            index: BatchItem(
                id=request.images[index].id,
                image=ImageSize(width=image.width, height=image.height),
                detections=self._finish_detections(image, detections, request),
            )
            for (index, image), detections in zip(group, found, strict=True)
        }

    def _run_detector(self, images: list[RGBImage], options: DetectOptions) -> list[list[Detection]]:
        """One list of detections per image; Grounding DINO runs same-size images as one batch on a GPU."""
        box_threshold = _default(options.box_threshold, self.settings.default_box_threshold)
        text_threshold = _default(options.text_threshold, self.settings.default_text_threshold)
        if options.model == "florence2":
            runner = self.registry.get("florence2")
            return [runner.run(image, options.florence2_task, options.text_prompt) for image in images]
        phrases = split_phrases(options.text_prompt or "")
        if not phrases:
            raise RequestError("text_prompt: no phrase found (write phrases separated by '.')")
        detector = self.registry.get(options.model)
        thresholds = {"box_threshold": box_threshold, "text_threshold": text_threshold}
        if options.model == "grounding_dino":
            return detector.detect_batch(images, phrases, **thresholds)
        return [detector.detect(image, phrases, **thresholds) for image in images]

    def _add_masks(self, image: RGBImage, detections: list[Detection]) -> list[Detection]:
        """Grounded SAM: one SAM 2.1 call for every box of the image that has no mask yet."""
        missing = [index for index, detection in enumerate(detections) if detection.mask is None]
        if not missing:
            return detections
        masks = self.registry.get("sam2").segment_boxes(image, [detections[index].box for index in missing])
        completed = list(detections)
        for index, mask in zip(missing, masks, strict=True):
            detection = detections[index]
            completed[index] = Detection(detection.label, detection.score, detection.box, mask.mask)
        return completed

    def _segment_image(self, image: RGBImage, request: SegmentRequest) -> Sequence[SegmentMask]:
        if request.prompt_type == "text":
            threshold = _default(request.threshold, self.settings.default_box_threshold)
            return self.registry.get("sam3").segment_text(
                image, request.text_prompt or "", threshold=threshold
            )
        points, labels = request.prompt_points()
        prompt = SegmentPrompt(points=points, labels=labels, box=request.box)
        return self._segmenter(request.model).segment(image, prompt, multimask=request.multimask)

    def _segmenter(self, model: str):
        return self.registry.get("sam2" if model == "sam2" else "sam3_tracker")

    def polygon_options(self, fields: PolygonFields) -> PolygonOptions:
        return PolygonOptions.from_settings(
            self.settings,
            tolerance=fields.polygon_tolerance,
            max_points=fields.polygon_max_points,
            min_area=fields.polygon_min_area,
        )

    def _model_id(self, model: str) -> str:
        return self.registry.model_id(model)

    @contextmanager
    def _out_of_memory_guard(self) -> Iterator[None]:
        import torch

        try:
            yield
        except torch.OutOfMemoryError:
            self.registry.free_memory()
            log.warning("GPU out of memory; embedding caches and CUDA cache emptied")
            raise ResourceError(
                "GPU out of memory: the request was too large for this GPU (try fewer images per batch, "
                "smaller images or a GPU with more memory); caches were emptied, the next request can run"
            ) from None


def _default(value: float | None, fallback: float) -> float:
    return fallback if value is None else value


def _source_kind(source: ImageSource) -> str:
    return "url" if source.image_url else "base64" if source.image_base64 else "path"


def _timing(started: float, loaded: float) -> Timing:
    done = time.perf_counter()
    return Timing(
        download=round((loaded - started) * 1000, 1),
        inference=round((done - loaded) * 1000, 1),
        total=round((done - started) * 1000, 1),
    )


def _mask_fields(mask, mask_format: MaskFormat, outline: PolygonOptions) -> dict:
    fields: dict = {}
    if mask_format in ("rle", "both") and not _MASK_ARRAYS.get():
        fields["mask"] = encode_rle(mask)
    if mask_format in ("polygons", "both"):
        fields["polygons"] = mask_polygons(mask, outline)
    return fields


def _detection_out(detection: Detection, mask_format: MaskFormat, outline: PolygonOptions) -> DetectionOut:
    extra = _mask_fields(detection.mask, mask_format, outline) if detection.mask is not None else {}
    fields = {"label": detection.label, "score": round(detection.score, 4), "box": detection.box, **extra}
    if detection.mask is not None and _keeps_array(mask_format):
        return _attach(DetectionOutWithArray(**fields), detection.mask)
    return DetectionOut(**fields)


def _mask_out(mask: SegmentMask, mask_format: MaskFormat, outline: PolygonOptions) -> MaskOut:
    fields = {
        "score": round(mask.score, 4),
        "box": mask_box(mask.mask),
        **_mask_fields(mask.mask, mask_format, outline),
    }
    if _keeps_array(mask_format):
        return _attach(MaskOutWithArray(**fields), mask.mask)
    return MaskOut(**fields)


def _keeps_array(mask_format: MaskFormat) -> bool:
    """Whether the mask travels as an array: where RLE was asked for, in a run that wants arrays."""
    return mask_format in ("rle", "both") and _MASK_ARRAYS.get()


Out = TypeVar("Out", MaskOutWithArray, DetectionOutWithArray)


def _attach(out: Out, mask: np.ndarray) -> Out:
    out._array = mask
    return out
