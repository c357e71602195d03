"""Backend overhead benchmark: one SAM click through HTTP /predict vs the bare engine, side by side.

    python bench/backend.py [--sizes 1280x960,4032x3024 --repeats 20] [--offload] [--label-studio]

`--offload` adds the bytes sent to a RunPod endpoint per first and repeated click (`bench/offload.py`:
a counting proxy in front of the real local worker); `--label-studio` adds the first click after
opening a task vs a cached click through a real Label Studio, on a random-initialised full-size SAM 2.1
(`bench/prewarm.py`; minutes on a CPU).

Both paths share one process, one engine and one warm embedding cache, so the difference is the
backend's own cost: HTTP, JSON, Label Studio context parsing, image lookup, brush RLE and polygons.
The bare engine is `Engine.run(request)` answering the wire format (COCO RLE), as the worker does;
where the engine can hand masks over as arrays (local mode), that call is shown too.
Goal: overhead ratio <= 1.10.
"""

from __future__ import annotations

import argparse
import inspect
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
    parser.add_argument("--sizes", default="1280x960,4032x3024", help="comma-separated WIDTHxHEIGHT")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--offload", action="store_true", help="also bytes per offloaded click")
    parser.add_argument("--label-studio", action="store_true", help="also first vs cached click through LS")
    args = parser.parse_args()
    sizes = [tuple(int(side) for side in size.split("x")) for size in args.sizes.split(",")]

    prepare_tiny_cache()
    os.environ.update(ALLOW_PRIVATE_URLS="true", IMAGE_CACHE_DIR=tempfile.mkdtemp(prefix="bench-images-"))
    from werkzeug.serving import make_server

    from _wsgi import app
    from ml_backend.config import settings
    from ml_backend.labelstudio.predictor import get_backend

    engine = get_backend(settings)
    server = make_server("127.0.0.1", 0, app, threaded=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    rows = []
    try:
        for width, height in sizes:
            rows += bench_size(
                engine, f"http://127.0.0.1:{server.server_port}/predict", width, height, args.repeats
            )
    finally:
        server.shutdown()

    device = engine.describe()["device"]
    print(f"{args.repeats} cached clicks per path, tiny SAM 2.1 on {device}")
    for row in rows:
        print(row)
    print("goal: overhead <= 1.10x")
    if args.offload:
        from bench.offload import main as offload_bytes

        print()
        offload_bytes([])
    if args.label_studio:
        from bench.prewarm import main as first_click_through_label_studio

        print()
        first_click_through_label_studio([])


def bench_size(engine, predict_url: str, width: int, height: int, repeats: int) -> list[str]:
    """Rows for one image size: random-model (noisy) masks, then smooth ones."""
    import requests

    from ml_backend.config import settings
    from ml_backend.models.base import SegmentMask
    from ml_backend.schemas import SegmentRequest
    from tests.labelstudio.configs import SAM_CONFIG
    from tests.support import make_image, serve_images

    http = requests.Session()
    arrays_supported = "arrays" in inspect.signature(engine.run).parameters
    with serve_images() as images:
        image_url = images.add(f"/photo-{width}x{height}.jpg", make_image(width, height, fmt="JPEG"))
        known = set(Path(settings.image_cache_dir).rglob("*"))
        http.post(
            predict_url, json=keypoint_payload(image_url, width, height, SAM_CONFIG, 30.0)
        ).raise_for_status()
        local_file = next(
            path for path in Path(settings.image_cache_dir).rglob("*") if path.is_file() and path not in known
        )

        def request(x: float) -> SegmentRequest:
            return SegmentRequest(
                model="sam2",
                image_path=str(local_file),
                prompt_type="points",
                points=[(x / 100, 0.4)],
                labels=[1],
            )

        paths = {
            "bare engine": lambda x: engine.run(request(x)),
            "HTTP /predict": lambda x: http.post(
                predict_url, json=keypoint_payload(image_url, width, height, SAM_CONFIG, x)
            ).raise_for_status(),
        }
        if arrays_supported:
            paths["engine, arrays"] = lambda x: engine.run(request(x), arrays=True)

        def measure() -> dict[str, float]:
            samples: dict[str, list[float]] = {name: [] for name in paths}
            for index in range(repeats):
                x = 20.0 + index % 50
                for name, action in paths.items():
                    started = time.perf_counter()
                    action(x)
                    samples[name].append(time.perf_counter() - started)
            return {name: median_ms(values) for name, values in samples.items()}

        random_masks = measure()
        # A random-weight SAM draws speckle noise: thousands of runs and contours per mask. Real
        # masks are smooth, so measure again with the model's output swapped for a smooth ellipse.
        segmenter = engine.registry.get("sam2")
        real_segment = segmenter.segment
        ellipse = smooth_mask(width, height)

        def smooth_segment(*call_args, **call_kwargs):
            return [SegmentMask(m.score, ellipse) for m in real_segment(*call_args, **call_kwargs)]

        segmenter.segment = smooth_segment
        try:
            smooth_masks = measure()
        finally:
            del segmenter.segment
    rows = []
    for kind, times in (("noisy (random model)", random_masks), ("smooth", smooth_masks)):
        ratio = times["HTTP /predict"] / times["bare engine"]
        arrays = f" | engine, arrays {times['engine, arrays']:7.1f} ms" if arrays_supported else ""
        rows.append(
            f"{width}x{height} {kind:21s} bare engine {times['bare engine']:7.1f} ms{arrays} | "
            f"HTTP /predict {times['HTTP /predict']:7.1f} ms | overhead {ratio:5.2f}x"
        )
    return rows


def smooth_mask(width: int, height: int):
    import numpy as np

    ys, xs = np.mgrid[0:height, 0:width]
    return ((xs - width / 2) / (width / 4)) ** 2 + ((ys - height / 2) / (height / 4)) ** 2 <= 1


if __name__ == "__main__":
    main()
