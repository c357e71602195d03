import numpy as np
import pytest
from pycocotools import mask as coco_mask

from ml_backend.masks import decode_rle, encode_rle, mask_box, mask_polygons, polygons_to_mask


def known_mask() -> np.ndarray:
    mask = np.zeros((48, 64), dtype=bool)
    mask[10:30, 20:50] = True
    mask[40:44, 2:6] = True
    return mask


def test_rle_round_trip_and_pycocotools_compatibility() -> None:
    mask = known_mask()
    rle = encode_rle(mask)
    assert rle.size == (48, 64)
    assert np.array_equal(decode_rle(rle), mask)
    decoded = coco_mask.decode({"size": list(rle.size), "counts": rle.counts.encode()})
    assert np.array_equal(decoded.astype(bool), mask)
    assert np.array_equal(decode_rle(rle.model_dump(mode="json")), mask)


def pycocotools_counts(mask: np.ndarray) -> str:
    """The previous encoder: pycocotools on numpy's Fortran-ordered copy."""
    return coco_mask.encode(np.asfortranarray(mask.astype(np.uint8)))["counts"].decode("ascii")


@pytest.mark.parametrize(("height", "width"), [(1, 1), (1, 7), (7, 1), (37, 53), (960, 1280), (3024, 4032)])
@pytest.mark.parametrize("density", [0.0, 0.02, 0.5, 1.0])
def test_rle_equals_the_previous_encoder_on_random_masks(height: int, width: int, density: float) -> None:
    mask = np.random.default_rng(height + width).random((height, width)) < density
    rle = encode_rle(mask)
    assert rle.size == (height, width)
    assert rle.counts == pycocotools_counts(mask)
    decoded = decode_rle(rle)
    assert decoded.dtype == np.bool_ and decoded.flags.c_contiguous
    np.testing.assert_array_equal(decoded, mask)


@pytest.mark.parametrize(("height", "width"), [(960, 1280), (3024, 4032)])
def test_rle_equals_the_previous_encoder_on_smooth_masks(height: int, width: int) -> None:
    ys, xs = np.mgrid[0:height, 0:width]
    mask = ((xs - width / 3) / (width / 4)) ** 2 + ((ys - height / 2) / (height / 3)) ** 2 <= 1
    for variant in (mask, ~mask, np.asfortranarray(mask), mask[:, ::-1]):
        assert encode_rle(variant).counts == pycocotools_counts(variant)
        np.testing.assert_array_equal(decode_rle(encode_rle(variant)), variant)


def test_rle_of_an_empty_image_matches_pycocotools() -> None:
    assert encode_rle(np.zeros((0, 5), dtype=bool)).counts == pycocotools_counts(np.zeros((0, 5), dtype=bool))


def test_mask_box_is_normalised_outer_edge() -> None:
    mask = np.zeros((10, 20), dtype=bool)
    mask[2:5, 4:10] = True
    assert mask_box(mask) == (4 / 20, 2 / 10, 10 / 20, 5 / 10)
    assert mask_box(np.zeros((3, 3), dtype=bool)) == (0.0, 0.0, 0.0, 0.0)


def test_polygons_are_normalised_and_cover_the_mask() -> None:
    mask = known_mask()
    polygons = mask_polygons(mask)
    assert len(polygons) == 2
    for polygon in polygons:
        assert len(polygon) % 2 == 0 and len(polygon) >= 6
        assert all(0.0 <= value <= 1.0 for value in polygon)
    pixel_polygons = [[v * (64 if i % 2 == 0 else 48) for i, v in enumerate(p)] for p in polygons]
    redrawn = polygons_to_mask(pixel_polygons, 64, 48)
    overlap = (redrawn & mask).sum() / (redrawn | mask).sum()
    assert overlap > 0.9


def test_polygons_to_mask_fills_the_shape() -> None:
    mask = polygons_to_mask([[10, 10, 30, 10, 30, 20, 10, 20]], 40, 30)
    assert mask.shape == (30, 40)
    assert mask[15, 20] and not mask[5, 5]


def test_polygons_of_a_noisy_mask_are_bounded() -> None:
    noisy = np.random.default_rng(1).random((200, 300)) > 0.6
    noisy[50:150, 100:250] = True
    polygons = mask_polygons(noisy)
    assert 1 <= len(polygons) <= 20
    areas = [
        abs(np.dot(p[0::2], np.roll(p[1::2], 1)) - np.dot(p[1::2], np.roll(p[0::2], 1))) / 2 for p in polygons
    ]
    assert areas[0] == max(areas), "largest part first"
    assert areas[0] > 0.2, "the 150x100 block is kept"
