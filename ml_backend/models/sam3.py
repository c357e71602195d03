"""SAM 3 (`facebook/sam3`): text → instances with masks (`Sam3Model`), points/boxes → masks (tracker).

The hub repo holds one combined video model, and `AutoModel` returns `Sam3VideoModel`, so both
loaders name their classes. The tracker shares SAM 2.1's API and adapter.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ml_backend.images import RGBImage
from ml_backend.models.base import Detection, EmbeddingCache, Runtime, SegmentMask, normalise_box
from ml_backend.models.sam2 import PromptableSegmenter, load_pretrained

MASK_THRESHOLD = 0.5
MASK_CHUNK = 8  # masks upsampled to full size at a time


@dataclass(frozen=True)
class VisionFeatures:
    """The vision encoder's output for one image and the (height, width) it was computed from."""

    embeds: Any
    original_size: tuple[int, int]


@dataclass(frozen=True)
class Instance:
    """One post-processed instance in original-image pixels."""

    score: float
    box: tuple[float, float, float, float]
    mask: np.ndarray


def load_tracker(model_id: str, runtime: Runtime) -> PromptableSegmenter:
    """The SAM 3 point/box model (`Sam3TrackerModel` + `Sam3TrackerProcessor`)."""
    from transformers import Sam3TrackerModel, Sam3TrackerProcessor

    model, processor = load_pretrained(Sam3TrackerModel, Sam3TrackerProcessor, model_id, runtime)
    return PromptableSegmenter(model, processor, runtime, model_id)


def load(model_id: str, runtime: Runtime) -> Sam3TextSegmenter:
    """The SAM 3 text model (`Sam3Model` + `Sam3Processor`)."""
    from transformers import Sam3Model, Sam3Processor

    model, processor = load_pretrained(Sam3Model, Sam3Processor, model_id, runtime)
    return Sam3TextSegmenter(model, processor, runtime, model_id)


def to_detections(phrase: str, instances: Sequence[Instance], width: int, height: int) -> list[Detection]:
    return [
        Detection(
            label=phrase,
            score=instance.score,
            box=normalise_box(instance.box, width, height),
            mask=instance.mask,
        )
        for instance in instances
    ]


class Sam3TextSegmenter:
    """Open-vocabulary instance segmentation: every instance of each phrase, with its box and mask."""

    def __init__(self, model: Any, processor: Any, runtime: Runtime, model_id: str) -> None:
        self.model = model
        self.processor = processor
        self.runtime = runtime
        self.model_id = model_id
        self.cache: EmbeddingCache[VisionFeatures] = EmbeddingCache(runtime.embedding_cache_size)

    def detect(
        self, image: RGBImage, phrases: Sequence[str], *, box_threshold: float, text_threshold: float
    ) -> list[Detection]:
        """Instances of every phrase scoring above `box_threshold`, best first.

        `text_threshold` is accepted for the TextDetector protocol but unused: SAM 3 scores each
        instance once (query score × presence score), with no separate per-token text score.
        """
        detections = [
            detection
            for phrase in phrases
            for detection in to_detections(
                phrase, self.instances(image, phrase, threshold=box_threshold), image.width, image.height
            )
        ]
        return sorted(detections, key=lambda detection: detection.score, reverse=True)

    def segment_text(self, image: RGBImage, text: str, *, threshold: float) -> list[SegmentMask]:
        """Masks of every instance of `text` scoring above `threshold`, best first."""
        instances = sorted(self.instances(image, text, threshold=threshold), key=lambda item: -item.score)
        return [SegmentMask(score=instance.score, mask=instance.mask) for instance in instances]

    def vision_features(self, image: RGBImage) -> VisionFeatures:
        return self.cache.get_or_compute(image.key, lambda: self._compute_vision_features(image))

    def instances(self, image: RGBImage, phrase: str, *, threshold: float) -> list[Instance]:
        """One forward for `phrase` over the image's cached vision features."""
        features = self.vision_features(image)
        text_inputs = self.processor(text=phrase, return_tensors="pt")
        with torch.inference_mode():
            outputs = self.model(
                vision_embeds=features.embeds,
                input_ids=text_inputs["input_ids"].to(self.runtime.device),
                attention_mask=text_inputs["attention_mask"].to(self.runtime.device),
            )
        return select_instances(outputs, threshold, features.original_size)

    def _compute_vision_features(self, image: RGBImage) -> VisionFeatures:
        inputs = self.processor(images=image.pil, return_tensors="pt")
        pixel_values = inputs["pixel_values"].to(self.runtime.device, self.runtime.dtype)
        with torch.inference_mode():
            embeds = self.model.get_vision_features(pixel_values=pixel_values)
        height, width = (int(size) for size in inputs["original_sizes"][0])
        return VisionFeatures(embeds=embeds, original_size=(height, width))


def select_instances(outputs: Any, threshold: float, size: tuple[int, int]) -> list[Instance]:
    """Instances scoring above `threshold`, with boolean masks of the original (height, width).

    The same arithmetic as `Sam3Processor.post_process_instance_segmentation` (score = sigmoid(logit) ×
    sigmoid(presence); masks: sigmoid, bilinear resize, > 0.5), but it filters before resizing and
    resizes a few masks at a time straight to bool: the processor upsamples every kept mask at once as
    float32 and keeps it as int64 — about 19 GB for 200 queries on a 12-megapixel photo.
    """
    height, width = size
    scores = outputs.pred_logits[0].float().sigmoid()
    if outputs.get("presence_logits") is not None:
        scores = scores * outputs.presence_logits[0].float().sigmoid()
    keep = torch.nonzero(scores > threshold).flatten()
    scale = torch.tensor([width, height, width, height], dtype=torch.float32, device=scores.device)
    boxes = (outputs.pred_boxes[0, keep].float() * scale).cpu().tolist()
    masks = []
    for start in range(0, len(keep), MASK_CHUNK):
        probabilities = outputs.pred_masks[0, keep[start : start + MASK_CHUNK]].float().sigmoid()
        resized = torch.nn.functional.interpolate(
            probabilities.unsqueeze(0), size=(height, width), mode="bilinear", align_corners=False
        ).squeeze(0)
        masks.extend((resized > MASK_THRESHOLD).cpu().numpy())
    return [
        Instance(score=score, box=tuple(box), mask=mask)
        for score, box, mask in zip(scores[keep].cpu().tolist(), boxes, masks, strict=True)
    ]
