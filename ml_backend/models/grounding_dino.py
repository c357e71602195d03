"""Grounding DINO: boxes for a list of phrases.

The post-processing is done here from the raw logits rather than with the processor's
`post_process_grounded_object_detection`, because that decodes every token above the text threshold
into one string, which merges phrases (e.g. "shelf. product"). Here each box gets exactly one of the
caller's phrases: the one whose tokens it matches best.
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Sequence
from typing import TYPE_CHECKING, Any

from ml_backend.models.base import Detection, Runtime, has_area, normalise_box

if TYPE_CHECKING:
    import torch

    from ml_backend.images import RGBImage

log = logging.getLogger(__name__)

PHRASE_SEPARATOR = "."


class GroundingDinoDetector:
    """Implements `TextDetector`.

    `batch_same_size` (default: on CUDA only) runs same-size images of `detect_batch` in one forward;
    on CPU batching was measured slower per image, and images of different sizes are never batched
    because padding changes the results.
    """

    def __init__(
        self,
        model: Any,
        processor: Any,
        runtime: Runtime,
        model_id: str,
        *,
        batch_same_size: bool | None = None,
    ) -> None:
        self.model = model
        self.processor = processor
        self.runtime = runtime
        self.model_id = model_id
        self.batch_same_size = runtime.device.type == "cuda" if batch_same_size is None else batch_same_size
        self.delimiter_ids = delimiter_token_ids(processor.tokenizer)

    def detect(
        self, image: RGBImage, phrases: Sequence[str], *, box_threshold: float, text_threshold: float
    ) -> list[Detection]:
        return self.detect_batch(
            [image], phrases, box_threshold=box_threshold, text_threshold=text_threshold
        )[0]

    def detect_batch(
        self,
        images: Sequence[RGBImage],
        phrases: Sequence[str],
        *,
        box_threshold: float,
        text_threshold: float,
    ) -> list[list[Detection]]:
        """The same phrases on every image; one list of detections per image, in input order."""
        kept_phrases = self.promptable_phrases(phrases)
        results: list[list[Detection]] = [[] for _ in images]
        if not kept_phrases:
            return results
        prompt = build_prompt(kept_phrases)
        sizes = [(image.width, image.height) for image in images]
        for group in batch_groups(sizes, batched=self.batch_same_size):
            outputs, input_ids = self._forward([images[index] for index in group], prompt)
            for row, index in enumerate(group):
                results[index] = select_detections(
                    outputs.logits[row],
                    outputs.pred_boxes[row],
                    input_ids[row],
                    kept_phrases,
                    self.delimiter_ids,
                    box_threshold=box_threshold,
                    text_threshold=text_threshold,
                )
        return results

    def promptable_phrases(self, phrases: Sequence[str]) -> list[str]:
        """The phrases that give at least one token, so each phrase owns exactly one span of the prompt."""
        tokenizer = self.processor.tokenizer
        return [phrase for phrase in phrases if tokenizer.tokenize(prompt_text(phrase))]

    def _forward(self, images: Sequence[RGBImage], prompt: str) -> tuple[Any, torch.Tensor]:
        import torch

        inputs = self.processor(
            images=[image.pil for image in images], text=[prompt] * len(images), return_tensors="pt"
        )
        # BatchFeature.to casts only floating tensors: pixel_values must match a bf16/fp16 model.
        inputs = inputs.to(self.runtime.device, self.model.dtype)
        with torch.inference_mode():
            outputs = self.model(**inputs)
        return outputs, inputs["input_ids"]


def load(model_id: str, runtime: Runtime) -> GroundingDinoDetector:
    from transformers import AutoModelForZeroShotObjectDetection, AutoProcessor

    processor = AutoProcessor.from_pretrained(model_id, token=runtime.hf_token)
    load_kwargs = {**runtime.load_kwargs(), "dtype": weights_dtype(runtime)}
    model = AutoModelForZeroShotObjectDetection.from_pretrained(model_id, **load_kwargs)
    model.to(runtime.device).eval()
    return GroundingDinoDetector(model, processor, runtime, model_id)


def weights_dtype(runtime: Runtime) -> torch.dtype:
    """The runtime dtype, except float32 for half precision on CPU.

    The deformable attention samples features with `grid_sample`, whose CPU kernel returns NaN for
    non-contiguous bf16/fp16 input (torch 2.14.1), so every score would be NaN and nothing detected.
    """
    import torch

    if runtime.device.type == "cpu" and runtime.dtype in (torch.bfloat16, torch.float16):
        log.warning("Grounding DINO runs in float32 on CPU: half precision gives NaN there")
        return torch.float32
    return runtime.dtype


# ---- prompt ----


def prompt_text(phrase: str) -> str:
    """A phrase as the model reads it: lower case, and without the separator that would split it in two."""
    return " ".join(phrase.replace(PHRASE_SEPARATOR, " ").lower().split())


def build_prompt(phrases: Sequence[str]) -> str:
    """["Shelf", "price tag"] → "shelf . price tag ." """
    return "".join(f"{prompt_text(phrase)} {PHRASE_SEPARATOR} " for phrase in phrases).strip()


def delimiter_token_ids(tokenizer: Any) -> frozenset[int]:
    """Token ids that bound phrases in the prompt: [CLS], [SEP], padding and the "." separator."""
    candidates = (
        tokenizer.cls_token_id,
        tokenizer.sep_token_id,
        tokenizer.pad_token_id,
        tokenizer.convert_tokens_to_ids(PHRASE_SEPARATOR),
    )
    return frozenset(token_id for token_id in candidates if token_id is not None)


# ---- batching ----


def batch_groups(sizes: Sequence[tuple[int, int]], *, batched: bool) -> list[list[int]]:
    """Indices of the images to run together: equal sizes share a forward when `batched`, else one each."""
    if not batched:
        return [[index] for index in range(len(sizes))]
    groups: dict[tuple[int, int], list[int]] = {}
    for index, size in enumerate(sizes):
        groups.setdefault(size, []).append(index)
    return list(groups.values())


# ---- post-processing ----


def phrase_spans(input_ids: Sequence[int], delimiter_ids: Collection[int]) -> list[range]:
    """Token positions of each phrase: the runs of tokens between delimiters, in prompt order."""
    spans: list[range] = []
    start: int | None = None
    for position, token_id in enumerate(input_ids):
        if token_id in delimiter_ids:
            if start is not None:
                spans.append(range(start, position))
            start = None
        elif start is None:
            start = position
    if start is not None:
        spans.append(range(start, len(input_ids)))
    return spans


def select_detections(
    logits: torch.Tensor,
    pred_boxes: torch.Tensor,
    input_ids: torch.Tensor,
    phrases: Sequence[str],
    delimiter_ids: Collection[int],
    *,
    box_threshold: float,
    text_threshold: float,
) -> list[Detection]:
    """One image's raw outputs → detections, best first.

    logits: (queries, max_text_len) before the sigmoid; pred_boxes: (queries, 4) normalised cxcywh;
    input_ids: (prompt_length,) of the prompt built from `phrases`.
    A query is kept when its best token probability is above `box_threshold` (that is its score) and
    the best phrase's best token probability is at least `text_threshold`. Boxes are clamped to the
    image; a box with no area left is dropped.
    """
    import torch

    probabilities = logits.detach().float().cpu().sigmoid()
    text_length = probabilities.shape[-1]
    # Text beyond the model's max_text_len is truncated away, and so are the phrases there.
    spans = [
        range(span.start, min(span.stop, text_length))
        for span in phrase_spans(input_ids.tolist(), delimiter_ids)
        if span.start < text_length
    ]
    labelled = list(zip(phrases, spans, strict=False))
    if not labelled:
        return []
    phrase_probabilities = torch.stack(
        [probabilities[:, span.start : span.stop].max(dim=-1).values for _, span in labelled], dim=-1
    )
    best_phrase_probability, best_phrase = phrase_probabilities.max(dim=-1)
    scores = probabilities.max(dim=-1).values
    keep = (scores > box_threshold) & (best_phrase_probability >= text_threshold)
    boxes = cxcywh_to_xyxy(pred_boxes.detach().float().cpu())
    detections = []
    for query in keep.nonzero().flatten().tolist():
        box = normalise_box(boxes[query].tolist(), 1, 1)
        if has_area(box):
            label = labelled[int(best_phrase[query])][0]
            detections.append(Detection(label=label, score=float(scores[query]), box=box))
    return sorted(detections, key=lambda detection: detection.score, reverse=True)


def cxcywh_to_xyxy(boxes: torch.Tensor) -> torch.Tensor:
    import torch

    centre_x, centre_y, width, height = boxes.unbind(-1)
    return torch.stack(
        [centre_x - width / 2, centre_y - height / 2, centre_x + width / 2, centre_y + height / 2], dim=-1
    )
