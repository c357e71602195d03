"""SAM 3 adapters on the tiny random model, loaded by the production hub id `facebook/sam3`."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from ml_backend.images import RGBImage
from ml_backend.models import sam3
from ml_backend.models.base import Runtime, SegmentPrompt
from ml_backend.models.sam2 import Preprocessing, PromptableSegmenter, pixel_values
from ml_backend.models.sam3 import Instance, Sam3TextSegmenter, to_detections

CPU = Runtime(torch.device("cpu"), torch.float32)
NUM_QUERIES = 20  # the tiny fixture's DETR decoder queries


def random_image(width: int, height: int, seed: int) -> RGBImage:
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    return RGBImage(Image.fromarray(pixels, "RGB"), key=hashlib.sha256(pixels.tobytes()).hexdigest())


@pytest.fixture(scope="module")
def image() -> RGBImage:
    return random_image(320, 240, seed=3)


@pytest.fixture(scope="module")
def tracker(tiny_hf_cache: Path, tiny_hub_ids: dict[str, str]) -> PromptableSegmenter:
    return sam3.load_tracker(tiny_hub_ids["sam3"], CPU)


@pytest.fixture(scope="module")
def text_segmenter(tiny_hf_cache: Path, tiny_hub_ids: dict[str, str]) -> Sam3TextSegmenter:
    return sam3.load(tiny_hub_ids["sam3"], CPU)


@pytest.fixture
def vision_calls(text_segmenter: Sam3TextSegmenter, monkeypatch: pytest.MonkeyPatch) -> Iterator[list[int]]:
    """Counts `get_vision_features` calls (one entry per call) on an emptied cache."""
    calls: list[int] = []
    original = text_segmenter.model.get_vision_features

    def counting(**kwargs: Any) -> Any:
        calls.append(1)
        return original(**kwargs)

    text_segmenter.cache.clear()
    monkeypatch.setattr(text_segmenter.model, "get_vision_features", counting)
    yield calls
    text_segmenter.cache.clear()


def test_tracker_is_loaded_by_class_name(tracker: PromptableSegmenter) -> None:
    from transformers import Sam3TrackerModel, Sam3VideoModel

    assert isinstance(tracker.model, Sam3TrackerModel)
    assert not isinstance(tracker.model, Sam3VideoModel)
    assert type(tracker.processor).__name__ == "Sam3TrackerProcessor"


def test_tracker_segments_a_point_and_a_box(tracker: PromptableSegmenter, image: RGBImage) -> None:
    point = tracker.segment(image, SegmentPrompt(points=[(0.25, 0.75)], labels=[1]), multimask=True)
    box = tracker.segment(image, SegmentPrompt(box=(0.1, 0.2, 0.6, 0.9)), multimask=False)
    assert len(point) == 3
    assert len(box) == 1
    for result in (*point, *box):
        assert result.mask.shape == (image.height, image.width)
        assert result.mask.dtype == np.bool_
    assert [result.score for result in point] == sorted((result.score for result in point), reverse=True)
    # The tracker's processor works in its own 1008² input space.
    inputs = tracker.prompt_inputs(image, SegmentPrompt(points=[(0.25, 0.75)], labels=[1]))
    torch.testing.assert_close(inputs["input_points"][0, 0, 0], torch.tensor([0.25 * 1008, 0.75 * 1008]))


def test_tracker_preprocesses_as_the_official_sam3_predictor(tracker: PromptableSegmenter) -> None:
    """Meta's SAM 3 interactive predictor uses SAM 2's transform at 1008² with mean = std = 0.5: float
    [0, 1] first, then bilinear antialiased resize, then normalise (sam3/model/utils/sam1_utils.py)."""
    from torchvision.transforms import Normalize, Resize, ToTensor

    image = random_image(500, 375, seed=9)
    official = Normalize((0.5,) * 3, (0.5,) * 3)(Resize((1008, 1008))(ToTensor()(image.pil))).unsqueeze(0)
    assert tracker.preprocessing == Preprocessing(1008, 1008, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
    torch.testing.assert_close(
        pixel_values(image, tracker.preprocessing, torch.device("cpu")), official, rtol=0, atol=1e-6
    )
    # Fed those pixels, transformers' call sequence and post-processing give the tracker's masks.
    prompt = SegmentPrompt(points=[(0.4, 0.6)], labels=[1])
    with torch.inference_mode():
        embeddings = tracker.model.get_image_embeddings(official)
        outputs = tracker.model(
            image_embeddings=embeddings, multimask_output=True, **tracker.prompt_inputs(image, prompt)
        )
        (masks,) = tracker.processor.post_process_masks(
            outputs.pred_masks.float(), [(image.height, image.width)]
        )
    scores = outputs.iou_scores[0, 0].numpy()
    order = np.argsort(-scores, kind="stable")
    results = tracker.segment(image, prompt, multimask=True)
    assert [result.score for result in results] == pytest.approx(scores[order].tolist(), abs=1e-6)
    for result, index in zip(results, order, strict=True):
        np.testing.assert_array_equal(result.mask, masks[0, index].numpy())


def test_text_detection_labels_boxes_and_masks(
    text_segmenter: Sam3TextSegmenter, image: RGBImage, vision_calls: list[int]
) -> None:
    detections = text_segmenter.detect(image, ["cat", "dog"], box_threshold=0.0, text_threshold=0.25)
    assert len(detections) == 2 * NUM_QUERIES  # random scores (~0.25) all pass threshold 0
    assert {detection.label for detection in detections} == {"cat", "dog"}
    scores = [detection.score for detection in detections]
    assert scores == sorted(scores, reverse=True)
    for detection in detections:
        x1, y1, x2, y2 = detection.box
        assert 0.0 <= x1 <= x2 <= 1.0
        assert 0.0 <= y1 <= y2 <= 1.0
        assert 0.0 < detection.score < 1.0
        assert detection.mask is not None
        assert detection.mask.shape == (image.height, image.width)
        assert detection.mask.dtype == np.bool_
    assert len(vision_calls) == 1  # two phrases, one vision pass
    text_segmenter.detect(image, ["cat"], box_threshold=0.0, text_threshold=0.25)
    assert len(vision_calls) == 1


def test_nothing_above_threshold_gives_no_detections(
    text_segmenter: Sam3TextSegmenter, image: RGBImage
) -> None:
    assert text_segmenter.detect(image, ["cat"], box_threshold=1.0, text_threshold=0.25) == []
    assert text_segmenter.segment_text(image, "cat", threshold=1.0) == []


def test_segment_text_returns_masks_best_first(text_segmenter: Sam3TextSegmenter, image: RGBImage) -> None:
    masks = text_segmenter.segment_text(image, "red car", threshold=0.0)
    assert len(masks) == NUM_QUERIES
    assert [result.score for result in masks] == sorted((result.score for result in masks), reverse=True)
    assert all(result.mask.shape == (image.height, image.width) for result in masks)


def test_instances_become_normalised_clamped_detections() -> None:
    mask = np.zeros((100, 200), dtype=bool)
    instances = [
        Instance(score=0.9, box=(20.0, 10.0, 100.0, 50.0), mask=mask),
        Instance(score=0.4, box=(-15.0, 90.0, 250.0, 130.0), mask=mask),
    ]
    detections = to_detections("shelf", instances, width=200, height=100)
    assert [detection.label for detection in detections] == ["shelf", "shelf"]
    assert detections[0].box == pytest.approx((0.1, 0.1, 0.5, 0.5))
    assert detections[1].box == pytest.approx((0.0, 0.9, 1.0, 1.0))
    assert detections[0].mask is mask


def test_own_post_processing_equals_the_processor(text_segmenter: Sam3TextSegmenter, image: RGBImage) -> None:
    """select_instances is the processor's arithmetic, done in chunks: same scores, boxes and masks."""
    import torch

    from ml_backend.models.sam3 import MASK_CHUNK, select_instances

    features = text_segmenter.vision_features(image)
    text = text_segmenter.processor(text="cat", return_tensors="pt")
    with torch.inference_mode():
        outputs = text_segmenter.model(vision_embeds=features.embeds, **text)
    ours = select_instances(outputs, 0.0, features.original_size)
    theirs = text_segmenter.processor.post_process_instance_segmentation(
        outputs, threshold=0.0, mask_threshold=0.5, target_sizes=[features.original_size]
    )[0]
    assert len(ours) == len(theirs["scores"]) > MASK_CHUNK, "several chunks are exercised"
    assert [i.score for i in ours] == pytest.approx(theirs["scores"].tolist())
    assert np.allclose([i.box for i in ours], theirs["boxes"].numpy(), atol=1e-4)
    for instance, mask in zip(ours, theirs["masks"].bool().numpy(), strict=True):
        assert instance.mask.dtype == bool and np.array_equal(instance.mask, mask)
