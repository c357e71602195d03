"""SAM 2.1 adapter on the tiny random model, loaded by its production hub id through `sam2.load`."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ml_backend.images import RGBImage
from ml_backend.models import sam2
from ml_backend.models.base import Runtime, SegmentMask, SegmentPrompt
from ml_backend.models.sam2 import (
    Preprocessing,
    PromptableSegmenter,
    best_candidates,
    pixel_values,
    to_pixel_prompt,
)

CPU = Runtime(torch.device("cpu"), torch.float32)


def random_image(width: int, height: int, seed: int) -> RGBImage:
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    return RGBImage(Image.fromarray(pixels, "RGB"), key=hashlib.sha256(pixels.tobytes()).hexdigest())


@pytest.fixture(scope="module")
def segmenter(tiny_hf_cache: Path, tiny_hub_ids: dict[str, str]) -> PromptableSegmenter:
    return sam2.load(tiny_hub_ids["sam2"], CPU)


@pytest.fixture(scope="module")
def image() -> RGBImage:
    return random_image(640, 480, seed=0)


@pytest.fixture
def embedding_calls(segmenter: PromptableSegmenter, monkeypatch: pytest.MonkeyPatch) -> Iterator[list[int]]:
    """Counts `get_image_embeddings` calls (one entry per call) on an emptied cache."""
    calls: list[int] = []
    original: Callable = segmenter.model.get_image_embeddings

    def counting(pixel_values: torch.Tensor) -> list[torch.Tensor]:
        calls.append(1)
        return original(pixel_values)

    segmenter.cache.clear()
    monkeypatch.setattr(segmenter.model, "get_image_embeddings", counting)
    yield calls
    segmenter.cache.clear()


def assert_masks(masks: list[SegmentMask], count: int, image: RGBImage) -> None:
    assert len(masks) == count
    for result in masks:
        assert result.mask.shape == (image.height, image.width)
        assert result.mask.dtype == np.bool_
        assert 0.0 <= result.score <= 1.0


def test_loads_sam2_model(segmenter: PromptableSegmenter, tiny_hub_ids: dict[str, str]) -> None:
    assert type(segmenter.model).__name__ == "Sam2Model"
    assert segmenter.model_id == tiny_hub_ids["sam2"]
    assert not segmenter.model.training


def test_single_point_gives_one_original_size_mask(segmenter: PromptableSegmenter, image: RGBImage) -> None:
    masks = segmenter.segment(image, SegmentPrompt(points=[(0.5, 0.5)], labels=[1]), multimask=False)
    assert_masks(masks, 1, image)


def test_multimask_gives_three_masks_best_first(segmenter: PromptableSegmenter, image: RGBImage) -> None:
    prompt = SegmentPrompt(points=[(0.5, 0.5)], labels=[1])
    masks = segmenter.segment(image, prompt, multimask=True)
    assert_masks(masks, 3, image)
    scores = [result.score for result in masks]
    assert scores == sorted(scores, reverse=True)
    best = segmenter.segment(image, prompt, multimask=False)
    assert best[0].score == scores[0]
    np.testing.assert_array_equal(best[0].mask, masks[0].mask)


def test_point_reaches_processor_at_the_right_pixel(segmenter: PromptableSegmenter, image: RGBImage) -> None:
    prompt = SegmentPrompt(points=[(0.25, 0.75)], labels=[1])
    assert to_pixel_prompt(prompt, image.width, image.height).points == [[160.0, 360.0]]
    inputs = segmenter.prompt_inputs(image, prompt)
    assert inputs["input_points"].shape == (1, 1, 1, 2)
    expected = torch.tensor([160 * 1024 / 640, 360 * 1024 / 480])
    torch.testing.assert_close(inputs["input_points"][0, 0, 0], expected)
    assert inputs["input_labels"].tolist() == [[[1]]]
    assert "input_boxes" not in inputs


def test_negative_points_and_box_form_one_object(segmenter: PromptableSegmenter, image: RGBImage) -> None:
    prompt = SegmentPrompt(points=[(0.3, 0.3), (0.6, 0.6)], labels=[1, 0], box=(0.25, 0.5, 0.75, 1.0))
    inputs = segmenter.prompt_inputs(image, prompt)
    assert inputs["input_points"].shape == (1, 1, 2, 2)
    assert inputs["input_labels"].tolist() == [[[1, 0]]]
    torch.testing.assert_close(inputs["input_boxes"], torch.tensor([[[256.0, 512.0, 768.0, 1024.0]]]))
    assert_masks(segmenter.segment(image, prompt, multimask=False), 1, image)


def test_unlabelled_points_are_positive_and_bad_prompts_are_refused() -> None:
    assert to_pixel_prompt(SegmentPrompt(points=[(0.1, 0.2), (0.3, 0.4)]), 10, 10).labels == [1, 1]
    with pytest.raises(ValueError, match="at least one point or a box"):
        to_pixel_prompt(SegmentPrompt(), 10, 10)
    with pytest.raises(ValueError, match="1 labels for 2 points"):
        to_pixel_prompt(SegmentPrompt(points=[(0.1, 0.2), (0.3, 0.4)], labels=[1]), 10, 10)


def test_best_candidates_orders_by_predicted_iou() -> None:
    assert best_candidates(np.array([0.2, 0.9, 0.5]), keep=3).tolist() == [1, 2, 0]
    assert best_candidates(np.array([0.2, 0.9, 0.5]), keep=1).tolist() == [1]
    assert best_candidates(np.array([0.5, 0.5, 0.1]), keep=3).tolist() == [0, 1, 2]  # ties keep model order


def test_segment_boxes_gives_one_mask_per_box_in_order(
    segmenter: PromptableSegmenter, image: RGBImage
) -> None:
    boxes = [(0.0, 0.0, 0.4, 0.4), (0.3, 0.2, 0.9, 0.7), (0.1, 0.5, 0.6, 1.0)]
    inputs = segmenter.box_inputs(image, boxes)
    assert inputs["input_boxes"].shape == (1, 3, 4)
    masks = segmenter.segment_boxes(image, boxes)
    assert_masks(masks, 3, image)
    # Each box's mask equals the one it gets alone, so the batch kept the order.
    for box, batched in zip(boxes, masks, strict=True):
        alone = segmenter.segment_boxes(image, [box])[0]
        assert alone.score == pytest.approx(batched.score, abs=1e-5)
        assert (alone.mask != batched.mask).mean() < 1e-3
    assert segmenter.segment_boxes(image, []) == []


def test_same_image_reuses_its_embedding(
    segmenter: PromptableSegmenter, image: RGBImage, embedding_calls: list[int]
) -> None:
    segmenter.segment(image, SegmentPrompt(points=[(0.5, 0.5)], labels=[1]), multimask=False)
    segmenter.segment(image, SegmentPrompt(points=[(0.2, 0.8)], labels=[1]), multimask=True)
    segmenter.segment_boxes(image, [(0.1, 0.1, 0.5, 0.5)])
    assert len(embedding_calls) == 1
    other = random_image(320, 240, seed=1)
    assert_masks(segmenter.segment(other, SegmentPrompt(box=(0.1, 0.1, 0.9, 0.9)), multimask=False), 1, other)
    assert len(embedding_calls) == 2


def test_cache_evicts_the_least_recently_used_image(segmenter: PromptableSegmenter) -> None:
    small = PromptableSegmenter(
        segmenter.model, segmenter.processor, Runtime(CPU.device, CPU.dtype, embedding_cache_size=2), "small"
    )
    first, second, third = (random_image(64, 48, seed=seed) for seed in (10, 11, 12))
    small.embed(first)
    small.embed(second)
    small.embed(first)  # now `second` is the least recently used
    small.embed(third)
    assert len(small.cache) == 2
    assert (small.cache.hits, small.cache.misses) == (1, 3)
    small.embed(first)
    assert small.cache.hits == 2
    small.embed(second)
    assert small.cache.misses == 4


def test_concurrent_requests_on_different_images_do_not_mix(segmenter: PromptableSegmenter) -> None:
    images = [random_image(320, 240, seed=20), random_image(240, 320, seed=21)]
    prompt = SegmentPrompt(points=[(0.4, 0.6)], labels=[1])

    def run(image: RGBImage) -> SegmentMask:
        return segmenter.segment(image, prompt, multimask=False)[0]

    segmenter.cache.clear()
    sequential = [run(image) for image in images]
    assert sequential[0].mask.shape != sequential[1].mask.shape
    segmenter.cache.clear()
    with ThreadPoolExecutor(4) as pool:
        concurrent = list(pool.map(run, images * 2))
    for index, result in enumerate(concurrent):
        expected = sequential[index % 2]
        assert result.score == pytest.approx(expected.score, abs=1e-6)
        np.testing.assert_array_equal(result.mask, expected.mask)


@pytest.mark.parametrize(
    ("prompt", "expected"),
    [
        (SegmentPrompt(points=[(0.5, 0.5)], labels=[1]), True),
        (SegmentPrompt(points=[(0.4, 0.5), (0.7, 0.5)], labels=[1, 0]), False),
        (SegmentPrompt(box=(0.1, 0.1, 0.6, 0.6)), False),
    ],
)
def test_only_an_ambiguous_single_click_asks_for_three_candidates(
    segmenter: PromptableSegmenter,
    image: RGBImage,
    monkeypatch: pytest.MonkeyPatch,
    prompt: SegmentPrompt,
    expected: bool,
) -> None:
    requested: list[bool] = []
    predict = segmenter._predict

    def recording(*args, multimask_output: bool):
        requested.append(multimask_output)
        return predict(*args, multimask_output=multimask_output)

    monkeypatch.setattr(segmenter, "_predict", recording)
    assert len(segmenter.segment(image, prompt, multimask=False)) == 1
    assert requested == [expected]


# ---- parity with Meta's SAM 2.1 predictor (preprocessing) and with the processor (post-processing) ----

OFFICIAL_SAM2_MEAN = (0.485, 0.456, 0.406)
OFFICIAL_SAM2_STD = (0.229, 0.224, 0.225)


def official_transform(image: RGBImage, resolution: int, mean, std) -> torch.Tensor:
    """`SAM2Transforms` as Meta's sam2 package writes it: ToTensor, Resize((r, r)), Normalize."""
    from torchvision.transforms import Normalize, Resize, ToTensor

    tensor = ToTensor()(image.pil)
    return Normalize(mean, std)(Resize((resolution, resolution))(tensor)).unsqueeze(0)


