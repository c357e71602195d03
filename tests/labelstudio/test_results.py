import numpy as np
import pytest
from label_studio_sdk.converter import brush

from ml_backend.labelstudio.interface import ProjectInterface
from ml_backend.labelstudio.results import (
    brush_result,
    build_prediction,
    detections_to_results,
    rectangle_result,
    regions_for_mask,
    segment_results,
)
from ml_backend.masks import encode_rle, mask_box, mask_polygons, polygons_to_mask
from ml_backend.schemas import DetectionOut, MaskOut
from tests.labelstudio.configs import RECT_ONLY_CONFIG, SAM_CONFIG, TEXT_PROMPT_CONFIG

WIDTH, HEIGHT = 64, 48
ITEM_KEYS = {
    "id",
    "from_name",
    "to_name",
    "type",
    "original_width",
    "original_height",
    "image_rotation",
    "value",
    "score",
}


def _blob_mask() -> np.ndarray:
    """A rectangle plus a disc: not symmetric, so a transposed or flipped decode would not match."""
    mask = np.zeros((HEIGHT, WIDTH), dtype=bool)
    mask[5:20, 8:30] = True
    rows, cols = np.ogrid[:HEIGHT, :WIDTH]
    mask |= (rows - 32) ** 2 + (cols - 45) ** 2 <= 8**2
    return mask


@pytest.fixture(scope="module")
def sam() -> ProjectInterface:
    return ProjectInterface.from_config(SAM_CONFIG)


@pytest.fixture(scope="module")
def text_prompt() -> ProjectInterface:
    return ProjectInterface.from_config(TEXT_PROMPT_CONFIG)


def _decode_brush(item: dict) -> np.ndarray:
    pixels = brush.decode_rle(item["value"]["rle"])
    return pixels.reshape(item["original_height"], item["original_width"], 4)[:, :, 3] > 0


def _of_type(results: list[dict], result_type: str) -> list[dict]:
    return [item for item in results if item["type"] == result_type]


def test_rectangle_result_is_in_percent_with_the_label(sam: ProjectInterface) -> None:
    item = rectangle_result(sam.control("tag3"), "Banana", (0.1, 0.2, 0.4, 0.6), 0.87, 640, 480)

    assert set(item) == ITEM_KEYS
    assert (item["from_name"], item["to_name"], item["type"]) == ("tag3", "image", "rectanglelabels")
    assert (item["original_width"], item["original_height"], item["image_rotation"]) == (640, 480, 0)
    value = item["value"]
    assert [value["x"], value["y"], value["width"], value["height"]] == pytest.approx([10, 20, 30, 40])
    assert value["rectanglelabels"] == ["Banana"]
    assert item["score"] == pytest.approx(0.87)


def test_brush_rle_round_trips_through_the_sdk_decoder(sam: ProjectInterface) -> None:
    mask = _blob_mask()
    regions = regions_for_mask(encode_rle(mask), mask_box(mask), "Banana", 0.9, sam, WIDTH, HEIGHT)

    [item] = _of_type(regions, "brushlabels")
    assert set(item) == ITEM_KEYS
    assert item["from_name"] == "tag"
    assert item["value"]["format"] == "rle"
    assert item["value"]["brushlabels"] == ["Banana"]
    pixels = brush.decode_rle(item["value"]["rle"])
    assert len(pixels) == HEIGHT * WIDTH * 4
    assert set(np.unique(pixels)) == {0, 255}  # opaque strokes: Label Studio draws the RLE as RGBA
    decoded = _decode_brush(item)
    assert decoded.shape == (HEIGHT, WIDTH)
    assert np.array_equal(decoded, mask)


def test_polygons_stay_inside_the_image_and_outline_the_mask(sam: ProjectInterface) -> None:
    mask = _blob_mask()
    regions = regions_for_mask(mask, mask_box(mask), "Banana", 0.9, sam, WIDTH, HEIGHT)

    polygons = _of_type(regions, "polygonlabels")
    assert len(polygons) == 2
    assert all(
        item["from_name"] == "outline" and item["value"]["polygonlabels"] == ["Banana"] for item in polygons
    )
    points = np.array([point for item in polygons for point in item["value"]["points"]])
    assert ((points >= 0) & (points <= 100)).all()
    scale = np.array([WIDTH, HEIGHT]) / 100
    pixels = [(np.array(item["value"]["points"]) * scale).reshape(-1).tolist() for item in polygons]
    redrawn = polygons_to_mask(pixels, WIDTH, HEIGHT)
    assert (redrawn & mask).sum() / (redrawn | mask).sum() > 0.8


