"""Grounding DINO adapter: the tiny random model through the production loader, and the phrase mapping on
canned outputs."""

from __future__ import annotations

import io
from collections.abc import Sequence

import pytest
import torch
from PIL import Image

from ml_backend.images import RGBImage
from ml_backend.models.base import Detection, Runtime
from ml_backend.models.grounding_dino import (
    GroundingDinoDetector,
    batch_groups,
    build_prompt,
    delimiter_token_ids,
    load,
    phrase_spans,
    select_detections,
)
from tests.support import make_image

PHRASES = ["Shelf", "price tag"]
CLS, SEP, DOT, PAD = 101, 102, 1012, 0
SHELF, PRICE, TAG = 500, 501, 502
TEXT_LENGTH = 256


def rgb_image(width: int, height: int, key: str, mirrored: bool = False) -> RGBImage:
    pil = Image.open(io.BytesIO(make_image(width, height))).convert("RGB")
    return RGBImage(pil.transpose(Image.Transpose.FLIP_LEFT_RIGHT) if mirrored else pil, key)


@pytest.fixture(scope="module")
def detector(tiny_hub_ids: dict[str, str]) -> GroundingDinoDetector:
    return load(tiny_hub_ids["grounding_dino"], Runtime(torch.device("cpu"), torch.float32))


@pytest.fixture(scope="module")
def image() -> RGBImage:
    return rgb_image(640, 480, "gradient")


@pytest.fixture(scope="module")
def all_detections(detector: GroundingDinoDetector, image: RGBImage) -> list[Detection]:
    return detector.detect(image, PHRASES, box_threshold=0.0, text_threshold=0.0)


# ---- tiny model ----


def test_load_reads_the_hub_id_and_the_phrase_delimiters(detector: GroundingDinoDetector) -> None:
    assert detector.model_id == "IDEA-Research/grounding-dino-base"
    assert detector.delimiter_ids == {CLS, SEP, DOT, PAD}
    assert not detector.model.training
    assert detector.batch_same_size is False  # CPU


def test_detections_are_labelled_normalised_boxes_best_first(all_detections: list[Detection]) -> None:
    assert all_detections
    assert {detection.label for detection in all_detections} <= set(PHRASES)
    for detection in all_detections:
        x1, y1, x2, y2 = detection.box
        assert 0.0 <= x1 < x2 <= 1.0
        assert 0.0 <= y1 < y2 <= 1.0
        assert detection.mask is None
    scores = [detection.score for detection in all_detections]
    assert scores == sorted(scores, reverse=True)


