"""Test helpers: generated images, a loopback image server, ports and readiness polling."""

from __future__ import annotations

import io
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import requests
from PIL import Image


def make_image(
    width: int = 64, height: int = 48, mode: str = "RGB", fmt: str = "PNG", orientation: int | None = None
) -> bytes:
    """A deterministic gradient image; `orientation` writes that EXIF tag (JPEG only)."""
    ys, xs = np.mgrid[0:height, 0:width]
    rgb = np.stack([xs * 255 // max(width - 1, 1), ys * 255 // max(height - 1, 1), (xs + ys) % 256], axis=-1)
    image = Image.fromarray(rgb.astype(np.uint8), "RGB")
    if mode != "RGB":
        image = image.convert(mode)
    out = io.BytesIO()
    if orientation is not None:
        exif = Image.Exif()
        exif[0x0112] = orientation
        image.save(out, format="JPEG", exif=exif.tobytes())
    else:
        image.save(out, format=fmt)
    return out.getvalue()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_http(
    url: str, timeout: float = 60.0, method: str = "GET", ok: Callable[[int], bool] | None = None
) -> None:
    accept = ok or (lambda status: status < 500)
    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline:
        try:
            response = requests.request(method, url, timeout=2)
            if accept(response.status_code):
                return
            last = response.status_code
        except requests.RequestException as error:
            last = error
        time.sleep(0.25)
    raise TimeoutError(f"{url} not ready after {timeout}s (last: {last})")


@dataclass
class Route:
    body: bytes
    content_type: str = "image/png"
    status: int = 200
    delay_s: float = 0.0
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class ImageServer:
    """A real HTTP server on 127.0.0.1 serving canned routes and recording the requests it saw."""

    routes: dict[str, Route] = field(default_factory=dict)
    requests_seen: list[tuple[str, dict[str, str]]] = field(default_factory=list)
    port: int = 0

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def add(self, path: str, body: bytes, **kwargs: object) -> str:
        self.routes[path] = Route(body, **kwargs)  # type: ignore[arg-type]
        return self.url(path)


@contextmanager
def serve_images(routes: dict[str, Route] | None = None) -> Iterator[ImageServer]:
    server_state = ImageServer(routes=dict(routes or {}))

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            server_state.requests_seen.append((self.path, dict(self.headers)))
            route = server_state.routes.get(self.path)
            if route is None:
                self.send_error(404)
                return
            time.sleep(route.delay_s)
            self.send_response(route.status)
            self.send_header("Content-Type", route.content_type)
            self.send_header("Content-Length", str(len(route.body)))
            for name, value in route.headers.items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(route.body)

        def log_message(self, *args: object) -> None:
            return

    with running_server(Handler) as port:
        server_state.port = port
        yield server_state


@contextmanager
def running_server(handler: type[BaseHTTPRequestHandler]) -> Iterator[int]:
    """A threaded HTTP server on 127.0.0.1 for the `with` block; yields its port."""
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield httpd.server_address[1]
    finally:
        httpd.shutdown()
        httpd.server_close()


def stop_process(process: subprocess.Popen) -> None:
    """Terminate a server started by a fixture, killing it if it does not stop in time."""
    process.terminate()
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


@contextmanager
def running_redis(workdir: Path) -> Iterator[str]:
    """A real redis-server (Debian package) on a free loopback port, without persistence; yields its URL."""
    import redis

    binary = shutil.which("redis-server")
    if binary is None:
        raise RuntimeError("redis-server is not installed: `make test` installs the Debian package")
    port = free_port()
    command = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
    process = subprocess.Popen(
        [*command, "--dir", str(workdir)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    url = f"redis://127.0.0.1:{port}/0"
    deadline = time.monotonic() + 20
    try:
        while True:
            try:
                redis.Redis.from_url(url).ping()
                break
            except redis.ConnectionError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        yield url
    finally:
        stop_process(process)