def reference_predict(
    segmenter: PromptableSegmenter,
    pixels: torch.Tensor,
    image: RGBImage,
    prompts: dict[str, torch.Tensor],
    multimask_output: bool,
) -> tuple[np.ndarray, np.ndarray]:
    """transformers' documented call sequence, fed `pixels`: masks (objects, candidates, H, W) and IoU."""
    with torch.inference_mode():
        embeddings = segmenter.model.get_image_embeddings(pixels)
        outputs = segmenter.model(image_embeddings=embeddings, multimask_output=multimask_output, **prompts)
        (masks,) = segmenter.processor.post_process_masks(
            outputs.pred_masks.float(), [(image.height, image.width)]
        )
    return masks.numpy(), outputs.iou_scores[0].numpy()


@pytest.mark.parametrize(("width", "height"), [(640, 480), (1500, 1100), (300, 700)])
def test_pixel_values_equal_the_official_transform(
    segmenter: PromptableSegmenter, width: int, height: int
) -> None:
    image = random_image(width, height, seed=width)
    preprocessing = Preprocessing.of(segmenter.processor)
    assert (preprocessing.height, preprocessing.width) == (1024, 1024)
    ours = pixel_values(image, preprocessing, torch.device("cpu"))
    official = official_transform(image, 1024, OFFICIAL_SAM2_MEAN, OFFICIAL_SAM2_STD)
    assert ours.shape == official.shape == (1, 3, 1024, 1024)
    torch.testing.assert_close(ours, official, rtol=0, atol=1e-6)
    # transformers' processor (8-bit resize) is what this replaces: it differs visibly.
    processor_pixels = segmenter.processor(images=image.pil, return_tensors="pt")["pixel_values"]
    assert (processor_pixels - official).abs().max() > 1e-3


