"""Florence-2: detection, grounding, region captions, proposals, referring segmentation and OCR.

Florence-2 generates text with `<loc_N>` coordinate tokens and gives no confidence, so every
detection it returns has score 1.0.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from ml_backend.masks import mask_box, polygons_to_mask
from ml_backend.models.base import BoxXYXY, Detection, Runtime, has_area, normalise_box
from ml_backend.schemas import FLORENCE2_TASKS_NEEDING_TEXT, RequestError

if TYPE_CHECKING:
    from ml_backend.images import RGBImage

TASK_TOKENS: dict[str, str] = {
    "od": "<OD>",
    "phrase_grounding": "<CAPTION_TO_PHRASE_GROUNDING>",
    "open_vocabulary_detection": "<OPEN_VOCABULARY_DETECTION>",
    "dense_region_caption": "<DENSE_REGION_CAPTION>",
    "region_proposal": "<REGION_PROPOSAL>",
    "referring_expression_segmentation": "<REFERRING_EXPRESSION_SEGMENTATION>",
    "ocr_with_region": "<OCR_WITH_REGION>",
}
NO_CONFIDENCE = 1.0
# Used only when a checkpoint's generation config sets no max_new_tokens: the library default
# (max_length=20) would cut a detection list off after a few boxes.
FALLBACK_MAX_NEW_TOKENS = 1024


class Florence2Runner:
    """Runs one Florence-2 task per call; also a `TextDetector` through open-vocabulary detection."""

    def __init__(self, model: Any, processor: Any, runtime: Runtime, model_id: str) -> None:
        self.model = model
        self.processor = processor
        self.runtime = runtime
        self.model_id = model_id

    def run(self, image: RGBImage, task: str, text: str | None = None) -> list[Detection]:
        """Detections of `task` (a key of TASK_TOKENS), all with score 1.0 (Florence-2 has no scores).

        `text` is the caption, phrase or expression of the tasks that take one and is ignored by the others.
        """
        token = task_token(task)
        generated = self._generate(image, task_prompt(task, text))
        parsed = self.processor.post_process_generation(
            generated, task=token, image_size=(image.width, image.height)
        )
        detections = detections_from_parsed(task, parsed[token], image.width, image.height)
        if task in FLORENCE2_TASKS_NEEDING_TEXT and text:
            # referring segmentation labels its instances ""; they are instances of the expression
            detections = [Detection(d.label or text.strip(), d.score, d.box, d.mask) for d in detections]
        return detections

    def detect(
        self, image: RGBImage, phrases: Sequence[str], *, box_threshold: float, text_threshold: float
    ) -> list[Detection]:
        """Open-vocabulary detection once per phrase, each box labelled with its phrase.

        The thresholds are accepted for the `TextDetector` protocol and ignored: Florence-2 gives no scores.
        """
        detections: list[Detection] = []
        for phrase in phrases:
            found = self.run(image, "open_vocabulary_detection", phrase)
            detections.extend(
                Detection(phrase, detection.score, detection.box, detection.mask) for detection in found
            )
        return detections

    def _generate(self, image: RGBImage, prompt: str) -> str:
        import torch

        inputs = self.processor(text=prompt, images=image.pil, return_tensors="pt")
        inputs = inputs.to(self.runtime.device, self.model.dtype)
        with torch.inference_mode():
            generated_ids = self.model.generate(**inputs, **self._generation_overrides())
        # Special tokens stay: the parser reads <loc_N>, <poly> and <sep>.
        return self.processor.batch_decode(generated_ids, skip_special_tokens=False)[0]

    def _generation_overrides(self) -> dict[str, int]:
        if self.model.generation_config.max_new_tokens is None:
            return {"max_new_tokens": FALLBACK_MAX_NEW_TOKENS}
        return {}


def load(model_id: str, runtime: Runtime) -> Florence2Runner:
    from transformers import AutoModelForImageTextToText, AutoProcessor

    processor = AutoProcessor.from_pretrained(model_id, token=runtime.hf_token)
    model = AutoModelForImageTextToText.from_pretrained(model_id, **runtime.load_kwargs())
    model.to(runtime.device).eval()
    return Florence2Runner(model, processor, runtime, model_id)


# ---- prompts ----


def task_token(task: str) -> str:
    if task not in TASK_TOKENS:
        raise RequestError(f"florence2_task: unknown task {task!r}; known: {', '.join(TASK_TOKENS)}")
    return TASK_TOKENS[task]


def task_prompt(task: str, text: str | None) -> str:
    """The task token, followed by the text for the tasks that take one (the processor rejects it elsewhere)."""
    token = task_token(task)
    if task not in FLORENCE2_TASKS_NEEDING_TEXT:
        return token
    stripped = (text or "").strip()
    if not stripped:
        raise RequestError(f"text_prompt: required for florence2_task {task}")
    return token + stripped


# ---- parsed output → detections ----


def detections_from_parsed(task: str, parsed: dict, width: int, height: int) -> list[Detection]:
    """The dict `post_process_generation` gives for `task` (pixel coordinates) → normalised detections.

    Boxes with no area inside the image are dropped; segmentation masks are boolean (height, width).
    """
    if task == "ocr_with_region":
        return from_quad_boxes(parsed["quad_boxes"], parsed["labels"], width, height)
    if task == "referring_expression_segmentation":
        return from_polygons(parsed["polygons"], parsed["labels"], width, height)
    if task == "open_vocabulary_detection":
        return from_boxes(parsed["bboxes"], parsed["bboxes_labels"], width, height) + from_polygons(
            parsed["polygons"], parsed["polygons_labels"], width, height
        )
    return from_boxes(parsed["bboxes"], parsed["labels"], width, height)


def from_boxes(
    boxes: Sequence[Sequence[float]], labels: Sequence[str], width: int, height: int
) -> list[Detection]:
    normalised = [normalise_box(box, width, height) for box in boxes]
    return [
        Detection(label.strip(), NO_CONFIDENCE, box)
        for box, label in zip(normalised, labels, strict=True)
        if has_area(box)
    ]


def from_quad_boxes(
    quad_boxes: Sequence[Sequence[float]], labels: Sequence[str], width: int, height: int
) -> list[Detection]:
    """Quadrilaterals [x1, y1, ..., x4, y4] → their enclosing boxes, labelled with the recognised text."""
    return from_boxes([enclosing_box(quad) for quad in quad_boxes], labels, width, height)


def from_polygons(
    instances: Sequence[Sequence[Sequence[float]]], labels: Sequence[str], width: int, height: int
) -> list[Detection]:
    """Each instance (a list of flat pixel polygons) → a mask of the image size and the mask's box."""
    detections = []
    for polygons, label in zip(instances, labels, strict=True):
        mask = polygons_to_mask([list(polygon) for polygon in polygons], width, height)
        box: BoxXYXY = tuple(float(value) for value in mask_box(mask))
        if has_area(box):
            detections.append(Detection(label.strip(), NO_CONFIDENCE, box, mask))
    return detections


def enclosing_box(points: Sequence[float]) -> list[float]:
    xs, ys = points[0::2], points[1::2]
    return [min(xs), min(ys), max(xs), max(ys)]
