"""Binary masks to wire formats: COCO RLE, normalised polygons, bounding boxes."""

from __future__ import annotations

import cv2
import numpy as np
from pycocotools import mask as coco_mask

from ml_backend.schemas import RLE


def encode_rle(mask: np.ndarray) -> RLE:
    """Boolean (H, W) → COCO compressed RLE, decodable by pycocotools.mask.decode."""
    encoded = coco_mask.encode(np.asfortranarray(mask.astype(np.uint8)))
    return RLE(
        size=(int(encoded["size"][0]), int(encoded["size"][1])), counts=encoded["counts"].decode("ascii")
    )


def decode_rle(rle: RLE | dict) -> np.ndarray:
    data = rle.model_dump() if isinstance(rle, RLE) else dict(rle)
    counts = data["counts"]
    coco = {
        "size": list(data["size"]),
        "counts": counts.encode("ascii") if isinstance(counts, str) else counts,
    }
    return coco_mask.decode(coco).astype(bool)


def mask_box(mask: np.ndarray) -> tuple[float, float, float, float]:
    """Normalised xyxy of the mask's pixels (the outer edges of the pixels); zeros for an empty mask."""
    height, width = mask.shape
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    if rows.size == 0:
        return (0.0, 0.0, 0.0, 0.0)
    return (cols[0] / width, rows[0] / height, (cols[-1] + 1) / width, (rows[-1] + 1) / height)


def mask_polygons(
    mask: np.ndarray,
    tolerance: float = 1.0,
    min_area: float = 4.0,
    max_polygons: int = 20,
    min_relative_area: float = 0.01,
) -> list[list[float]]:
    """Outer contours as flat normalised [x1, y1, x2, y2, ...] lists, simplified by `tolerance` pixels.

    Largest first; specks (under `min_area` pixels or `min_relative_area` of the largest part) are
    left out, and at most `max_polygons` parts are kept, so a noisy mask cannot flood the annotator.
    """
    height, width = mask.shape
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    ranked = sorted(contours, key=cv2.contourArea, reverse=True)
    largest = cv2.contourArea(ranked[0]) if ranked else 0.0
    polygons: list[list[float]] = []
    for contour in ranked:
        if len(polygons) == max_polygons:
            break
        if cv2.contourArea(contour) < max(min_area, min_relative_area * largest):
            continue
        simplified = cv2.approxPolyDP(contour, tolerance, True).reshape(-1, 2).astype(np.float64)
        if len(simplified) < 3:
            continue
        simplified[:, 0] = np.clip(simplified[:, 0] / width, 0.0, 1.0)
        simplified[:, 1] = np.clip(simplified[:, 1] / height, 0.0, 1.0)
        polygons.append(simplified.reshape(-1).tolist())
    return polygons


def polygons_to_mask(polygons: list[list[float]], width: int, height: int) -> np.ndarray:
    """Flat pixel-coordinate polygons → boolean (H, W) mask."""
    canvas = np.zeros((height, width), dtype=np.uint8)
    shapes = [np.asarray(poly, dtype=np.float64).reshape(-1, 2).round().astype(np.int32) for poly in polygons]
    shapes = [shape for shape in shapes if len(shape) >= 3]
    if shapes:
        cv2.fillPoly(canvas, shapes, 1)
    return canvas.astype(bool)


def resize_mask(mask: np.ndarray, width: int, height: int) -> np.ndarray:
    """Nearest-neighbour resize of a boolean mask to (height, width)."""
    if mask.shape == (height, width):
        return mask
    return cv2.resize(mask.astype(np.uint8), (width, height), interpolation=cv2.INTER_NEAREST).astype(bool)