def test_preprocessing_follows_the_processor_config(segmenter: PromptableSegmenter) -> None:
    from transformers import Sam2ImageProcessor, Sam2Processor

    processor = Sam2Processor(
        image_processor=Sam2ImageProcessor(
            size={"height": 512, "width": 512}, image_mean=[0.5] * 3, image_std=[0.25] * 3
        )
    )
    preprocessing = Preprocessing.of(processor)
    assert preprocessing == Preprocessing(512, 512, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    image = random_image(200, 100, seed=3)
    expected = official_transform(image, 512, (0.5,) * 3, (0.25,) * 3)
    torch.testing.assert_close(
        pixel_values(image, preprocessing, torch.device("cpu")), expected, rtol=0, atol=1e-6
    )


PARITY_PROMPTS = [
    SegmentPrompt(points=[(0.5, 0.5)], labels=[1]),
    SegmentPrompt(points=[(0.3, 0.3), (0.6, 0.7)], labels=[1, 0]),
    SegmentPrompt(box=(0.2, 0.1, 0.8, 0.9)),
    SegmentPrompt(points=[(0.4, 0.4)], labels=[1], box=(0.1, 0.1, 0.7, 0.7)),
]


@pytest.mark.parametrize("prompt", PARITY_PROMPTS)
@pytest.mark.parametrize("multimask", [False, True])
def test_masks_and_scores_equal_the_reference_pipeline(
    segmenter: PromptableSegmenter, prompt: SegmentPrompt, multimask: bool
) -> None:
    """Fed the official pixels, the processor's own post-processing (every candidate upsampled, then
    one kept) gives exactly the masks and scores of the adapter (only the chosen ones upsampled)."""
    image = random_image(333, 250, seed=7)
    ambiguous = len(prompt.points) <= 1 and prompt.box is None
    pixels = official_transform(image, 1024, OFFICIAL_SAM2_MEAN, OFFICIAL_SAM2_STD)
    masks, scores = reference_predict(
        segmenter, pixels, image, segmenter.prompt_inputs(image, prompt), multimask or ambiguous
    )
    order = np.argsort(-scores[0], kind="stable")[: 3 if multimask else 1]
    results = segmenter.segment(image, prompt, multimask=multimask)
    assert [result.score for result in results] == pytest.approx(scores[0, order].tolist(), abs=1e-6)
    for result, index in zip(results, order, strict=True):
        assert result.mask.dtype == np.bool_
        np.testing.assert_array_equal(result.mask, masks[0, index])


def test_box_masks_equal_the_reference_pipeline(segmenter: PromptableSegmenter) -> None:
    image = random_image(410, 300, seed=8)
    boxes = [(0.0, 0.0, 0.4, 0.4), (0.3, 0.2, 0.9, 0.7), (0.1, 0.5, 0.6, 1.0)] * 4  # more than one chunk
    pixels = official_transform(image, 1024, OFFICIAL_SAM2_MEAN, OFFICIAL_SAM2_STD)
    masks, scores = reference_predict(segmenter, pixels, image, segmenter.box_inputs(image, boxes), False)
    results = segmenter.segment_boxes(image, boxes)
    assert [result.score for result in results] == pytest.approx(scores[:, 0].tolist(), abs=1e-6)
    for index, result in enumerate(results):
        np.testing.assert_array_equal(result.mask, masks[index, 0])


def test_positional_embeddings_are_computed_once_and_equal_transformers(
    segmenter: PromptableSegmenter,
) -> None:
    model = segmenter.model
    frozen = model.get_image_wide_positional_embeddings()
    assert model.get_image_wide_positional_embeddings() is frozen  # no recomputation per click
    with torch.no_grad():
        fresh = type(model).get_image_wide_positional_embeddings(model)
    torch.testing.assert_close(frozen, fresh, rtol=0, atol=0)
