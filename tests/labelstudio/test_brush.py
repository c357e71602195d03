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
