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
MASK_THRESHOLD = 0.0  # on logits, as `post_process_masks` does
MASK_CHUNK = 8  # masks upsampled to full size at a time


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


def best_candidates(scores: np.ndarray, keep: int) -> np.ndarray:
    """Indices of the `keep` best of one object's candidate masks, highest predicted IoU first."""
    return np.argsort(-scores, kind="stable")[:keep]


@dataclass(frozen=True)
class Preprocessing:
    """The image transform the model was trained with: float [0, 1], bilinear resize, normalise."""

    height: int
    width: int
    mean: tuple[float, ...]
    std: tuple[float, ...]

    @classmethod
    def of(cls, processor: Any) -> Preprocessing:
        """Input size and normalisation from the loaded processor's config (so any checkpoint fits)."""
        image_processor = processor.image_processor
        size = image_processor.size
        height, width = (
            (size["height"], size["width"]) if isinstance(size, dict) else (size.height, size.width)
        )
        return cls(
            int(height), int(width), tuple(image_processor.image_mean), tuple(image_processor.image_std)
        )


def pixel_values(image: RGBImage, preprocessing: Preprocessing, device: torch.device) -> torch.Tensor:
    """(1, 3, height, width) float32 model input, computed as Meta's `SAM2Transforms` does.

    `ToTensor` (÷ 255) first, then `Resize` on the float tensor (bilinear, antialiased: torchvision's
    default), then `Normalize`. transformers' image processor resizes the 8-bit image and rescales
    after, which moves pixels by up to one grey level and the masks with them. The 8-bit image
    travels to the device, the rest runs there.
    """
    pixels = torch.from_numpy(np.array(image.pil, dtype=np.uint8)).to(device)
    scaled = pixels.permute(2, 0, 1).unsqueeze(0).float().div(255)
    resized = torch.nn.functional.interpolate(
        scaled,
        size=(preprocessing.height, preprocessing.width),
        mode="bilinear",
        align_corners=False,
        antialias=True,
    )
    mean = torch.tensor(preprocessing.mean, dtype=resized.dtype, device=device).view(1, -1, 1, 1)
    std = torch.tensor(preprocessing.std, dtype=resized.dtype, device=device).view(1, -1, 1, 1)
    return resized.sub_(mean).div_(std)


def freeze_positional_embeddings(model: Any) -> None:
    """Compute the image-wide positional encoding once instead of in every decoder call.

    transformers' forward rebuilds it from the weights on each click (a 64x64 grid through random
    Fourier features: about a fifth of a cached click on a CPU); it depends on nothing but the
    weights, so the model keeps the result. Call after the model reached its device.
    """
    compute = getattr(model, "get_image_wide_positional_embeddings", None)
    if compute is None:
        return
    with torch.no_grad():
        constant = compute()
    model.get_image_wide_positional_embeddings = lambda: constant


def upsample_masks(logits: torch.Tensor, size: tuple[int, int]) -> np.ndarray:
    """Low-resolution mask logits (n, h, w) → boolean masks (n, H, W) of the original image size.

    The arithmetic of the processor's `post_process_masks` (float32 bilinear straight to the original
    size, logit > 0), a few masks at a time, on the logits' device; only the booleans come back.
    """
    parts = []
    for start in range(0, logits.shape[0], MASK_CHUNK):
        chunk = logits[start : start + MASK_CHUNK].float().unsqueeze(0)
        resized = torch.nn.functional.interpolate(chunk, size=size, mode="bilinear", align_corners=False)
        parts.append((resized[0] > MASK_THRESHOLD).cpu().numpy())
    if len(parts) == 1:
        return parts[0]
    return np.concatenate(parts) if parts else np.zeros((0, *size), dtype=bool)


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
        self.preprocessing = Preprocessing.of(processor)
        freeze_positional_embeddings(model)
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
        The candidates are chosen on the predicted IoU first; only those returned are upsampled.
        """
        ambiguous = len(prompt.points) <= 1 and prompt.box is None
        logits, scores, size = self._predict(
            image, self.prompt_inputs(image, prompt), multimask_output=multimask or ambiguous
        )
        chosen = best_candidates(scores[0], keep=3 if multimask else 1)
        masks = upsample_masks(logits[0, chosen.tolist()], size)
        return [
            SegmentMask(score=float(scores[0, index]), mask=mask)
            for index, mask in zip(chosen, masks, strict=True)
        ]

    def segment_boxes(self, image: RGBImage, boxes: Sequence[BoxXYXY]) -> list[SegmentMask]:
        """One mask per box, in the order given, from a single model call (grounded SAM)."""
        if not boxes:
            return []
        logits, scores, size = self._predict(image, self.box_inputs(image, boxes), multimask_output=False)
        masks = upsample_masks(logits[:, 0], size)
        return [SegmentMask(score=float(scores[index, 0]), mask=masks[index]) for index in range(len(boxes))]

    def _compute_embedding(self, image: RGBImage) -> ImageEmbedding:
        inputs = pixel_values(image, self.preprocessing, self.runtime.device).to(self.runtime.dtype)
        with torch.inference_mode():
            embeddings = self.model.get_image_embeddings(inputs)
        return ImageEmbedding(embeddings=embeddings, original_size=(image.height, image.width))

    def _processor_prompts(self, image: RGBImage, **prompts: Any) -> dict[str, torch.Tensor]:
        encoded = self.processor(
            images=None, original_sizes=[[image.height, image.width]], return_tensors="pt", **prompts
        )
        return {name: encoded[name] for name in PROMPT_TENSORS if name in encoded}

    def _predict(
        self, image: RGBImage, prompts: dict[str, torch.Tensor], *, multimask_output: bool
    ) -> tuple[torch.Tensor, np.ndarray, tuple[int, int]]:
        """Low-resolution mask logits (objects, candidates, h, w) on the model's device, their predicted
        IoU (objects, candidates) and the original (height, width) to upsample to."""
        embedding = self.embed(image)
        on_device = {name: tensor.to(self.runtime.device) for name, tensor in prompts.items()}
        with torch.inference_mode():
            outputs = self.model(
                image_embeddings=embedding.embeddings, multimask_output=multimask_output, **on_device
            )
        return outputs.pred_masks[0], outputs.iou_scores[0].float().cpu().numpy(), embedding.original_size


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