def test_polygon_points_are_clamped_to_percent_range(sam: ProjectInterface) -> None:
    out = MaskOut(score=0.5, box=(0, 0, 1, 1), polygons=[[-0.1, 0.0, 1.2, 0.0, 0.5, 1.5]])

    [item] = _of_type(segment_results([out], "Orange", sam, WIDTH, HEIGHT), "polygonlabels")
    assert item["value"]["points"] == [[0.0, 0.0], [100.0, 0.0], [50.0, 100.0]]


def test_polygons_only_response_still_fills_the_brush(sam: ProjectInterface) -> None:
    mask = _blob_mask()
    out = MaskOut(score=0.5, box=mask_box(mask), polygons=mask_polygons(mask))

    [item] = _of_type(segment_results([out], "Banana", sam, WIDTH, HEIGHT), "brushlabels")
    decoded = _decode_brush(item)
    assert (decoded & mask).sum() / (decoded | mask).sum() > 0.8


def test_mask_without_brush_or_polygon_control_becomes_its_bounding_box() -> None:
    interface = ProjectInterface.from_config(RECT_ONLY_CONFIG)
    mask = np.zeros((HEIGHT, WIDTH), dtype=bool)
    mask[12:24, 16:48] = True

    [item] = regions_for_mask(encode_rle(mask), (0.0, 0.0, 1.0, 1.0), "Car", 0.7, interface, WIDTH, HEIGHT)

    assert (item["type"], item["from_name"], item["to_name"]) == ("rectanglelabels", "label", "img")
    value = item["value"]
    assert [value["x"], value["y"], value["width"], value["height"]] == pytest.approx([25, 25, 50, 25])
    assert value["rectanglelabels"] == ["Car"]


def test_empty_mask_and_unknown_label_give_no_region(sam: ProjectInterface) -> None:
    empty = np.zeros((HEIGHT, WIDTH), dtype=bool)
    rect_only = ProjectInterface.from_config(RECT_ONLY_CONFIG)

    assert regions_for_mask(empty, (0.1, 0.1, 0.2, 0.2), "Banana", 0.5, sam, WIDTH, HEIGHT) == []
    assert regions_for_mask(empty, (0.1, 0.1, 0.2, 0.2), "Car", 0.5, rect_only, WIDTH, HEIGHT) == []
    assert regions_for_mask(_blob_mask(), (0.1, 0.1, 0.2, 0.2), "Apple", 0.5, sam, WIDTH, HEIGHT) == []


def test_brush_rejects_a_mask_of_another_size(sam: ProjectInterface) -> None:
    with pytest.raises(ValueError, match="mask is 64x48 but the image is 640x480"):
        brush_result(sam.control("tag"), "Banana", _blob_mask(), 0.5, 640, 480)


def test_detections_map_to_labels_and_unmapped_ones_are_dropped(text_prompt: ProjectInterface) -> None:
    mask = _blob_mask()
    detections = [
        DetectionOut(label="bottle", score=0.9, box=(0.1, 0.1, 0.5, 0.4), mask=encode_rle(mask)),
        DetectionOut(label="banana", score=0.8, box=(0.5, 0.5, 0.9, 0.9)),
        DetectionOut(label="price tag", score=0.6, box=(0.0, 0.5, 0.2, 0.7)),
    ]

    results = detections_to_results(detections, text_prompt, WIDTH, HEIGHT, text_prompt.label_for_phrase)

    rectangles = _of_type(results, "rectanglelabels")
    assert [item["value"]["rectanglelabels"] for item in rectangles] == [["Product"], ["Price tag"]]
    assert [item["score"] for item in rectangles] == pytest.approx([0.9, 0.6])
    assert [item["value"]["x"] for item in rectangles] == pytest.approx([10, 0])
    [brush_item] = _of_type(results, "brushlabels")
    assert brush_item["value"]["brushlabels"] == ["Product"]
    assert np.array_equal(_decode_brush(brush_item), mask)
    assert len({item["id"] for item in results}) == len(results) == 3


def test_detection_whose_label_is_not_in_the_rectangle_control_is_dropped() -> None:
    interface = ProjectInterface.from_config(RECT_ONLY_CONFIG)
    detections = [DetectionOut(label="person", score=0.5, box=(0.1, 0.1, 0.2, 0.2))]

    assert detections_to_results(detections, interface, WIDTH, HEIGHT, lambda phrase: "Banana") == []


def test_prediction_scores_the_mean_of_its_results(sam: ProjectInterface) -> None:
    control = sam.control("tag3")
    results = [
        rectangle_result(control, "Banana", (0, 0, 0.5, 0.5), score, WIDTH, HEIGHT) for score in (0.5, 0.9)
    ]

    prediction = build_prediction(results, "od-1")

    assert prediction["result"] is results
    assert prediction["score"] == pytest.approx(0.7)
    assert prediction["model_version"] == "od-1"
    assert build_prediction([], "od-1") == {"result": [], "score": 0.0, "model_version": "od-1"}
