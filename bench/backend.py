"""Backend overhead benchmark: one SAM click through HTTP /predict vs the bare engine, side by side.

    python bench/backend.py [--width 1280 --height 960 --repeats 20]

Both paths share one process, one engine and one warm embedding cache, so the difference is the
backend's own cost: HTTP, JSON, Label Studio context parsing, image lookup, brush RLE encoding.
Goal: overhead ratio <= 1.10.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.engine import prepare_tiny_cache  # noqa: E402


def keypoint_payload(image_url: str, width: int, height: int, config: str, x: float) -> dict:
    point = {
        "original_width": width,
        "original_height": height,
        "image_rotation": 0,
        "value": {"x": x, "y": 40.0, "width": 0.3, "labels": ["Banana"], "keypointlabels": ["Banana"]},
        "is_positive": True,
        "id": "kp",
        "from_name": "tag2",
        "to_name": "image",
        "type": "keypointlabels",
    }
    return {
        "tasks": [{"id": 1, "data": {"image": image_url}}],
        "project": "1.1700000000",
        "label_config": config,
        "params": {"context": {"result": [point]}},
    }


def median_ms(samples: list[float]) -> float:
    return statistics.median(samples) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--width", type=int, default=1280)
    parser.add_argument("--height", type=int, default=960)
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()

    prepare_tiny_cache()
    os.environ.update(ALLOW_PRIVATE_URLS="true", IMAGE_CACHE_DIR=tempfile.mkdtemp(prefix="bench-images-"))
    import requests
    from werkzeug.serving import make_server

    from _wsgi import app
    from ml_backend.config import settings
    from ml_backend.labelstudio.predictor import get_backend
    from ml_backend.schemas import SegmentRequest
    from tests.labelstudio.configs import SAM_CONFIG
    from tests.support import make_image, serve_images

    engine = get_backend(settings)
    server = make_server("127.0.0.1", 0, app, threaded=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    predict_url = f"http://127.0.0.1:{server.server_port}/predict"
    http = requests.Session()

    with serve_images() as images:
        image_url = images.add("/photo.jpg", make_image(args.width, args.height, fmt="JPEG"))
        http.post(
            predict_url, json=keypoint_payload(image_url, args.width, args.height, SAM_CONFIG, 30.0)
        ).raise_for_status()
        local_file = next(Path(settings.image_cache_dir).rglob("*"))

        def bare_click(x: float) -> None:
            request = SegmentRequest(
                model="sam2",
                image_path=str(local_file),
                prompt_type="points",
                points=[(x / 100, 0.4)],
                labels=[1],
            )
            engine.run(request)

        def http_click(x: float) -> None:
            response = http.post(
                predict_url, json=keypoint_payload(image_url, args.width, args.height, SAM_CONFIG, x)
            )
            response.raise_for_status()

        bare, over_http = [], []
        for index in range(args.repeats):
            x = 20.0 + index % 50
            for action, samples in ((bare_click, bare), (http_click, over_http)):
                started = time.perf_counter()
                action(x)
                samples.append(time.perf_counter() - started)
    server.shutdown()

    print(
        f"image {args.width}x{args.height}, {args.repeats} cached clicks per path, tiny SAM 2.1 on {engine.describe()['device']}"
    )
    print(f"bare engine (SegmentRequest → masks):     {median_ms(bare):8.1f} ms")
    print(f"HTTP /predict (LS context → LS results):  {median_ms(over_http):8.1f} ms")
    print(
        f"overhead ratio:                           {median_ms(over_http) / median_ms(bare):8.2f}x   (goal <= 1.10)"
    )


if __name__ == "__main__":
    main()
