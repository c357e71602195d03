"""Engine benchmark: SAM 2.1 clicks through `Engine.run` at 1280x960 and 4032x3024, mask conversions,
Grounding DINO throughput.

    python bench/engine.py                 # tiny random models (fast, checks the mechanics)
    python bench/engine.py --size full     # random-initialised full-size configs: real timings, no weights

Everything is measured side by side in one run, and the ratios are what to compare across
machines (absolute numbers on a shared CPU are noisy). Goals: cached click >= 8x faster than a
first click at full size; each mask conversion of a 12-megapixel mask in a few milliseconds.
"Noisy" masks are what the random-weight model draws (speckle), "smooth" ones an ellipse.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def prepare_tiny_cache() -> None:
    cache = Path(os.environ.get("BENCH_HF_CACHE", Path(tempfile.gettempdir()) / "od-annotation-bench-hf"))
    os.environ.update(
        HF_HUB_CACHE=str(cache),
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        HF_HUB_DISABLE_PROGRESS_BARS="1",
    )
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()
    transformers_logging.set_verbosity_error()
    from tests.fixtures.tiny_models import build_hf_cache

    build_hf_cache(cache)


def median_seconds(action: Callable[[], object], repeats: int) -> float:
    samples = []
    for _ in range(repeats):
        started = time.perf_counter()
        action()
        samples.append(time.perf_counter() - started)
    return statistics.median(samples)


def random_image(seed: int, width: int = 1280, height: int = 960):
    import numpy as np

    from ml_backend.images import RGBImage

    rng = np.random.default_rng(seed)
    from PIL import Image

    pixels = rng.integers(0, 255, (height, width, 3), dtype=np.uint8)
    return RGBImage(pil=Image.fromarray(pixels), key=f"bench-{seed}-{width}x{height}")


def full_size_sam2(runtime):
    from transformers import Sam2Model, Sam2Processor
    from transformers.models.sam2.image_processing_sam2 import Sam2ImageProcessor

    from ml_backend.models.sam2 import PromptableSegmenter
    from tests.fixtures.official_sam2 import HIERA_L, transformers_config

    model = Sam2Model(transformers_config(HIERA_L)).to(runtime.device, runtime.dtype).eval()
    processor = Sam2Processor(image_processor=Sam2ImageProcessor())
    return PromptableSegmenter(model, processor, runtime, "random sam2.1-hiera-large geometry")


def full_size_grounding_dino(runtime):
    from transformers import AutoProcessor, GroundingDinoConfig, GroundingDinoForObjectDetection

    from ml_backend.models.grounding_dino import GroundingDinoDetector

    # Default config = the Swin-T Grounding DINO; the tiny fixture's processor/tokenizer fits its ids.
    processor = AutoProcessor.from_pretrained("IDEA-Research/grounding-dino-base")
    model = GroundingDinoForObjectDetection(GroundingDinoConfig()).to(runtime.device, runtime.dtype).eval()
    return GroundingDinoDetector(model, processor, runtime, "random grounding-dino (Swin-T) geometry")


def load_models(size: str, runtime):
    if size == "full":
        return full_size_sam2(runtime), full_size_grounding_dino(runtime)
    from ml_backend.models import grounding_dino, sam2

    return sam2.load("facebook/sam2.1-hiera-large", runtime), grounding_dino.load(
        "IDEA-Research/grounding-dino-base", runtime
    )


PHOTO_SIZES = ((1280, 960), (4032, 3024))
CLICK = (0.5, 0.5)


@dataclass(frozen=True)
class ClickTimes:
    first: float  # embedding + decoder + response
    cached: float  # decoder + upsampling + response, embedding cached
    segment: float  # the adapter's `segment` alone, embedding cached
    mask: np.ndarray  # what the model drew for the click (the "noisy" mask)


def photo_file(directory: Path, width: int, height: int) -> Path:
    from PIL import Image

    pixels = np.random.default_rng(width).integers(0, 255, (height, width, 3), dtype=np.uint8)
    path = directory / f"photo-{width}x{height}.jpg"
    Image.fromarray(pixels).save(path, quality=90)
    return path


def bench_clicks(engine, segmenter, path: Path, repeats: int) -> ClickTimes:
    from ml_backend.models.base import SegmentPrompt
    from ml_backend.schemas import SegmentRequest

    def click(x: float, y: float) -> SegmentRequest:
        return SegmentRequest(
            model="sam2", image_path=str(path), prompt_type="points", points=[(x, y)], labels=[1]
        )

    engine.run(click(*CLICK))  # warm-up: kernels, allocator, decoded-file cache

    def first_click() -> None:
        segmenter.cache.clear()
        engine.run(click(*CLICK))

    positions = iter(np.random.default_rng(1).uniform(0.1, 0.9, (10_000, 2)))
    first = median_seconds(first_click, repeats)
    cached = median_seconds(lambda: engine.run(click(*next(positions))), repeats * 3)
    image = engine.load_image(click(*CLICK))
    prompt = SegmentPrompt(points=[CLICK], labels=[1])
    segment = median_seconds(lambda: segmenter.segment(image, prompt, multimask=False), repeats * 3)
    mask = segmenter.segment(image, prompt, multimask=False)[0].mask
    return ClickTimes(first, cached, segment, mask)


def smooth_mask(width: int, height: int) -> np.ndarray:
    ys, xs = np.mgrid[0:height, 0:width]
    return ((xs - width / 2) / (width / 4)) ** 2 + ((ys - height / 2) / (height / 4)) ** 2 <= 1


def bench_conversions(mask: np.ndarray, repeats: int) -> dict[str, float]:
    """Median seconds of each conversion of one mask, measured separately."""
    from ml_backend.labelstudio.brush import mask_to_rle
    from ml_backend.masks import decode_rle, encode_rle, mask_polygons

    rle = encode_rle(mask)
    return {
        "COCO RLE encode": median_seconds(lambda: encode_rle(mask), repeats),
        "COCO RLE decode": median_seconds(lambda: decode_rle(rle), repeats),
        "brush RLE (Label Studio)": median_seconds(lambda: mask_to_rle(mask), repeats),
        "polygons": median_seconds(lambda: mask_polygons(mask), repeats),
    }


def bench_grounding_dino(detector, images: int) -> float:
    batch = [random_image(seed, 800, 600) for seed in range(1, images + 1)]
    detector.detect(batch[0], ["product"], box_threshold=0.3, text_threshold=0.25)
    started = time.perf_counter()
    for image in batch:
        detector.detect(image, ["shelf", "product", "price tag"], box_threshold=0.3, text_threshold=0.25)
    return images / (time.perf_counter() - started)


def engine_with(segmenter, device: str):
    """An Engine reading local files, whose `sam2` is the given segmenter."""
    from ml_backend.config import load_settings
    from ml_backend.engine import Engine

    engine = Engine(load_settings(device=device), allow_local_paths=True)
    engine.registry._models["sam2"] = segmenter  # the bench's model instead of a hub download
    return engine


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--size", choices=["tiny", "full"], default="tiny")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--images", type=int, default=8, help="Grounding DINO images (0: skip)")
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()

    prepare_tiny_cache()
    import torch

    from ml_backend.models.base import Runtime, resolve_device, resolve_dtype

    device = resolve_device(args.device)
    runtime = Runtime(device=device, dtype=resolve_dtype("auto", device), embedding_cache_size=4)
    torch.manual_seed(0)  # the same random weights, hence the same "noisy" masks, in every run
    segmenter, detector = load_models(args.size, runtime)
    engine = engine_with(segmenter, str(device))
    print(
        f"size={args.size} device={device} dtype={runtime.dtype} torch={torch.__version__} threads={torch.get_num_threads()}"
    )
    with tempfile.TemporaryDirectory(prefix="bench-engine-") as directory:
        for width, height in PHOTO_SIZES:
            clicks = bench_clicks(engine, segmenter, photo_file(Path(directory), width, height), args.repeats)
            print(f"\nSAM 2.1 at {width}x{height} (JPEG file, Engine.run, COCO RLE response)")
            print(f"  first click (embedding + decoder):      {clicks.first * 1000:9.1f} ms")
            print(f"  cached click, Engine.run:               {clicks.cached * 1000:9.1f} ms")
            print(f"  cached click, segment() alone:          {clicks.segment * 1000:9.1f} ms")
            print(
                f"  cached-click speed-up:                  {clicks.first / clicks.cached:9.1f}x   (goal at full size: >= 8x)"
            )
            smooth = bench_conversions(smooth_mask(width, height), args.repeats * 2)
            noisy = bench_conversions(clicks.mask, args.repeats * 2)
            print(f"  {'conversion of one mask':34s} {'smooth':>9s} {'noisy':>9s}")
            for name in smooth:
                print(f"    {name:32s} {smooth[name] * 1000:6.1f} ms {noisy[name] * 1000:6.1f} ms")
    if args.images:
        throughput = bench_grounding_dino(detector, args.images)
        print(f"\nGrounding DINO, 800x600, 3 phrases:        {throughput:9.2f} images/s")


if __name__ == "__main__":
    main()
