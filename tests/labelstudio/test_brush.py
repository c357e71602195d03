import numpy as np
import pytest
from label_studio_sdk.converter import brush as sdk_brush

from ml_backend.labelstudio.brush import mask_to_rle


def masks() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    block = np.zeros((48, 64), dtype=bool)
    block[10:30, 5:40] = True
    return {
        "noise": rng.random((37, 53)) > 0.5,
        "sparse": rng.random((60, 80)) > 0.97,
        "block": block,
        "empty": np.zeros((20, 30), dtype=bool),
        "full": np.ones((20, 30), dtype=bool),
        "long runs": np.ones((200, 400), dtype=bool),
        "single pixel": np.ones((1, 1), dtype=bool),
        "aligned": np.ones((2, 2), dtype=bool),
    }


@pytest.mark.parametrize("name", list(masks()))
def test_same_bytes_as_the_sdk_encoder(name: str) -> None:
    mask = masks()[name]
    assert mask_to_rle(mask) == sdk_brush.mask2rle(mask.astype(np.uint8) * 255)


@pytest.mark.parametrize("name", ["noise", "block", "long runs"])
def test_decodes_back_to_the_mask(name: str) -> None:
    mask = masks()[name]
    pixels = sdk_brush.decode_rle(mask_to_rle(mask)).reshape(*mask.shape, 4)
    assert np.array_equal(pixels[..., 3] == 255, mask)
    assert set(np.unique(pixels)) <= {0, 255}


def ellipse(width: int, height: int) -> np.ndarray:
    ys, xs = np.mgrid[0:height, 0:width]
    return ((xs - width / 2) / (width / 3)) ** 2 + ((ys - height / 2) / (height / 4)) ** 2 <= 1


@pytest.mark.parametrize(("width", "height"), [(1280, 960), (4032, 3024)])
def test_same_bytes_as_the_sdk_on_photo_sized_masks(width: int, height: int) -> None:
    smooth = ellipse(width, height)
    assert mask_to_rle(smooth) == sdk_brush.mask2rle(smooth.astype(np.uint8) * 255)
    # Speckle over a smooth shape: thousands of short runs and long ones split at 2**16.
    speckled = smooth.copy()
    speckled[::97, ::13] ^= True
    assert mask_to_rle(speckled) == sdk_brush.mask2rle(speckled.astype(np.uint8) * 255)


def test_uint8_and_fortran_ordered_masks_encode_like_boolean_ones() -> None:
    mask = masks()["noise"]
    expected = mask_to_rle(mask)
    assert mask_to_rle(mask.astype(np.uint8) * 7) == expected
    assert mask_to_rle(np.asfortranarray(mask)) == expected
