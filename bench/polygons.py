"""Polygons an annotator can edit: points per polygon and IoU of the polygon's raster against the mask.

    python bench/polygons.py

For two image sizes (1280×960, 4032×3024) and three settings (the defaults, a finer and a coarser
one), on three fixed masks: a smooth ellipse, an organic blob with a hole and a second piece
(smoothed random field, like a real object mask), and that blob with a frayed edge. Also the old behaviour (1 px tolerance, no point
budget) for comparison.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ml_backend.masks import PolygonOptions, mask_polygons, polygons_to_mask

SIZES = [(1280, 960), (4032, 3024)]
SETTINGS = {
    "default": PolygonOptions(),
    "finer (tol 0.0005, 400 pts)": PolygonOptions(tolerance=0.0005, max_points=400),
    "coarser (tol 0.003, 60 pts)": PolygonOptions(tolerance=0.003, max_points=60),
}


def ellipse(width: int, height: int) -> np.ndarray:
    ys, xs = np.ogrid[0:height, 0:width]
    return ((xs - 0.5 * width) / (0.3 * width)) ** 2 + ((ys - 0.5 * height) / (0.2 * height)) ** 2 <= 1


def organic_blob(width: int, height: int, seed: int = 3) -> np.ndarray:
    """A smoothed random field thresholded inside a disc: wobbly edges, a hole, a satellite piece."""
    rng = np.random.default_rng(seed)
    field = cv2.resize(
        rng.random((12, 16)).astype(np.float32), (width, height), interpolation=cv2.INTER_CUBIC
    )
    ys, xs = np.ogrid[0:height, 0:width]
    disc = ((xs - 0.45 * width) / (0.3 * width)) ** 2 + ((ys - 0.5 * height) / (0.35 * height)) ** 2
    mask = (disc + 0.6 * field) < 1.1
    hole = ((xs - 0.45 * width) / (0.04 * width)) ** 2 + ((ys - 0.5 * height) / (0.05 * height)) ** 2 <= 1
    satellite = ((xs - 0.88 * width) / (0.05 * width)) ** 2 + (
        (ys - 0.2 * height) / (0.06 * height)
    ) ** 2 <= 1
    return (mask & ~hole) | satellite


def ragged_blob(width: int, height: int, seed: int = 5) -> np.ndarray:
    """The blob with a frayed edge (fur, foliage): pixels within a few pixels of the edge flip at random."""
    mask = organic_blob(width, height)
    rng = np.random.default_rng(seed)
    band = cv2.morphologyEx(mask.astype(np.uint8), cv2.MORPH_GRADIENT, np.ones((7, 7), np.uint8)).astype(bool)
    return mask ^ (band & (rng.random(mask.shape) < 0.3))


def raster(polygons: list[list[float]], width: int, height: int) -> np.ndarray:
    pixels = [[v * (width if i % 2 == 0 else height) for i, v in enumerate(p)] for p in polygons]
    return polygons_to_mask(pixels, width, height)


def measure(mask: np.ndarray, options: PolygonOptions) -> tuple[list[int], float, float]:
    height, width = mask.shape
    started = time.perf_counter()
    polygons = mask_polygons(mask, options)
    elapsed_ms = (time.perf_counter() - started) * 1000
    redrawn = raster(polygons, width, height)
    iou = float((redrawn & mask).sum() / (redrawn | mask).sum())
    return [len(polygon) // 2 for polygon in polygons], iou, elapsed_ms


def main() -> None:
    argparse.ArgumentParser(description=__doc__).parse_args()
    settings = {**SETTINGS, "old (1 px, no budget)": None}
    print(f"{'mask':<8} {'size':<10} {'setting':<30} {'points per polygon':<26} {'IoU':>7} {'ms':>7}")
    for width, height in SIZES:
        for name, make in (("ellipse", ellipse), ("blob", organic_blob), ("ragged", ragged_blob)):
            mask = make(width, height)
            for label, options in settings.items():
                if options is None:  # the fixed 1 px tolerance this project used before
                    options = PolygonOptions(
                        tolerance=1.0 / np.hypot(width, height), max_points=10**9, min_area=0
                    )
                counts, iou, elapsed = measure(mask, options)
                print(
                    f"{name:<8} {width}x{height:<5} {label:<30} {','.join(map(str, counts)):<26} "
                    f"{iou:7.4f} {elapsed:7.1f}"
                )


if __name__ == "__main__":
    main()
