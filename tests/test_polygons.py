"""Polygons an annotator can edit: tolerance relative to the image, a point budget, specks dropped,
one polygon per piece, holes filled; the settings reach the wire contract and job options."""

from __future__ import annotations

import numpy as np
import pytest
from pydantic import ValidationError

from ml_backend.config import load_settings
from ml_backend.engine import Engine
from ml_backend.jobs.spec import AnnotateSpec
from ml_backend.labelstudio.interface import ProjectInterface
from ml_backend.labelstudio.results import mask_regions
from ml_backend.masks import PolygonOptions, mask_polygons, polygons_to_mask
from ml_backend.schemas import RequestError, parse_request
from tests.labelstudio.configs import SAM_CONFIG


def ellipse(width: int, height: int, centre=(0.5, 0.5), radii=(0.3, 0.2)) -> np.ndarray:
    ys, xs = np.mgrid[0:height, 0:width]
    cx, cy = centre[0] * width, centre[1] * height
    rx, ry = radii[0] * width, radii[1] * height
    return ((xs - cx) / rx) ** 2 + ((ys - cy) / ry) ** 2 <= 1.0


def raster(polygons: list[list[float]], width: int, height: int) -> np.ndarray:
    pixels = [[v * (width if i % 2 == 0 else height) for i, v in enumerate(p)] for p in polygons]
    return polygons_to_mask(pixels, width, height)


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / (a | b).sum())


def point_counts(polygons: list[list[float]]) -> list[int]:
    return [len(polygon) // 2 for polygon in polygons]


@pytest.mark.parametrize(("width", "height"), [(1280, 960), (4032, 3024)])
def test_default_outline_is_light_and_faithful(width: int, height: int) -> None:
    mask = ellipse(width, height)
    polygons = mask_polygons(mask, PolygonOptions())
    assert len(polygons) == 1
    assert 8 <= point_counts(polygons)[0] <= PolygonOptions().max_points
    assert iou(raster(polygons, width, height), mask) > 0.98


def test_tolerance_is_relative_to_the_image_so_sizes_give_similar_point_counts() -> None:
    small = point_counts(mask_polygons(ellipse(1280, 960), PolygonOptions()))[0]
    large = point_counts(mask_polygons(ellipse(4032, 3024), PolygonOptions()))[0]
    assert abs(small - large) <= max(4, small // 2)


def test_zero_tolerance_keeps_more_points_than_the_default() -> None:
    mask = ellipse(640, 480)
    exact = mask_polygons(mask, PolygonOptions(tolerance=0.0, max_points=100_000))
    default = mask_polygons(mask, PolygonOptions())
    assert point_counts(exact)[0] > 2 * point_counts(default)[0]
    assert iou(raster(exact, 640, 480), mask) >= iou(raster(default, 640, 480), mask)


@pytest.mark.parametrize("max_points", [4, 8, 16, 40])
def test_max_points_simplifies_until_the_polygon_fits(max_points: int) -> None:
    mask = ellipse(1280, 960)
    [polygon] = mask_polygons(mask, PolygonOptions(tolerance=0.0, max_points=max_points))
    assert 3 <= len(polygon) // 2 <= max_points
    assert iou(raster([polygon], 1280, 960), mask) > 0.6


def test_specks_under_min_area_are_dropped() -> None:
    mask = ellipse(400, 300)
    mask[5:8, 5:8] = True  # 9 pixels = 0.0075 % of the image
    assert len(mask_polygons(mask, PolygonOptions(min_area=0.0001))) == 1
    assert len(mask_polygons(mask, PolygonOptions(min_area=0.00001))) == 2


def test_holes_are_filled_because_label_studio_polygons_are_simple_rings() -> None:
    ring = ellipse(400, 300, radii=(0.4, 0.4)) & ~ellipse(400, 300, radii=(0.2, 0.2))
    [polygon] = mask_polygons(ring, PolygonOptions())
    redrawn = raster([polygon], 400, 300)
    assert redrawn[150, 200], "the hole is covered by the outer boundary"
    assert iou(redrawn, ellipse(400, 300, radii=(0.4, 0.4))) > 0.97


def test_a_mask_in_pieces_gives_one_labelled_polygon_region_per_piece() -> None:
    width, height = 320, 240
    mask = ellipse(width, height, centre=(0.25, 0.5), radii=(0.1, 0.1)) | ellipse(
        width, height, centre=(0.75, 0.5), radii=(0.15, 0.1)
    )
    interface = ProjectInterface.from_config(SAM_CONFIG)
    regions = mask_regions(mask, "Banana", 0.9, interface, width, height, outline=PolygonOptions())
    polygons = [region for region in regions if region["type"] == "polygonlabels"]
    assert len(polygons) == 2
    assert all(region["value"]["polygonlabels"] == ["Banana"] for region in polygons)
    for region in polygons:
        assert all(0 <= x <= 100 and 0 <= y <= 100 for x, y in region["value"]["points"])
    right = max(polygons, key=lambda region: region["value"]["points"][0][0])
    assert len(right["value"]["points"]) <= PolygonOptions().max_points


def test_label_studio_regions_follow_the_options() -> None:
    mask = ellipse(1280, 960)
    interface = ProjectInterface.from_config(SAM_CONFIG)
    regions = mask_regions(mask, "Banana", 0.9, interface, 1280, 960, outline=PolygonOptions(max_points=6))
    [polygon] = [region for region in regions if region["type"] == "polygonlabels"]
    assert len(polygon["value"]["points"]) <= 6


def test_settings_and_request_fields_choose_the_options() -> None:
    settings = load_settings(polygon_tolerance=0.01, polygon_max_points=50, polygon_min_area=0.001)
    assert PolygonOptions.from_settings(settings) == PolygonOptions(0.01, 50, 0.001)
    request = parse_request(
        {
            "task": "segment",
            "model": "sam2",
            "image_url": "https://example.com/a.png",
            "point": [0.5, 0.5],
            "mask_format": "polygons",
            "polygon_max_points": 12,
        }
    )
    assert Engine(settings).polygon_options(request) == PolygonOptions(0.01, 12, 0.001)


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("polygon_max_points", 2, "polygon_max_points: Input should be greater than or equal to 3"),
        ("polygon_tolerance", 0.5, "polygon_tolerance: Input should be less than or equal to 0.1"),
        ("polygon_min_area", -1, "polygon_min_area: Input should be greater than or equal to 0"),
    ],
)
def test_bad_polygon_fields_name_the_field(field: str, value: float, message: str) -> None:
    payload = {"task": "detect", "model": "grounding_dino", "image_url": "https://e.com/a.png"}
    with pytest.raises(RequestError, match=message):
        parse_request({**payload, "text_prompt": "cat", field: value})


def test_job_options_validate_polygon_settings() -> None:
    spec = AnnotateSpec(project=1, polygon_tolerance=0.002, polygon_max_points=30)
    assert (spec.polygon_tolerance, spec.polygon_max_points) == (0.002, 30)
    with pytest.raises(ValidationError):
        AnnotateSpec(project=1, polygon_max_points=1)
