"""Engine responses (normalised boxes, COCO RLE masks, normalised polygons) → Label Studio result items
(percent of the original image; brush masks in Label Studio's own RLE)."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence

import numpy as np

from ml_backend.engine import mask_array
from ml_backend.labelstudio.brush import mask_to_rle
from ml_backend.labelstudio.interface import RECTANGLE, ControlTag, ProjectInterface
from ml_backend.masks import PolygonOptions, decode_rle, mask_box, mask_polygons, polygons_to_mask
from ml_backend.models.base import BoxXYXY
from ml_backend.schemas import RLE, DetectionOut, MaskOut

MaskInput = RLE | np.ndarray | None


def rectangle_result(
    control: ControlTag, label: str, box: BoxXYXY, score: float, width: int, height: int
) -> dict:
    x1, y1, x2, y2 = (_percent(coordinate) for coordinate in box)
    value = {"x": x1, "y": y1, "width": x2 - x1, "height": y2 - y1, "rotation": 0}
    return _result(control, label, value, score, width, height)


def brush_result(
    control: ControlTag, label: str, mask: np.ndarray, score: float, width: int, height: int
) -> dict:
    _check_mask_size(mask, width, height)
    # Label Studio draws the RLE as RGBA pixels; the encoder writes 255 (opaque) where the mask is set.
    value = {"format": "rle", "rle": mask_to_rle(mask)}
    return _result(control, label, value, score, width, height)


def polygon_result(
    control: ControlTag, label: str, polygon: Sequence[float], score: float, width: int, height: int
) -> dict:
    """`polygon` is flat and normalised: [x1, y1, x2, y2, ...]."""
    points = [[_percent(x), _percent(y)] for x, y in zip(polygon[0::2], polygon[1::2], strict=True)]
    value = {"points": points, "closed": True}
    return _result(control, label, value, score, width, height)


def regions_for_mask(
    mask: MaskInput,
    box: BoxXYXY,
    label: str,
    score: float,
    interface: ProjectInterface,
    width: int,
    height: int,
    polygons: Sequence[Sequence[float]] | None = None,
    outline: PolygonOptions | None = None,
) -> list[dict]:
    """A mask as brush and/or polygon regions, whichever controls offer the label; with neither, its
    bounding box as a rectangle. An empty mask gives no region."""
    if interface.mask_targets(label):
        return mask_regions(mask, label, score, interface, width, height, polygons, outline)
    rectangle = interface.control_for(RECTANGLE, label)
    array = _mask_array(mask, width, height, polygons)
    if rectangle is None or (array is not None and not array.any()):
        return []
    outline = mask_box(array) if array is not None else box
    return [rectangle_result(rectangle, label, outline, score, width, height)]


def mask_regions(
    mask: MaskInput,
    label: str,
    score: float,
    interface: ProjectInterface,
    width: int,
    height: int,
    polygons: Sequence[Sequence[float]] | None = None,
    outline: PolygonOptions | None = None,
) -> list[dict]:
    """Brush and polygon regions of one mask (none when the mask is empty or no control offers the label).

    A mask in several pieces gives one polygon per piece, each with the label."""
    array = _mask_array(mask, width, height, polygons)
    regions = []
    for control in interface.mask_targets(label):
        if control.result_type == "brushlabels" and array is not None and array.any():
            regions.append(brush_result(control, label, array, score, width, height))
        elif control.result_type == "polygonlabels":
            outlines = polygons if polygons is not None else _polygons_of(array, outline)
            regions.extend(
                polygon_result(control, label, outline, score, width, height)
                for outline in outlines
                if len(outline) >= 6
            )
    return regions


def segment_results(
    masks: Sequence[MaskOut],
    label: str,
    interface: ProjectInterface,
    width: int,
    height: int,
    outline: PolygonOptions | None = None,
) -> list[dict]:
    """Every mask of a segment response under one label (the label chosen in the UI)."""
    return [
        region
        for out in masks
        for region in regions_for_mask(
            _mask_of(out), out.box, label, out.score, interface, width, height, out.polygons, outline
        )
    ]


def detections_to_results(
    detections: Sequence[DetectionOut],
    interface: ProjectInterface,
    width: int,
    height: int,
    label_of: Callable[[str], str | None],
    outline: PolygonOptions | None = None,
) -> list[dict]:
    """A rectangle per detection whose phrase maps to a label, plus its mask in the brush/polygon
    controls. Detections that map to no label are dropped rather than mislabelled."""
    results = []
    for detection in detections:
        label = label_of(detection.label)
        if label is None:
            continue
        rectangle = interface.control_for(RECTANGLE, label)
        if rectangle is not None:
            results.append(rectangle_result(rectangle, label, detection.box, detection.score, width, height))
        mask = _mask_of(detection)
        if mask is not None or detection.polygons:
            results.extend(
                mask_regions(
                    mask,
                    label,
                    detection.score,
                    interface,
                    width,
                    height,
                    detection.polygons,
                    outline,
                )
            )
    return results


def build_prediction(results: list[dict], model_version: str) -> dict:
    scores = [item["score"] for item in results if isinstance(item.get("score"), int | float)]
    score = sum(scores) / len(scores) if scores else 0.0
    return {"result": results, "score": score, "model_version": model_version}


def _result(control: ControlTag, label: str, value: dict, score: float, width: int, height: int) -> dict:
    return {
        "id": uuid.uuid4().hex[:10],
        "from_name": control.name,
        "to_name": control.to_name,
        "type": control.result_type,
        "original_width": int(width),
        "original_height": int(height),
        "image_rotation": 0,
        "value": {**value, control.result_type: [label]},
        "score": float(score),
    }


def _percent(unit: float) -> float:
    return min(100.0, max(0.0, float(unit) * 100.0))


def _mask_of(out: MaskOut | DetectionOut) -> MaskInput:
    """The boolean mask the local engine handed over, else the RLE that came over the wire."""
    array = mask_array(out)
    return array if array is not None else out.mask


def _mask_array(
    mask: MaskInput, width: int, height: int, polygons: Sequence[Sequence[float]] | None
) -> np.ndarray | None:
    """The boolean mask, decoded from RLE or, when only polygons came back, rasterised from them."""
    if isinstance(mask, np.ndarray):
        return np.asarray(mask, dtype=bool)  # no copy of an already boolean mask
    if mask is not None:
        return decode_rle(mask)
    if polygons:
        return polygons_to_mask([_to_pixels(polygon, width, height) for polygon in polygons], width, height)
    return None


def _to_pixels(polygon: Sequence[float], width: int, height: int) -> list[float]:
    return [value * (width if index % 2 == 0 else height) for index, value in enumerate(polygon)]


def _polygons_of(mask: np.ndarray | None, outline: PolygonOptions | None) -> list[list[float]]:
    return mask_polygons(mask, outline) if mask is not None and mask.any() else []


def _check_mask_size(mask: np.ndarray, width: int, height: int) -> None:
    if mask.shape != (height, width):
        raise ValueError(f"mask is {mask.shape[1]}x{mask.shape[0]} but the image is {width}x{height}")
