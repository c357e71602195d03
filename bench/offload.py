"""Offload benchmark: bytes sent to the RunPod endpoint per click, first vs repeated, side by side.

    python bench/offload.py [--clicks 3 --megapixels 12]

Starts the real worker (`python -m ml_backend.worker --rp_serve_api`, tiny models, CPU), puts a
counting proxy in front of it and clicks a 4 MB photo-like JPEG through `RemoteEngine`, as the
backend does with INFERENCE_MODE=runpod:

- full image each click: what every click cost before `image_ref` (a fresh client per click; also
  what a first click costs now)
- image_ref: one client; the first click uploads, the next ones name the image by hash and size
- prewarm: an `embed` request uploads the image when the task opens; the first click sends the ref
- worker restarted: the ref misses, the client resends once with the bytes

Bytes are counted on the wire (request line, headers and body of every POST, /status polls included).
Only bytes are reported: on loopback with tiny models on a shared CPU, click times say nothing about
an upload over a real link (5 MB take ~1 s at 40 Mbit/s).
"""

from __future__ import annotations

import argparse
import io
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.engine import prepare_tiny_cache  # noqa: E402

KB = 1000
MB = 1000 * 1000  # decimal, as file sizes and upload rates are quoted


def photo_like_jpeg(megapixels: float, seed: int = 0) -> bytes:
    """Smooth colour fields plus sensor-like grain: compresses like a photo (~0.33 bytes/pixel at q90)."""
    import numpy as np
    from PIL import Image

    width = int((megapixels * 1e6 * 4 / 3) ** 0.5)
    height = width * 3 // 4
    rng = np.random.default_rng(seed)
    fields = Image.fromarray(rng.integers(0, 256, (12, 16, 3), dtype=np.uint8))
    base = np.asarray(fields.resize((width, height), Image.Resampling.BICUBIC), dtype=np.float32)
    grain = rng.normal(0, 8, (height, width, 1)).astype(np.float32)
    out = io.BytesIO()
    Image.fromarray(np.clip(base + grain, 0, 255).astype(np.uint8)).save(out, format="JPEG", quality=90)
    return out.getvalue()


def start_worker(port: int, log_path: Path) -> subprocess.Popen:
    env = {**os.environ, "DEVICE": "cpu", "PYTHONUNBUFFERED": "1", "LOG_LEVEL": "WARNING"}
    command = [sys.executable, "-m", "ml_backend.worker", "--rp_serve_api"]
    command += ["--rp_api_host", "127.0.0.1", "--rp_api_port", str(port)]
    with log_path.open("ab") as log:
        return subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)


def measured(proxy, action: Callable[[], object]) -> tuple[int, int]:
    """(bytes sent, POST requests) of one action through the proxy."""
    mark = proxy.mark()
    action()
    return proxy.sent_since(mark), len(proxy.paths_since(mark))


def human(size: int) -> str:
    if size < 10 * KB:
        return f"{size} bytes"
    return f"{size / MB:.2f} MB" if size >= 100 * KB else f"{size / KB:.1f} KB"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--clicks", type=int, default=3)
    parser.add_argument("--megapixels", type=float, default=12.0)
    args = parser.parse_args(argv)

    prepare_tiny_cache()
    from ml_backend.config import load_settings
    from ml_backend.remote import RemoteEngine
    from ml_backend.schemas import EmbedRequest, SegmentRequest
    from tests.counting_proxy import counting_proxy
    from tests.support import free_port, stop_process, wait_for_http

    work = Path(tempfile.mkdtemp(prefix="bench-offload-"))
    photo, other = work / "photo.jpg", work / "other.jpg"
    photo.write_bytes(photo_like_jpeg(args.megapixels, seed=0))
    other.write_bytes(photo_like_jpeg(args.megapixels, seed=1))
    size = photo.stat().st_size
    port = free_port()
    worker_url = f"http://127.0.0.1:{port}"
    log_path = work / "worker.log"
    worker = start_worker(port, log_path)
    try:
        wait_for_http(f"{worker_url}/openapi.json", timeout=180)
        with counting_proxy(worker_url) as proxy:
            settings = load_settings(
                runpod_base_url=proxy.url, runpod_endpoint_od_annotation="", runpod_timeout_s=600
            )

            def click(engine: RemoteEngine, path: Path, index: int) -> Callable[[], object]:
                point = (0.3 + 0.1 * (index % 5), 0.5)
                return lambda: engine.run(SegmentRequest(model="sam2", image_path=str(path), point=point))

            full = [measured(proxy, click(RemoteEngine(settings), photo, i)) for i in range(args.clicks)]
            client = RemoteEngine(settings)
            by_ref = [measured(proxy, click(client, photo, i)) for i in range(args.clicks)]
            prewarm = measured(proxy, lambda: client.run(EmbedRequest(model="sam2", image_path=str(other))))
            after_prewarm = measured(proxy, click(client, other, 0))

            stop_process(worker)
            worker = start_worker(port, log_path)
            wait_for_http(f"{worker_url}/openapi.json", timeout=180)
            restarted = measured(proxy, click(client, photo, 0))
            after_restart = measured(proxy, click(client, photo, 1))
    finally:
        stop_process(worker)
        shutil.rmtree(work, ignore_errors=True)

    print(
        f"image: {human(size)} photo-like JPEG, {args.megapixels:g} MP; bytes sent to the endpoint per click"
    )
    print(f"{'click':<14}{'full image each click (before)':>32}{'image_ref (now)':>20}")
    for index, ((full_bytes, _), (ref_bytes, _)) in enumerate(zip(full, by_ref, strict=True)):
        name = "first" if index == 0 else f"repeat {index}"
        print(f"{name:<14}{human(full_bytes):>32}{human(ref_bytes):>20}")
    repeats = [sent for sent, _ in by_ref[1:]]
    if repeats:
        before = statistics.mean(sent for sent, _ in full[1:])
        print(f"repeated click: {human(int(statistics.mean(repeats)))} instead of {human(int(before))}")
    print(
        f"prewarm (embed when the task opens): {human(prewarm[0])}; first click after it: {human(after_prewarm[0])}"
    )
    print(
        f"after a worker restart: the ref misses and the bytes go once more: {human(restarted[0])} in "
        f"{restarted[1]} requests; the next click {human(after_restart[0])}"
    )


if __name__ == "__main__":
    main()
