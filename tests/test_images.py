import base64

import numpy as np
import pytest
from PIL import Image

from ml_backend.images import (
    ImageError,
    ImageLimits,
    check_url_allowed,
    decode_base64,
    decode_image,
    encode_jpeg,
    fetch_url,
)
from tests.support import make_image, serve_images

LIMITS = ImageLimits(max_bytes=5_000_000, max_pixels=10_000_000, timeout_s=5.0, allow_private_urls=True)
STRICT = ImageLimits(max_bytes=5_000_000, max_pixels=10_000_000, timeout_s=5.0, allow_private_urls=False)


@pytest.mark.parametrize("mode", ["RGB", "L", "RGBA", "P", "LA", "CMYK", "I;16", "1"])
def test_every_mode_becomes_8bit_rgb(mode: str) -> None:
    fmt = "JPEG" if mode == "CMYK" else "TIFF" if mode == "I;16" else "PNG"
    image = decode_image(make_image(40, 30, mode=mode, fmt=fmt), LIMITS)
    assert image.pil.mode == "RGB"
    assert (image.width, image.height) == (40, 30)


def test_sixteen_bit_png_is_rescaled_not_clipped(tmp_path) -> None:
    values = np.linspace(0, 65535, 32 * 8, dtype=np.uint16).reshape(8, 32)
    path = tmp_path / "deep.png"
    Image.fromarray(values).save(path)
    pixels = np.asarray(decode_image(path.read_bytes(), LIMITS).pil)[..., 0]
    assert pixels.min() == 0 and pixels.max() == 255
    assert len(np.unique(pixels)) > 100


def test_transparent_pixels_are_composited_on_white() -> None:
    rgba = Image.new("RGBA", (4, 4), (255, 0, 0, 0))
    import io

    out = io.BytesIO()
    rgba.save(out, format="PNG")
    assert decode_image(out.getvalue(), LIMITS).pil.getpixel((0, 0)) == (255, 255, 255)


def test_exif_orientation_is_applied_first() -> None:
    image = decode_image(make_image(64, 48, orientation=6), LIMITS)
    assert (image.width, image.height) == (48, 64)


def test_key_is_the_content_hash() -> None:
    data = make_image(20, 20)
    assert decode_image(data, LIMITS).key == decode_image(data, LIMITS).key
    assert decode_image(data, LIMITS).key != decode_image(make_image(21, 20), LIMITS).key


def test_decompression_bomb_is_refused_before_decoding() -> None:
    limits = ImageLimits(max_bytes=5_000_000, max_pixels=1000, timeout_s=5, allow_private_urls=True)
    with pytest.raises(ImageError, match="MAX_IMAGE_PIXELS"):
        decode_image(make_image(100, 100), limits)


def test_oversized_bytes_are_refused() -> None:
    limits = ImageLimits(max_bytes=100, max_pixels=10**7, timeout_s=5, allow_private_urls=True)
    with pytest.raises(ImageError, match="MAX_IMAGE_BYTES"):
        decode_image(make_image(100, 100), limits)


def test_garbage_bytes_give_a_clear_error() -> None:
    with pytest.raises(ImageError, match="cannot decode image"):
        decode_image(b"not an image at all", LIMITS)


def test_base64_with_and_without_data_url_prefix() -> None:
    data = make_image(10, 10)
    encoded = base64.b64encode(data).decode()
    assert decode_base64(encoded) == data
    assert decode_base64("data:image/png;base64," + encoded) == data


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("file:///etc/passwd", "only http and https"),
        ("ftp://example.com/a.png", "only http and https"),
        ("http://127.0.0.1/a.png", "non-public address 127.0.0.1"),
        ("http://localhost/a.png", "non-public address"),
        ("http://169.254.169.254/latest/meta-data", "non-public address 169.254.169.254"),
        ("http://10.0.0.8/a.png", "non-public address 10.0.0.8"),
        ("http://[::1]/a.png", "non-public address ::1"),
    ],
)
def test_private_and_odd_urls_are_refused(url: str, message: str) -> None:
    with pytest.raises(ImageError, match=message):
        check_url_allowed(url, allow_private=False)


def test_fetch_from_a_real_server() -> None:
    data = make_image(30, 20)
    with serve_images() as server:
        url = server.add("/a.png", data)
        assert fetch_url(url, LIMITS) == data
        with pytest.raises(ImageError, match="HTTP 404"):
            fetch_url(server.url("/missing.png"), LIMITS)
        with pytest.raises(ImageError, match="non-public address"):
            fetch_url(url, STRICT)


def test_redirect_to_a_private_address_is_refused_and_drops_credentials() -> None:
    with serve_images() as server:
        target = server.add("/target.png", make_image(5, 5))
        hop = server.add("/hop", b"", status=302, headers={"Location": target})
        assert fetch_url(hop, LIMITS, headers={"Authorization": "Token abc"}) == make_image(5, 5)
        assert "Authorization" not in server.requests_seen[-1][1]


def test_download_size_and_time_limits() -> None:
    with serve_images() as server:
        big = server.add("/big.png", b"x" * 2000)
        slow = server.add("/slow.png", make_image(5, 5), delay_s=1.5)
        with pytest.raises(ImageError, match="MAX_IMAGE_BYTES"):
            fetch_url(
                big, ImageLimits(max_bytes=1000, max_pixels=10**7, timeout_s=5, allow_private_urls=True)
            )
        with pytest.raises(ImageError, match="download failed"):
            fetch_url(
                slow, ImageLimits(max_bytes=10**6, max_pixels=10**7, timeout_s=0.5, allow_private_urls=True)
            )


def test_encode_jpeg_fits_the_budget_by_downscaling() -> None:
    noise = np.random.default_rng(0).integers(0, 255, (600, 800, 3), dtype=np.uint8)
    import io

    out = io.BytesIO()
    Image.fromarray(noise).save(out, format="PNG")
    image = decode_image(out.getvalue(), LIMITS)
    encoded = encode_jpeg(image, max_bytes=60_000)
    assert len(encoded) <= 60_000
    smaller = decode_image(encoded, LIMITS)
    assert abs(smaller.width / smaller.height - 800 / 600) < 0.01
