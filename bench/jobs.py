"""Job pipeline benchmark: do image downloads overlap inference?

    python bench/jobs.py [--tasks 32 --latency 0.2]

Serves N images from a loopback server that sleeps `--latency` seconds per image, then measures, in
one run: the sum of download times (each image fetched alone), the sum of inference times (each
image run alone from disk), and the total time of the code a job chunk runs (`Predictor.annotate`:
concurrent downloads while the model runs). Goal: total <= 1.2 x max(download, inference).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.engine import prepare_tiny_cache  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tasks", type=int, default=32)
    parser.add_argument("--latency", type=float, default=0.2, help="seconds the image server waits per image")
    parser.add_argument("--size", type=int, default=320, help="image width (height = 3/4 of it)")
    args = parser.parse_args()

    prepare_tiny_cache()
    os.environ.update(ALLOW_PRIVATE_URLS="true", DEFAULT_BOX_THRESHOLD="0.0", DEFAULT_TEXT_THRESHOLD="0.0")
    from ml_backend.config import load_settings
    from ml_backend.engine import Engine
    from ml_backend.images import ImageLimits
    from ml_backend.labelstudio.access import ImageCache, LabelStudioAuth, TaskImageResolver
    from ml_backend.labelstudio.interface import ProjectInterface
    from ml_backend.labelstudio.predictor import Predictor
    from ml_backend.schemas import DetectRequest
    from tests.labelstudio.configs import RECT_ONLY_CONFIG
    from tests.support import make_image, serve_images

    settings = load_settings(device="auto")
    engine = Engine(settings, allow_local_paths=True)
    interface = ProjectInterface.from_config(RECT_ONLY_CONFIG)
    limits = ImageLimits.from_settings(settings)

    def resolver() -> TaskImageResolver:
        cache = ImageCache(tempfile.mkdtemp(prefix="bench-jobs-"), 1 << 30)
        return TaskImageResolver(LabelStudioAuth(None, None), limits, cache)

    with serve_images() as server:
        urls = [
            server.add(
                f"/img{i}.jpg",
                make_image(args.size + i % 4, args.size * 3 // 4, fmt="JPEG"),
                delay_s=args.latency,
            )
            for i in range(args.tasks)
        ]
        tasks = [{"id": i, "data": {"photo": url}} for i, url in enumerate(urls)]
        engine.run(
            DetectRequest(model="grounding_dino", image_url=urls[0], text_prompt="car . person")
        )  # warm-up

        sequential = resolver()
        started = time.perf_counter()
        paths = [sequential.local_path(url) for url in urls]
        download_s = time.perf_counter() - started

        started = time.perf_counter()
        for path in paths:
            engine.run(DetectRequest(model="grounding_dino", image_path=path, text_prompt="car . person"))
        inference_s = time.perf_counter() - started

        predictor = Predictor(engine, resolver().local_path, settings)
        started = time.perf_counter()
        outcomes = predictor.annotate(tasks, interface)
        total_s = time.perf_counter() - started

    assert all(outcome.prediction is not None for outcome in outcomes)
    larger = max(download_s, inference_s)
    print(
        f"{args.tasks} tasks, {args.latency:.2f}s latency per image, tiny Grounding DINO on {engine.describe()['device']}"
    )
    print(f"sum of downloads (one at a time):   {download_s:7.2f} s")
    print(f"sum of inference (one at a time):   {inference_s:7.2f} s")
    print(f"job pipeline total:                 {total_s:7.2f} s")
    print(f"total / (downloads + inference):    {total_s / (download_s + inference_s):7.2f}")
    print(f"total / max(downloads, inference):  {total_s / larger:7.2f}   (goal <= 1.2)")


if __name__ == "__main__":
    main()
