"""Florence-2 adapter: every task on the tiny random model, and the parsing on canned generations."""

from __future__ import annotations

import io
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from ml_backend.images import RGBImage
from ml_backend.models.base import Detection, Runtime
from ml_backend.models.florence2 import TASK_TOKENS, Florence2Runner, detections_from_parsed, load
from ml_backend.schemas import RequestError
from tests.support import make_image

WIDTH, HEIGHT = 640, 480


@pytest.fixture(scope="module")
def runner(tiny_hub_ids: dict[str, str]) -> Florence2Runner:
    return load(tiny_hub_ids["florence2"], Runtime(torch.device("cpu"), torch.float32))


@pytest.fixture(scope="module")
def image() -> RGBImage:
    return RGBImage(Image.open(io.BytesIO(make_image(WIDTH, HEIGHT))).convert("RGB"), "gradient")


def parse(runner: Florence2Runner, task: str, generated: str) -> list[Detection]:
    token = TASK_TOKENS[task]
    parsed = runner.processor.post_process_generation(generated, task=token, image_size=(WIDTH, HEIGHT))
    return detections_from_parsed(task, parsed[token], WIDTH, HEIGHT)


def assert_valid(detection: Detection) -> None:
    x1, y1, x2, y2 = detection.box
    assert 0.0 <= x1 < x2 <= 1.0
    assert 0.0 <= y1 < y2 <= 1.0
    assert detection.score == 1.0
    assert isinstance(detection.label, str)


# ---- tiny model ----


@pytest.mark.parametrize("task", list(TASK_TOKENS))
def test_every_task_runs_and_gives_normalised_boxes(
    runner: Florence2Runner, image: RGBImage, task: str
) -> None:
    detections = runner.run(image, task, "a cat")
    for detection in detections:
        assert_valid(detection)
        if task == "referring_expression_segmentation":
            assert detection.mask is not None
            assert detection.mask.shape == (HEIGHT, WIDTH)
            assert detection.mask.dtype == bool


def test_detect_labels_every_box_with_its_phrase(runner: Florence2Runner, image: RGBImage) -> None:
    detections = runner.detect(image, ["Cat", "dog"], box_threshold=0.9, text_threshold=0.9)
    assert {detection.label for detection in detections} <= {"Cat", "dog"}
    for detection in detections:
        assert_valid(detection)


def test_run_decodes_the_generation_and_ignores_text_for_tasks_without_input(
    runner: Florence2Runner, image: RGBImage, monkeypatch: pytest.MonkeyPatch
) -> None:
    generated = "</s><s>cat<loc_100><loc_200><loc_400><loc_600></s>"
    calls: list[dict[str, Any]] = []

    def canned_generate(**inputs: Any) -> torch.Tensor:
        calls.append(inputs)
        ids = runner.processor.tokenizer(generated, add_special_tokens=False)["input_ids"]
        return torch.tensor([ids])

    monkeypatch.setattr(runner.model, "generate", canned_generate)
    detections = runner.run(image, "od", "text the <OD> prompt must not carry")
    assert [detection.label for detection in detections] == ["cat"]
    assert detections[0].box == pytest.approx((0.1, 0.2, 0.4, 0.6))
    assert calls[0]["pixel_values"].shape[0] == 1


def test_unknown_task_and_missing_text_are_request_errors(runner: Florence2Runner, image: RGBImage) -> None:
    with pytest.raises(RequestError, match="unknown task 'caption'"):
        runner.run(image, "caption")
    with pytest.raises(RequestError, match="text_prompt: required for florence2_task phrase_grounding"):
        runner.run(image, "phrase_grounding", "  ")


# ---- canned generations through the real processor's parser ----


def test_object_detection_box_is_normalised(runner: Florence2Runner) -> None:
    detections = parse(runner, "od", "</s><s>cat<loc_100><loc_200><loc_400><loc_600></s>")
    # The processor returns the bins' integer pixel centres: [64, 96, 256, 288].
    assert detections == [Detection("cat", 1.0, pytest.approx((0.1, 0.2, 0.4, 0.6)))]


def test_region_proposals_have_empty_labels(runner: Florence2Runner) -> None:
    generated = "</s><s><loc_100><loc_200><loc_400><loc_600><loc_0><loc_0><loc_999><loc_999></s>"
    detections = parse(runner, "region_proposal", generated)
    assert [detection.label for detection in detections] == ["", ""]
    assert detections[1].box == pytest.approx((0.0, 0.0, 639 / 640, 479 / 480))  # bins 0 and 999: edge pixels


def test_ocr_quad_becomes_its_enclosing_box(runner: Florence2Runner) -> None:
    generated = "</s><s>HELLO<loc_100><loc_200><loc_300><loc_210><loc_310><loc_400><loc_90><loc_390></s>"
    detections = parse(runner, "ocr_with_region", generated)
    # x bins 90..310 → pixels 57..198, y bins 200..400 → pixels 96..192 (bin centres, truncated)
    assert detections == [Detection("HELLO", 1.0, pytest.approx((57 / 640, 96 / 480, 198 / 640, 192 / 480)))]


def test_referring_segmentation_polygon_becomes_a_full_size_mask(runner: Florence2Runner) -> None:
    square = "<loc_100><loc_100><loc_300><loc_100><loc_300><loc_500><loc_100><loc_500>"
    detections = parse(runner, "referring_expression_segmentation", f"</s><s><poly>{square}</poly></s>")
    assert len(detections) == 1
    mask = detections[0].mask
    assert mask is not None
    assert mask.shape == (HEIGHT, WIDTH)
    # bin centres: x 100 → 64, 300 → 192; y 100 → 48, 500 → 240; the filled polygon includes its edges
    expected = np.zeros((HEIGHT, WIDTH), dtype=bool)
    expected[48:241, 64:193] = True
    assert np.array_equal(mask, expected)
    assert detections[0].box == pytest.approx((64 / 640, 48 / 480, 193 / 640, 241 / 480))


# ---- detections_from_parsed on hand-made dicts ----


def test_open_vocabulary_detection_keeps_boxes_and_polygons() -> None:
    parsed = {
        "bboxes": [[64, 96, 256, 288]],
        "bboxes_labels": ["cat"],
        "polygons": [[[0, 0, 64, 0, 64, 48, 0, 48]]],
        "polygons_labels": ["dog"],
    }
    cat, dog = detections_from_parsed("open_vocabulary_detection", parsed, WIDTH, HEIGHT)
    assert (cat.label, cat.mask) == ("cat", None)
    assert dog.label == "dog"
    assert dog.mask is not None
    assert dog.mask.sum() == 65 * 49
    assert dog.box == pytest.approx((0.0, 0.0, 65 / 640, 49 / 480))


def test_degenerate_boxes_and_empty_polygons_are_dropped() -> None:
    boxes = {
        "bboxes": [[64, 96, 64, 288], [700, 10, 800, 20], [10, 10, 20, 20]],
        "labels": [" a ", "b", "c "],
    }
    assert [detection.label for detection in detections_from_parsed("od", boxes, WIDTH, HEIGHT)] == ["c"]
    polygons = {"polygons": [[[10, 10, 20, 20]], []], "labels": ["", ""]}
    assert detections_from_parsed("referring_expression_segmentation", polygons, WIDTH, HEIGHT) == []
