"""Our SAM 2.1 adapter against Meta's `SAM2ImagePredictor` on identical (tiny, random) weights.

The official model is built from its hydra config and converted key by key into transformers'
`Sam2Model` (tests/fixtures/official_sam2.py). Skipped where the optional `sam2` package is absent.
"""

from __future__ import annotations

import io

import numpy as np
import pytest

pytest.importorskip("sam2")

import torch
from PIL import Image, ImageOps

from ml_backend.images import ImageLimits, RGBImage, decode_image
from ml_backend.models.base import Runtime, SegmentPrompt
from ml_backend.models.sam2 import PromptableSegmenter, pixel_values
from tests.fixtures.official_sam2 import (
    TINY,
    build_official,
    converted_model,
    official_predictor,
    photo_like,
    transformers_processor,
)

# the sam2 package scripts its transforms with torch.jit, which torch 2.14 deprecates
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:FutureWarning")
EXIF_ORIENTATION = 0x0112
LIMITS = ImageLimits(max_bytes=10_000_000, max_pixels=10_000_000, timeout_s=5.0, allow_private_urls=False)
# A pixel may flip only where the official logit sits at the threshold: both sides compute the same
# numbers in a different order (prompt tokens, coordinate scaling), which moves logits by ~1e-6.
TIE = 1e-3

PROMPTS = {
    "1 click": SegmentPrompt(points=[(0.45, 0.55)], labels=[1]),
    "2 pos + 1 neg": SegmentPrompt(points=[(0.45, 0.55), (0.62, 0.4), (0.2, 0.18)], labels=[1, 1, 0]),
    "box": SegmentPrompt(box=(0.22, 0.2, 0.78, 0.82)),
    "box + click": SegmentPrompt(points=[(0.5, 0.5)], labels=[1], box=(0.22, 0.2, 0.78, 0.82)),
}


@pytest.fixture(scope="module")
def models() -> tuple[PromptableSegmenter, object, object]:
    official = build_official(TINY, seed=0)
    model, conversion = converted_model(official, TINY)
    runtime = Runtime(torch.device("cpu"), torch.float32)
    segmenter = PromptableSegmenter(model, transformers_processor(), runtime, "tiny official sam2.1")
    return segmenter, official_predictor(official), conversion


def png_image() -> tuple[RGBImage, np.ndarray]:
    photo = photo_like(320, 240, seed=1)
    return RGBImage(pil=photo, key="png-320x240"), np.array(photo)


def exif_rotated_jpeg() -> tuple[RGBImage, np.ndarray]:
    """A 200x150 JPEG stored sideways (EXIF orientation 6): ours decodes it, the official side gets
    the pixels the way its docs do (PIL + `exif_transpose`)."""
    photo = photo_like(200, 150, seed=6)
    exif = photo.getexif()
    exif[EXIF_ORIENTATION] = 6
    buffer = io.BytesIO()
    photo.save(buffer, format="JPEG", quality=90, exif=exif)
    data = buffer.getvalue()
    with Image.open(io.BytesIO(data)) as opened:
        upright = np.array(ImageOps.exif_transpose(opened).convert("RGB"))
    return decode_image(data, LIMITS), upright


def official_mask(predictor: object, prompt: SegmentPrompt, height: int, width: int):
    """The official best mask's full-size logits and score, called as the official docs do."""
    scale = np.array([width, height], dtype=np.float64)
    ambiguous = len(prompt.points) == 1 and prompt.box is None
    logits, scores, _ = predictor.predict(
        point_coords=np.array(prompt.points) * scale if prompt.points else None,
        point_labels=np.array(prompt.labels) if prompt.points else None,
        box=np.array(prompt.box) * np.tile(scale, 2) if prompt.box is not None else None,
        multimask_output=ambiguous,
        return_logits=True,
    )
    best = int(np.argmax(scores))
    return logits[best], float(scores[best])


def test_conversion_maps_every_image_key_and_leaves_out_only_video_keys(models):
    _, _, conversion = models
    assert conversion.mapped > 0
    assert conversion.video_only, "the official model has video-only weights to leave out"
    assert all(not key.startswith(("image_encoder.", "sam_")) for key in conversion.video_only)


def test_embeddings_equal_the_official_ones_for_the_same_pixels(models):
    segmenter, predictor, _ = models
    image, upright = png_image()
    predictor.set_image(upright)
    official_pixels = predictor._transforms(upright)[None]
    ours_pixels = pixel_values(image, segmenter.preprocessing, torch.device("cpu"))
    torch.testing.assert_close(ours_pixels, official_pixels, rtol=0, atol=1e-6)
    embeddings = segmenter.embed(image).embeddings
    official = [*predictor._features["high_res_feats"], predictor._features["image_embed"]]
    for ours, theirs in zip(embeddings, official, strict=True):
        torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-5)


@pytest.mark.parametrize("image_kind", ["png", "exif-rotated jpeg"])
@pytest.mark.parametrize("prompt_name", list(PROMPTS))
def test_masks_match_the_official_predictor(models, image_kind, prompt_name):
    segmenter, predictor, _ = models
    image, upright = png_image() if image_kind == "png" else exif_rotated_jpeg()
    assert (image.height, image.width) == upright.shape[:2]
    np.testing.assert_array_equal(np.array(image.pil), upright)
    prompt = PROMPTS[prompt_name]
    predictor.set_image(upright)
    logits, official_score = official_mask(predictor, prompt, image.height, image.width)

    [ours] = segmenter.segment(image, prompt, multimask=False)

    theirs = logits > predictor.mask_threshold
    differing = ours.mask != theirs
    union = np.count_nonzero(ours.mask | theirs)
    iou = 1.0 if union == 0 else 1 - np.count_nonzero(differing) / union
    assert 0 < np.count_nonzero(theirs) < theirs.size, "degenerate official mask: the test would prove little"
    assert iou >= 0.999
    assert np.all(np.abs(logits[differing]) < TIE), "a pixel differs away from the threshold"
    assert ours.score == pytest.approx(official_score, abs=1e-5)
