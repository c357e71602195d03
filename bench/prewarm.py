"""Prewarm benchmark: the first click after opening a task vs a cached click, through a real Label Studio.

    python bench/prewarm.py [--tasks 3 --width 1600 --height 1200 --repeats 3]

Starts a real Label Studio (the test venv's, `.cache/label-studio-venv`) and the backend (gunicorn) on a
random-initialised SAM 2.1 of the full base-plus geometry (built once into a local folder and loaded
through `SAM2_MODEL`, so the backend's production loading path runs; Grounding DINO is the tiny test
model: it only answers the batch `/predict` Label Studio sends when a task opens). Side by side in one
run:

- *open*: the annotator opens a task without predictions (`GET /api/tasks/<id>`, which makes Label
  Studio call `/predict`), looks at it until the prewarm has finished, then clicks: first click;
- *pre-labelled*: tasks that a job already pre-labelled send no signal when opened; the annotator
  clicks on task 1 (a cold first click, as without prewarm), then moves on to task 2: first click;
- a cached click: the same click again on the same image.

Goal: first click after opening ≤ 1.5 × a cached click. Printed: the medians, the ratios, the cold
click for comparison, and how long after opening the embedding was ready (what the annotator's
looking time has to cover on this machine).
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.engine import prepare_tiny_cache  # noqa: E402

LABEL_STUDIO_BIN = ROOT / ".cache" / "label-studio-venv" / "bin" / "label-studio"
SAM2_BASE_PLUS_DIR = Path(tempfile.gettempdir()) / "od-annotation-bench-sam2.1-base-plus-random"
# Every click at the same point: the same mask, so first and cached clicks differ only by the embedding
# (a random model's masks vary a lot in cost with the point: brush RLE and polygon outlines).
POINT_X = 30.0


def build_base_plus_sam2(directory: Path) -> Path:
    """A random-initialised SAM 2.1 with the geometry of facebook/sam2.1-hiera-base-plus, saved once."""
    if (directory / "config.json").exists():
        return directory
    import torch
    from transformers import Sam2Model, Sam2Processor
    from transformers.models.sam2.image_processing_sam2 import Sam2ImageProcessor

    from tests.fixtures.official_sam2 import HIERA_B_PLUS, transformers_config

    torch.manual_seed(0)
    Sam2Model(transformers_config(HIERA_B_PLUS)).eval().save_pretrained(directory)
    Sam2Processor(image_processor=Sam2ImageProcessor()).save_pretrained(directory)
    return directory


def photo(width: int, height: int, seed: int) -> bytes:
    """A JPEG with smooth shading and a few shapes (random noise would make the masks unrealistic)."""
    import io

    import numpy as np
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(seed)
    ys, xs = np.mgrid[0:height, 0:width]
    base = np.stack([xs * 200 // width, ys * 200 // height, (xs + ys) * 120 // (width + height)], axis=-1)
    image = Image.fromarray((base + rng.integers(0, 40, 3)).astype(np.uint8), "RGB")
    draw = ImageDraw.Draw(image)
    for _ in range(12):
        x, y = int(rng.integers(0, width - 200)), int(rng.integers(0, height - 200))
        size = int(rng.integers(60, 200))
        draw.ellipse((x, y, x + size, y + size), fill=tuple(int(v) for v in rng.integers(0, 255, 3)))
    out = io.BytesIO()
    image.save(out, format="JPEG", quality=90)
    return out.getvalue()


def label_config(outputs: str) -> str:
    from tests.labelstudio.configs import SAM_CONFIG

    if outputs == "masks":
        return SAM_CONFIG
    # Without brush and polygon tags a click returns the mask's box: no RLE or outline to encode.
    return re.sub(r"\s*<(BrushLabels|PolygonLabels)\b.*?</\1>", "", SAM_CONFIG, flags=re.S)


# ---- processes ----


@contextmanager
def running(command: list[str], env: dict[str, str], cwd: Path, log_path: Path) -> Iterator[None]:
    from tests.support import stop_process

    with log_path.open("wb") as log:
        process = subprocess.Popen(command, env=env, cwd=cwd, stdout=log, stderr=subprocess.STDOUT)
    try:
        yield
    finally:
        stop_process(process)


@contextmanager
def label_studio(work: Path) -> Iterator[tuple[str, str]]:
    from tests.conftest import running_label_studio

    data = work / "label-studio"
    data.mkdir()
    with running_label_studio(data) as started:
        yield started.url, started.token


@contextmanager
def backend(work: Path, ls_url: str, token: str, sam2_dir: Path) -> Iterator[str]:
    from tests.conftest import wait_for_models
    from tests.support import free_port, wait_for_http

    env = {
        **os.environ,
        "LABEL_STUDIO_URL": ls_url,
        "LABEL_STUDIO_API_KEY": token,
        "IMAGE_CACHE_DIR": str(work / "images"),
        "SAM2_MODEL": str(sam2_dir),
        "PRELOAD_MODELS": "grounding_dino,sam2",
        "PREWARM": "true",
        "PREWARM_NEXT_TASKS": "2",
        "LOG_LEVEL": "WARNING",
    }
    port = free_port()
    gunicorn = Path(sys.executable).with_name("gunicorn")
    command = [str(gunicorn), "--bind", f"127.0.0.1:{port}", "--workers", "1", "--threads", "8",
               "--timeout", "600", "_wsgi:app"]  # fmt: skip
    with running(command, env, ROOT, work / "backend.log"):
        url = f"http://127.0.0.1:{port}"
        wait_for_http(f"{url}/health", timeout=300, ok=lambda status: status == 200)
        wait_for_models(url, {"grounding_dino", "sam2"}, timeout=900)
        yield url


# ---- Label Studio calls ----


class Session:
    def __init__(self, ls_url: str, token: str, backend_url: str) -> None:
        import requests

        self.http = requests.Session()
        self.http.headers["Authorization"] = f"Token {token}"
        self.ls_url, self.backend_url = ls_url, backend_url

    def api(self, method: str, path: str, **kwargs: Any) -> Any:
        response = self.http.request(method, f"{self.ls_url}{path}", timeout=900, **kwargs)
        if response.status_code >= 400:
            raise RuntimeError(f"{method} {path}: {response.status_code} {response.text[:300]}")
        return response.json() if response.content else None

    def project(
        self, title: str, config: str, images: list[bytes], pre_labelled: bool
    ) -> tuple[int, list[dict]]:
        project = self.api("POST", "/api/projects", json={"title": title, "label_config": config})
        files = {
            f"{title}{index}.jpg": (f"{title}{index}.jpg", data, "image/jpeg")
            for index, data in enumerate(images)
        }
        self.api("POST", f"/api/projects/{project['id']}/import", files=files)
        listed = self.api("GET", f"/api/projects/{project['id']}/tasks/?page_size=100")
        tasks = sorted(listed["tasks"] if isinstance(listed, dict) else listed, key=lambda task: task["id"])
        if pre_labelled:  # as a background job leaves them: opening such a task sends no /predict
            for task in tasks:
                self.api(
                    "POST",
                    "/api/predictions",
                    json={"task": task["id"], "result": [], "model_version": "job"},
                )
        ml = self.api(
            "POST",
            "/api/ml",
            json={"url": self.backend_url, "project": project["id"], "is_interactive": True},
        )
        return ml["id"], tasks

    def open(self, task: dict) -> None:
        self.api("GET", f"/api/tasks/{task['id']}")

    def click(self, ml_id: int, task: dict, x: float, width: int, height: int) -> float:
        point = {
            "original_width": width,
            "original_height": height,
            "image_rotation": 0,
            "value": {"x": x, "y": 45.0, "width": 0.26, "labels": ["Banana"], "keypointlabels": ["Banana"]},
            "is_positive": True,
            "id": f"kp{x:.0f}",
            "from_name": "tag2",
            "to_name": "image",
            "type": "keypointlabels",
            "origin": "manual",
        }
        started = time.perf_counter()
        answer = self.api(
            "POST",
            f"/api/ml/{ml_id}/interactive-annotating",
            json={"task": task["id"], "context": {"result": [point]}},
        )
        elapsed = time.perf_counter() - started
        if "errors" in answer or not answer["data"].get("result"):
            raise RuntimeError(f"click on task {task['id']} failed: {answer}")
        return elapsed

    def prewarm(self) -> dict[str, Any]:
        return self.http.get(f"{self.backend_url}/metrics", timeout=30).json()["prewarm"]

    def settled(self) -> dict[str, Any]:
        while True:
            state = self.prewarm()
            if state["queued"] == 0 and not state["in_flight"]:
                return state
            time.sleep(0.05)


def expect_hit(session: Session, click: Callable[[], float]) -> float:
    hits = session.prewarm()["hit"]
    elapsed = click()
    if session.prewarm()["hit"] != hits + 1:
        raise RuntimeError("the first click was not served by a prewarmed embedding")
    return elapsed


def clicks_on(session: Session, ml_id: int, task: dict, size: tuple[int, int], repeats: int) -> list[float]:
    """The same click `repeats` times, once nothing runs in the background: cached clicks."""
    session.settled()  # the next tasks' prewarm must not slow the cached clicks down
    return [session.click(ml_id, task, POINT_X, *size) for _ in range(repeats)]


def ms(seconds: list[float]) -> float:
    return statistics.median(seconds) * 1000


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tasks", type=int, default=3, help="tasks opened in the 'open' scenario")
    parser.add_argument("--width", type=int, default=1600)
    parser.add_argument("--height", type=int, default=1200)
    parser.add_argument("--repeats", type=int, default=3, help="cached clicks per task")
    parser.add_argument(
        "--outputs",
        choices=["boxes", "masks"],
        default="boxes",
        help="boxes: smart tools only, a click returns the mask's box (the click is SAM alone); "
        "masks: the README's SAM template (brush RLE and polygon outlines of the mask too)",
    )
    args = parser.parse_args(argv)
    if not LABEL_STUDIO_BIN.exists():
        sys.exit(f"{LABEL_STUDIO_BIN} missing: run `make label-studio-venv`")

    prepare_tiny_cache()
    sam2_dir = build_base_plus_sam2(SAM2_BASE_PLUS_DIR)
    size = (args.width, args.height)
    config = label_config(args.outputs)
    first_open: list[float] = []
    cached_open: list[float] = []
    ready_s: list[float] = []
    with tempfile.TemporaryDirectory(prefix="bench-prewarm-") as tmp:
        work = Path(tmp)
        with label_studio(work) as (ls_url, token), backend(work, ls_url, token, sam2_dir) as backend_url:
            session = Session(ls_url, token, backend_url)
            images = [photo(*size, seed) for seed in range(args.tasks + 2)]

            ml_id, tasks = session.project("open", config, images[: args.tasks], pre_labelled=False)
            for task in tasks:
                opened = time.perf_counter()
                session.open(task)
                session.settled()  # the annotator looks at the image until its embedding is ready
                ready_s.append(time.perf_counter() - opened)
                first_open.append(expect_hit(session, lambda t=task: session.click(ml_id, t, POINT_X, *size)))
                cached_open += clicks_on(session, ml_id, task, size, args.repeats)

            ml_id, tasks = session.project("labelled", config, images[args.tasks :], pre_labelled=True)
            session.open(tasks[0])
            cold = [session.click(ml_id, tasks[0], POINT_X, *size)]  # no signal: today's first click
            cached_cold = clicks_on(session, ml_id, tasks[0], size, args.repeats)  # also lets task 2 prewarm
            session.open(tasks[1])
            first_next = [expect_hit(session, lambda: session.click(ml_id, tasks[1], POINT_X, *size))]
            cached_next = clicks_on(session, ml_id, tasks[1], size, args.repeats)
            counters = session.prewarm()

    print(
        f"SAM 2.1 base-plus geometry (random weights), {args.width}x{args.height} JPEG, "
        f"outputs={args.outputs}, through Label Studio; each first click vs the same click cached"
    )
    ready = ", ".join(f"{seconds:.2f}" for seconds in ready_s)
    print(f"  opening task 1, 2, ... until its embedding is ready: {ready} s (includes Label Studio's")
    print("    synchronous /predict; from task 2 on, the click before had prewarmed it as a next task)")
    rows = [
        ("first click after opening (prewarmed)", first_open, cached_open),
        ("first click, next pre-labelled task", first_next, cached_next),
        ("first click without a signal (cold)", cold, cached_cold),
    ]
    for name, first, cached in rows:
        print(
            f"  {name:40s} {ms(first):8.0f} ms vs cached {ms(cached):7.0f} ms = {ms(first) / ms(cached):5.2f}x"
        )
    print(f"  prewarm counters: {counters}")
    ratio = ms(first_open) / ms(cached_open)
    verdict = "met" if ratio <= 1.5 else "NOT met"
    print(f"first click after opening / cached click = {ratio:.2f}x (goal <= 1.5x: {verdict})")


if __name__ == "__main__":
    main()
