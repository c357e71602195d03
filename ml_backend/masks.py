"""Binary masks to wire formats: COCO RLE, normalised polygons, bounding boxes."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import cv2
import numpy as np
from pycocotools import mask as coco_mask

from ml_backend.schemas import RLE

if TYPE_CHECKING:
    from ml_backend.config import Settings


def encode_rle(mask: np.ndarray) -> RLE:
    """Boolean (H, W) → COCO compressed RLE, decodable by pycocotools.mask.decode.

    pycocotools wants the mask column-major; numpy's Fortran copy of a 12-megapixel mask costs three
    times the encoding itself, so OpenCV transposes it (about a millisecond) and pycocotools reads the
    transpose's transpose, which is that Fortran-ordered mask without another copy.
    """
    height, width = mask.shape
    if mask.size == 0:
        encoded = coco_mask.encode(np.zeros((height, width), dtype=np.uint8, order="F"))
    else:
        encoded = coco_mask.encode(cv2.transpose(np.ascontiguousarray(mask, dtype=bool).view(np.uint8)).T)
    return RLE(size=(height, width), counts=encoded["counts"].decode("ascii"))


def decode_rle(rle: RLE | dict) -> np.ndarray:
    data = rle.model_dump() if isinstance(rle, RLE) else dict(rle)
    counts = data["counts"]
    coco = {
        "size": list(data["size"]),
        "counts": counts.encode("ascii") if isinstance(counts, str) else counts,
    }
    decoded = coco_mask.decode(coco)  # Fortran-ordered (H, W) uint8
    if decoded.size == 0:
        return np.zeros(decoded.shape, dtype=bool)
    # Row-major for everything downstream (brush RLE, polygons), transposed by OpenCV: numpy's copy is 10x slower.
    return cv2.transpose(np.ascontiguousarray(decoded.T)).view(bool)


def mask_box(mask: np.ndarray) -> tuple[float, float, float, float]:
    """Normalised xyxy of the mask's pixels (the outer edges of the pixels); zeros for an empty mask."""
    height, width = mask.shape
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    if rows.size == 0:
        return (0.0, 0.0, 0.0, 0.0)
    return (cols[0] / width, rows[0] / height, (cols[-1] + 1) / width, (rows[-1] + 1) / height)


@dataclass(frozen=True)
class PolygonOptions:
    """How masks become polygons an annotator can edit.

    `tolerance` is the simplification distance as a fraction of the image diagonal (so a 12 MP photo
    and a thumbnail get outlines of similar point counts); `max_points` bounds the points of one
    polygon (simplified further until it fits); pieces smaller than `min_area` (fraction of the image)
    are dropped as specks.
    """

    tolerance: float = 0.001
    max_points: int = 200
    min_area: float = 0.0001

    @classmethod
    def from_settings(cls, settings: Settings, **overrides: float | int | None) -> PolygonOptions:
        values = {
            "tolerance": settings.polygon_tolerance,
            "max_points": settings.polygon_max_points,
            "min_area": settings.polygon_min_area,
        }
        values.update({name: value for name, value in overrides.items() if value is not None})
        return cls(**values)  # type: ignore[arg-type]


MAX_POLYGONS = 20  # pieces per mask: a noisy mask must not flood the annotator with regions
SIMPLIFY_GROWTH = 1.5


def mask_polygons(mask: np.ndarray, options: PolygonOptions | None = None) -> list[list[float]]:
    """One polygon per piece of the mask, largest first, as flat normalised [x1, y1, x2, y2, ...] lists.

    Label Studio polygons are simple rings, so a piece's holes cannot be represented: each polygon is
    the piece's outer boundary and its holes are filled (the brush output keeps them).
    """
    options = options or PolygonOptions()
    height, width = mask.shape
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    min_pixels = max(options.min_area * width * height, 1.0)
    pieces = [(cv2.contourArea(contour), contour) for contour in contours]
    kept = sorted((piece for piece in pieces if piece[0] >= min_pixels), key=lambda piece: -piece[0])
    epsilon = options.tolerance * float(np.hypot(width, height))
    polygons: list[list[float]] = []
    for _, contour in kept[:MAX_POLYGONS]:
        simplified = simplify_contour(contour, epsilon, options.max_points)
        if len(simplified) < 3:
            continue
        simplified[:, 0] = np.clip(simplified[:, 0] / width, 0.0, 1.0)
        simplified[:, 1] = np.clip(simplified[:, 1] / height, 0.0, 1.0)
        polygons.append(simplified.reshape(-1).tolist())
    return polygons


def simplify_contour(contour: np.ndarray, epsilon: float, max_points: int) -> np.ndarray:
    """Douglas-Peucker at `epsilon` pixels, coarsened step by step until at most `max_points` remain."""
    simplified = cv2.approxPolyDP(contour, epsilon, True) if epsilon > 0 else contour
    while len(simplified) > max_points:
        epsilon = max(epsilon, 0.5) * SIMPLIFY_GROWTH
        simplified = cv2.approxPolyDP(contour, epsilon, True)
    return simplified.reshape(-1, 2).astype(np.float64)


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
