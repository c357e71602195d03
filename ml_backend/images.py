"""Turn an image source (URL, base64, local path) into an RGB image the models can use.

Everything here runs before a model sees a pixel: download limits, the private-address guard,
decompression-bomb checks, EXIF orientation and conversion of every PIL mode to 8-bit RGB.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import io
import ipaddress
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urljoin, urlparse

import numpy as np
import requests
from PIL import Image, ImageOps, UnidentifiedImageError

from ml_backend.config import Settings
from ml_backend.schemas import RequestError

MAX_REDIRECTS = 5
_CHUNK = 256 * 1024


class ImageError(RequestError):
    """The image could not be fetched or decoded; the message says which field and why."""


@dataclass(frozen=True)
class RGBImage:
    """An EXIF-corrected 8-bit RGB image and a hash of its source bytes (the embedding-cache key)."""

    pil: Image.Image
    key: str

    @property
    def width(self) -> int:
        return self.pil.width

    @property
    def height(self) -> int:
        return self.pil.height


@dataclass(frozen=True)
class ImageLimits:
    max_bytes: int
    max_pixels: int
    timeout_s: float
    allow_private_urls: bool

    @classmethod
    def from_settings(cls, settings: Settings) -> ImageLimits:
        return cls(
            max_bytes=settings.max_image_bytes,
            max_pixels=settings.max_image_pixels,
            timeout_s=settings.image_timeout_s,
            allow_private_urls=settings.allow_private_urls,
        )


# ---- decoding ----


def decode_image(data: bytes, limits: ImageLimits, field: str = "image") -> RGBImage:
    if len(data) > limits.max_bytes:
        raise ImageError(
            f"{field}: image is {len(data)} bytes, over the MAX_IMAGE_BYTES limit {limits.max_bytes}"
        )
    try:
        with Image.open(io.BytesIO(data)) as opened:
            width, height = opened.size
            if width * height > limits.max_pixels:
                raise ImageError(
                    f"{field}: image is {width}x{height} pixels, over the MAX_IMAGE_PIXELS limit {limits.max_pixels}"
                )
            opened.load()
            oriented = ImageOps.exif_transpose(opened)
            rgb = to_rgb(oriented)
    except ImageError:
        raise
    except (UnidentifiedImageError, Image.DecompressionBombError, OSError, SyntaxError, ValueError) as error:
        raise ImageError(f"{field}: cannot decode image ({error.__class__.__name__}: {error})") from None
    return RGBImage(pil=rgb, key=content_key(data))


def content_key(data: bytes) -> str:
    """The image's identity: the embedding-cache key and the wire contract's `image_ref.hash`."""
    return hashlib.blake2b(data, digest_size=16).hexdigest()


def to_rgb(image: Image.Image) -> Image.Image:
    """Any PIL mode → 8-bit RGB; transparency is composited on white, 16-bit data is rescaled."""
    if image.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
        values = np.asarray(image, dtype=np.float64)
        peak = 65535.0 if values.max(initial=0) > 255 else 255.0
        gray = np.clip(values / peak * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return Image.fromarray(gray, mode="L").convert("RGB")
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB") if image.mode != "RGB" else image.copy()


def decode_base64(payload: str, field: str = "image_base64") -> bytes:
    text = payload.strip()
    if text.startswith("data:"):
        text = text.partition(",")[2]
    try:
        return base64.b64decode(text + "=" * (-len(text) % 4), validate=False)
    except (binascii.Error, ValueError) as error:
        raise ImageError(f"{field}: not valid base64 ({error})") from None


# ---- fetching ----


def check_url_allowed(url: str, allow_private: bool, field: str = "image_url") -> None:
    parsed = urlparse(url)
    if parsed.scheme not in ("http", "https"):
        raise ImageError(
            f"{field}: only http and https URLs are accepted (got {parsed.scheme or 'no scheme'})"
        )
    if not parsed.hostname:
        raise ImageError(f"{field}: URL has no host")
    if allow_private:
        return
    try:
        infos = socket.getaddrinfo(parsed.hostname, parsed.port or None, proto=socket.IPPROTO_TCP)
    except socket.gaierror as error:
        raise ImageError(f"{field}: cannot resolve host {parsed.hostname} ({error})") from None
    for info in infos:
        address = ipaddress.ip_address(info[4][0].split("%")[0])
        if not address.is_global or address.is_multicast:
            raise ImageError(
                f"{field}: refused: {parsed.hostname} resolves to the non-public address {address} "
                "(set ALLOW_PRIVATE_URLS=true to allow private networks)"
            )


def fetch_url(
    url: str,
    limits: ImageLimits,
    field: str = "image_url",
    session: requests.Session | None = None,
    headers: dict[str, str] | None = None,
) -> bytes:
    """GET an image with a size cap and an overall deadline, checking every redirect hop."""
    http = session or requests.Session()
    deadline = time.monotonic() + limits.timeout_s
    for _ in range(MAX_REDIRECTS + 1):
        check_url_allowed(url, limits.allow_private_urls, field)
        try:
            response = http.get(
                url, stream=True, timeout=limits.timeout_s, allow_redirects=False, headers=headers or {}
            )
        except requests.RequestException as error:
            raise ImageError(f"{field}: download failed ({error.__class__.__name__}: {error})") from None
        with response:
            if response.is_redirect:
                url = urljoin(url, response.headers["Location"])
                headers = None  # credentials never follow a redirect to another place
                continue
            if response.status_code != 200:
                raise ImageError(f"{field}: download failed with HTTP {response.status_code}")
            return _read_capped(response, limits, deadline, field)
    raise ImageError(f"{field}: more than {MAX_REDIRECTS} redirects")


def _read_capped(response: requests.Response, limits: ImageLimits, deadline: float, field: str) -> bytes:
    declared = response.headers.get("Content-Length")
    if declared and declared.isdigit() and int(declared) > limits.max_bytes:
        raise ImageError(
            f"{field}: image is {declared} bytes, over the MAX_IMAGE_BYTES limit {limits.max_bytes}"
        )
    buffer = io.BytesIO()
    try:
        for chunk in response.iter_content(_CHUNK):
            buffer.write(chunk)
            if buffer.tell() > limits.max_bytes:
                raise ImageError(f"{field}: image is over the MAX_IMAGE_BYTES limit {limits.max_bytes}")
            if time.monotonic() > deadline:
                raise ImageError(f"{field}: download took longer than IMAGE_TIMEOUT_S={limits.timeout_s:g}s")
    except requests.RequestException as error:
        raise ImageError(f"{field}: download failed ({error.__class__.__name__}: {error})") from None
    return buffer.getvalue()


def read_path(path: str, limits: ImageLimits, field: str = "image_path") -> bytes:
    file = Path(path)
    if not file.is_file():
        raise ImageError(f"{field}: no such file {path}")
    if file.stat().st_size > limits.max_bytes:
        raise ImageError(f"{field}: file is over the MAX_IMAGE_BYTES limit {limits.max_bytes}")
    return file.read_bytes()


def load_source_bytes(
    limits: ImageLimits,
    *,
    url: str | None = None,
    base64_data: str | None = None,
    path: str | None = None,
    prefix: str = "image_",
) -> bytes:
    if url:
        return fetch_url(url, limits, field=f"{prefix}url")
    if base64_data:
        return decode_base64(base64_data, field=f"{prefix}base64")
    if path:
        return read_path(path, limits, field=f"{prefix}path")
    raise ImageError("image: no image source given")


def encode_jpeg(image: RGBImage, max_bytes: int, max_side: int = 4096) -> bytes:
    """Re-encode for transport under a byte budget, downscaling until it fits.

    Coordinates on the wire are normalised, so a smaller copy yields the same geometry.
    """
    pil = image.pil
    if max(pil.size) > max_side:
        pil = _scaled(pil, max_side / max(pil.size))
    for _ in range(8):
        for quality in (90, 80, 70):
            data = _jpeg_bytes(pil, quality)
            if len(data) <= max_bytes:
                return data
        pil = _scaled(pil, 0.7)
    raise ImageError(f"image: cannot encode under {max_bytes} bytes")


def _scaled(pil: Image.Image, factor: float) -> Image.Image:
    size = (max(1, round(pil.width * factor)), max(1, round(pil.height * factor)))
    return pil.resize(size, Image.Resampling.LANCZOS)


def _jpeg_bytes(pil: Image.Image, quality: int) -> bytes:
    out = io.BytesIO()
    pil.save(out, format="JPEG", quality=quality)
    return out.getvalue()
