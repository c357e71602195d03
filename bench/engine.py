"""Engine benchmark: SAM 2.1 first click vs cached click, Grounding DINO throughput.

    python bench/engine.py                 # tiny random models (fast, checks the mechanics)
    python bench/engine.py --size full     # random-initialised full-size configs: real timings, no weights

Everything is measured side by side in one run, and the ratios are what to compare across
machines (absolute numbers on a shared CPU are noisy). Goal: cached click ≥ 8× faster than a
first click at full size.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

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
    from transformers import Sam2Config, Sam2HieraDetConfig, Sam2Model, Sam2Processor, Sam2VisionConfig
    from transformers.models.sam2.image_processing_sam2 import Sam2ImageProcessor

    from ml_backend.models.sam2 import PromptableSegmenter

    # The geometry of facebook/sam2.1-hiera-large (Hiera-L: 144 channels, stages 2-6-36-4).
    backbone = Sam2HieraDetConfig(
        hidden_size=144,
        num_attention_heads=2,
        blocks_per_stage=[2, 6, 36, 4],
        embed_dim_per_stage=[144, 288, 576, 1152],
        num_attention_heads_per_stage=[2, 4, 8, 16],
        global_attention_blocks=[23, 33, 43],
        window_size_per_stage=[8, 4, 16, 8],
        window_positional_embedding_background_size=[7, 7],
    )
    vision = Sam2VisionConfig(backbone_config=backbone, backbone_channel_list=[1152, 576, 288, 144])
    model = Sam2Model(Sam2Config(vision_config=vision)).to(runtime.device, runtime.dtype).eval()
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


def bench_sam_clicks(segmenter, repeats: int) -> tuple[float, float]:
    from ml_backend.models.base import SegmentPrompt

    image = random_image(0)
    click = SegmentPrompt(points=[(0.5, 0.5)], labels=[1])
    segmenter.segment(image, click, multimask=False)  # warm-up: kernels, allocator

    def first_click() -> None:
        segmenter.cache.clear()
        segmenter.segment(image, click, multimask=False)

    def cached_click() -> None:
        segmenter.segment(image, SegmentPrompt(points=[(0.3, 0.6)], labels=[1]), multimask=False)

    first = median_seconds(first_click, repeats)
    cached = median_seconds(cached_click, repeats * 3)
    return first, cached


def bench_grounding_dino(detector, images: int) -> float:
    batch = [random_image(seed, 800, 600) for seed in range(1, images + 1)]
    detector.detect(batch[0], ["product"], box_threshold=0.3, text_threshold=0.25)
    started = time.perf_counter()
    for image in batch:
        detector.detect(image, ["shelf", "product", "price tag"], box_threshold=0.3, text_threshold=0.25)
    return images / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--size", choices=["tiny", "full"], default="tiny")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()

    prepare_tiny_cache()
    import torch

    from ml_backend.models.base import Runtime, resolve_device, resolve_dtype

    device = resolve_device(args.device)
    runtime = Runtime(device=device, dtype=resolve_dtype("auto", device), embedding_cache_size=4)
    segmenter, detector = load_models(args.size, runtime)
    first, cached = bench_sam_clicks(segmenter, args.repeats)
    throughput = bench_grounding_dino(detector, args.images)

    print(
        f"size={args.size} device={device} dtype={runtime.dtype} torch={torch.__version__} threads={torch.get_num_threads()}"
    )
    print(f"SAM 2.1 first click (embedding + decoder): {first * 1000:9.1f} ms")
    print(f"SAM 2.1 cached click (decoder only):        {cached * 1000:9.1f} ms")
    print(f"cached-click speed-up:                     {first / cached:9.1f}x   (goal at full size: >= 8x)")
    print(f"Grounding DINO, 800x600, 3 phrases:        {throughput:9.2f} images/s")


if __name__ == "__main__":
    main()
