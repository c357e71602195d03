"""Point and box prompts → masks, for SAM 2.1 (`Sam2Model`) and the SAM 3 tracker (`Sam3TrackerModel`).

Both models share one API: the image encoder runs once per image (`get_image_embeddings`, cached by
image content hash) and every click after that runs only the prompt encoder and mask decoder.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ml_backend.images import RGBImage
from ml_backend.models.base import (
    BoxXYXY,
    EmbeddingCache,
    Runtime,
    SegmentMask,
    SegmentPrompt,
    box_to_pixels,
    to_pixels,
)

PROMPT_TENSORS = ("input_points", "input_labels", "input_boxes")


@dataclass(frozen=True)
class ImageEmbedding:
    """The image encoder's output for one image and the (height, width) it was computed from."""

    embeddings: list[torch.Tensor]
    original_size: tuple[int, int]


@dataclass(frozen=True)
class PixelPrompt:
    """One object's prompt in original-image pixels: points with labels and/or a box."""

    points: list[list[float]] | None
    labels: list[int] | None
    box: list[float] | None


def to_pixel_prompt(prompt: SegmentPrompt, width: int, height: int) -> PixelPrompt:
    """Normalised prompt → pixel prompt; points without labels count as positive clicks."""
    if not prompt.points and prompt.box is None:
        raise ValueError("prompt: give at least one point or a box")
    if prompt.labels and len(prompt.labels) != len(prompt.points):
        raise ValueError(f"prompt: {len(prompt.labels)} labels for {len(prompt.points)} points")
    points = to_pixels(prompt.points, width, height) if prompt.points else None
    labels = [int(label) for label in prompt.labels] if prompt.labels else [1] * len(prompt.points)
    box = box_to_pixels(prompt.box, width, height) if prompt.box is not None else None
    return PixelPrompt(points=points, labels=labels if points else None, box=box)


def rank_masks(masks: np.ndarray, scores: np.ndarray, keep: int) -> list[SegmentMask]:
    """The `keep` best of one object's candidate masks (n, H, W), highest predicted IoU first."""
    order = np.argsort(-scores, kind="stable")[:keep]
    return [SegmentMask(score=float(scores[index]), mask=masks[index]) for index in order]


class PromptableSegmenter:
    """SAM-style segmenter: normalised points/boxes in, boolean masks of the original image size out.

    The model forward holds no state between calls, so concurrent requests share it without a lock;
    the embedding cache computes each image at most once even under concurrent requests.
    """

    def __init__(self, model: Any, processor: Any, runtime: Runtime, model_id: str) -> None:
        self.model = model
        self.processor = processor
        self.runtime = runtime
        self.model_id = model_id
        self.cache: EmbeddingCache[ImageEmbedding] = EmbeddingCache(runtime.embedding_cache_size)

    def embed(self, image: RGBImage) -> ImageEmbedding:
        return self.cache.get_or_compute(image.key, lambda: self._compute_embedding(image))

    def prompt_inputs(self, image: RGBImage, prompt: SegmentPrompt) -> dict[str, torch.Tensor]:
        """The processor's prompt tensors for one object, in the model's input space."""
        pixels = to_pixel_prompt(prompt, image.width, image.height)
        return self._processor_prompts(
            image,
            input_points=[[pixels.points]] if pixels.points else None,
            input_labels=[[pixels.labels]] if pixels.labels else None,
            input_boxes=[[pixels.box]] if pixels.box is not None else None,
        )

    def box_inputs(self, image: RGBImage, boxes: Sequence[BoxXYXY]) -> dict[str, torch.Tensor]:
        """The processor's prompt tensors for several boxes of one image, one object per box."""
        pixel_boxes = [box_to_pixels(box, image.width, image.height) for box in boxes]
        return self._processor_prompts(image, input_boxes=[pixel_boxes])

    def segment(self, image: RGBImage, prompt: SegmentPrompt, *, multimask: bool) -> list[SegmentMask]:
        """One object: its 3 candidate masks ranked by predicted IoU when `multimask`, else the best one.

        A single click is ambiguous (part or whole?), so SAM proposes three masks and the best-scored
        wins; several points or a box pin the object down, and SAM's single-mask output is meant for that.
        """
        ambiguous = len(prompt.points) <= 1 and prompt.box is None
        masks, scores = self._predict(
            image, self.prompt_inputs(image, prompt), multimask_output=multimask or ambiguous
        )
        return rank_masks(masks[0], scores[0], keep=3 if multimask else 1)

    def segment_boxes(self, image: RGBImage, boxes: Sequence[BoxXYXY]) -> list[SegmentMask]:
        """One mask per box, in the order given, from a single model call (grounded SAM)."""
        if not boxes:
            return []
        masks, scores = self._predict(image, self.box_inputs(image, boxes), multimask_output=False)
        return [
            SegmentMask(score=float(scores[index, 0]), mask=masks[index, 0]) for index in range(len(boxes))
        ]

    def _compute_embedding(self, image: RGBImage) -> ImageEmbedding:
        inputs = self.processor(images=image.pil, return_tensors="pt")
        pixel_values = inputs["pixel_values"].to(self.runtime.device, self.runtime.dtype)
        with torch.inference_mode():
            embeddings = self.model.get_image_embeddings(pixel_values)
        height, width = (int(size) for size in inputs["original_sizes"][0])
        return ImageEmbedding(embeddings=embeddings, original_size=(height, width))

    def _processor_prompts(self, image: RGBImage, **prompts: Any) -> dict[str, torch.Tensor]:
        encoded = self.processor(
            images=None, original_sizes=[[image.height, image.width]], return_tensors="pt", **prompts
        )
        return {name: encoded[name] for name in PROMPT_TENSORS if name in encoded}

    def _predict(
        self, image: RGBImage, prompts: dict[str, torch.Tensor], *, multimask_output: bool
    ) -> tuple[np.ndarray, np.ndarray]:
        """Masks (objects, candidates, H, W) bool and their predicted IoU (objects, candidates)."""
        embedding = self.embed(image)
        on_device = {name: tensor.to(self.runtime.device) for name, tensor in prompts.items()}
        with torch.inference_mode():
            outputs = self.model(
                image_embeddings=embedding.embeddings, multimask_output=multimask_output, **on_device
            )
            # Post-processing interpolates, which bf16 does poorly.
            logits = outputs.pred_masks.float()
            (masks,) = self.processor.post_process_masks(logits, [embedding.original_size])
        return masks.cpu().numpy(), outputs.iou_scores[0].float().cpu().numpy()


def load_pretrained(
    model_class: Any, processor_class: Any, model_id: str, runtime: Runtime
) -> tuple[Any, Any]:
    """Model (on the runtime's device and dtype, in eval mode) and processor of `model_id`."""
    processor = processor_class.from_pretrained(model_id, token=runtime.hf_token)
    model = model_class.from_pretrained(model_id, **runtime.load_kwargs())
    return model.to(runtime.device).eval(), processor


def load(model_id: str, runtime: Runtime) -> PromptableSegmenter:
    """SAM 2.1 from the hub (`Sam2Model` + `Sam2Processor`)."""
    from transformers import AutoModel, AutoProcessor

    model, processor = load_pretrained(AutoModel, AutoProcessor, model_id, runtime)
    return PromptableSegmenter(model, processor, runtime, model_id)