def test_box_threshold_keeps_exactly_the_higher_scores(
    detector: GroundingDinoDetector, image: RGBImage, all_detections: list[Detection]
) -> None:
    threshold = all_detections[len(all_detections) // 2].score
    kept = detector.detect(image, PHRASES, box_threshold=threshold, text_threshold=0.0)
    assert kept
    assert all(detection.score > threshold for detection in kept)
    assert kept == [detection for detection in all_detections if detection.score > threshold]


def test_box_threshold_one_keeps_nothing(detector: GroundingDinoDetector, image: RGBImage) -> None:
    assert detector.detect(image, PHRASES, box_threshold=1.0, text_threshold=0.0) == []


def test_half_precision_on_cpu_loads_float32_weights(
    tiny_hub_ids: dict[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    half = load(tiny_hub_ids["grounding_dino"], Runtime(torch.device("cpu"), torch.bfloat16))
    assert half.model.dtype == torch.float32
    assert "float32 on CPU" in caplog.text


def test_phrases_without_tokens_are_left_out(detector: GroundingDinoDetector) -> None:
    assert detector.promptable_phrases(["  ", "Shelf", ".", "price tag"]) == ["Shelf", "price tag"]


def test_batched_forward_matches_single_images(
    detector: GroundingDinoDetector, image: RGBImage, all_detections: list[Detection]
) -> None:
    mirrored = rgb_image(640, 480, "mirrored", mirrored=True)
    batching = GroundingDinoDetector(
        detector.model, detector.processor, detector.runtime, detector.model_id, batch_same_size=True
    )
    batched = batching.detect_batch([image, mirrored], PHRASES, box_threshold=0.0, text_threshold=0.0)
    singles = [all_detections, detector.detect(mirrored, PHRASES, box_threshold=0.0, text_threshold=0.0)]
    for from_batch, single in zip(batched, singles, strict=True):
        assert [item.label for item in from_batch] == [item.label for item in single]
        assert torch.allclose(boxes_tensor(from_batch), boxes_tensor(single), atol=1e-4)
    assert not torch.allclose(boxes_tensor(batched[0]), boxes_tensor(batched[1]))  # rows not swapped


def boxes_tensor(detections: Sequence[Detection]) -> torch.Tensor:
    return torch.tensor([[*detection.box, detection.score] for detection in detections])


# ---- prompt, spans, grouping ----


def test_prompt_is_lower_case_and_dot_separated() -> None:
    assert build_prompt(["Shelf", "product", "Price Tag"]) == "shelf . product . price tag ."
    assert build_prompt(["a.b"]) == "a b ."


def test_phrase_spans_split_at_delimiters_only() -> None:
    ids = [CLS, SHELF, DOT, PRICE, 1029, TAG, DOT, SEP, PAD, PAD]  # 1029 is "?": it stays inside a phrase
    assert phrase_spans(ids, {CLS, SEP, DOT, PAD}) == [range(1, 2), range(3, 6)]


def test_delimiters_come_from_the_tokenizer() -> None:
    class Tokenizer:
        cls_token_id, sep_token_id, pad_token_id = 1, 2, None

        def convert_tokens_to_ids(self, token: str) -> int:
            return {".": 7}[token]

    assert delimiter_token_ids(Tokenizer()) == {1, 2, 7}


def test_batch_groups_pair_equal_sizes_only_when_batching() -> None:
    sizes = [(640, 480), (100, 100), (640, 480), (480, 640)]
    assert batch_groups(sizes, batched=True) == [[0, 2], [1], [3]]
    assert batch_groups(sizes, batched=False) == [[0], [1], [2], [3]]


# ---- post-processing on canned outputs ----


def canned_logits(token_probabilities: list[dict[int, float]]) -> torch.Tensor:
    """One row per query: the given probabilities at token positions, ~0 elsewhere and -inf past the prompt."""
    logits = torch.full((len(token_probabilities), TEXT_LENGTH), float("-inf"))
    logits[:, :8] = -20.0
    for query, probabilities in enumerate(token_probabilities):
        for position, probability in probabilities.items():
            logits[query, position] = torch.logit(torch.tensor(probability))
    return logits


def test_each_box_gets_the_best_matching_phrase_and_weak_text_is_dropped() -> None:
    input_ids = torch.tensor([CLS, SHELF, DOT, PRICE, TAG, DOT, SEP])  # "shelf . price tag ."
    logits = canned_logits(
        [
            {1: 0.3, 4: 0.8},  # best on "tag" → "price tag"
            {1: 0.9, 3: 0.5},  # best on "shelf"
            {2: 0.95, 1: 0.1},  # high only on "." → the best phrase is below text_threshold
            {1: 0.2},  # below box_threshold
            {3: 0.7},  # box lies outside the image → no area after clamping
        ]
    )
    pred_boxes = torch.tensor(
        [
            [0.5, 0.5, 0.2, 0.4],
            [0.95, 0.5, 0.2, 0.2],
            [0.5, 0.5, 0.1, 0.1],
            [0.5, 0.5, 0.1, 0.1],
            [1.5, 0.5, 0.2, 0.2],
        ]
    )
    detections = select_detections(
        logits,
        pred_boxes,
        input_ids,
        PHRASES,
        {CLS, SEP, DOT, PAD},
        box_threshold=0.25,
        text_threshold=0.25,
    )
    assert [detection.label for detection in detections] == ["Shelf", "price tag"]
    assert [detection.score for detection in detections] == pytest.approx([0.9, 0.8])
    assert detections[0].box == pytest.approx((0.85, 0.4, 1.0, 0.6))  # clamped at the right edge
    assert detections[1].box == pytest.approx((0.4, 0.3, 0.6, 0.7))


def test_phrases_cut_off_by_the_text_length_are_never_assigned() -> None:
    input_ids = torch.tensor([CLS, SHELF, DOT, PRICE, TAG, DOT, SEP])
    logits = canned_logits([{1: 0.6, 3: 0.9}])[:, :3]  # the model saw only "[CLS] shelf ."
    detections = select_detections(
        logits,
        torch.tensor([[0.5, 0.5, 0.2, 0.2]]),
        input_ids,
        PHRASES,
        {CLS, SEP, DOT, PAD},
        box_threshold=0.5,
        text_threshold=0.5,
    )
    assert [(detection.label, detection.score) for detection in detections] == [("Shelf", pytest.approx(0.6))]
