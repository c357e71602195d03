"""Every task × model through the engine on tiny random models of the real architectures."""

from __future__ import annotations

import base64
import hashlib
from pathlib import Path

import pytest
import torch

from ml_backend.config import load_settings
from ml_backend.engine import Engine, ResourceError, split_phrases
from ml_backend.masks import decode_rle
from ml_backend.schemas import (
    IMAGE_REF_MISS,
    BatchResponse,
    DetectResponse,
    ImageRefMiss,
    RequestError,
    SegmentResponse,
    parse_request,
)
from tests.support import make_image, serve_images

WIDTH, HEIGHT = 64, 48
LOOSE = {"box_threshold": 0.0, "text_threshold": 0.0}


@pytest.fixture(scope="module")
def engine(tiny_hf_cache: Path) -> Engine:
    return Engine(load_settings(device="cpu", allow_private_urls=True), allow_local_paths=False)


@pytest.fixture(scope="module")
def image_b64() -> str:
    return base64.b64encode(make_image(WIDTH, HEIGHT)).decode()


def run(engine: Engine, payload: dict):
    return engine.run(parse_request(payload))


def assert_unit_box(box) -> None:
    x1, y1, x2, y2 = box
    assert 0.0 <= x1 <= x2 <= 1.0 and 0.0 <= y1 <= y2 <= 1.0


def assert_mask_size(rle, width: int, height: int) -> None:
    mask = decode_rle(rle)
    assert mask.shape == (height, width)
    assert mask.dtype == bool


def test_split_phrases() -> None:
    assert split_phrases("shelf . product . price tag") == ["shelf", "product", "price tag"]
    assert split_phrases("bottle, can,box") == ["bottle", "can", "box"]
    assert split_phrases("cat . cat . ") == ["cat"]


def test_grounding_dino_detect(engine: Engine, image_b64: str) -> None:
    phrases = ["shelf", "product", "price tag"]
    response = run(
        engine,
        {
            "task": "detect",
            "model": "grounding_dino",
            "image_base64": image_b64,
            "text_prompt": " . ".join(phrases),
            **LOOSE,
        },
    )
    assert isinstance(response, DetectResponse)
    assert response.image.width == WIDTH and response.image.height == HEIGHT
    assert response.model_id == "IDEA-Research/grounding-dino-base"
    assert response.detections, "threshold 0 must keep every query"
    scores = [d.score for d in response.detections]
    assert scores == sorted(scores, reverse=True)
    for detection in response.detections:
        assert detection.label in phrases
        assert_unit_box(detection.box)
        assert detection.mask is None


def test_grounding_dino_with_masks_and_max_detections(engine: Engine, image_b64: str) -> None:
    response = run(
        engine,
        {
            "task": "detect",
            "model": "grounding_dino",
            "image_base64": image_b64,
            "text_prompt": "cat . dog",
            "with_masks": True,
            "max_detections": 3,
            "mask_format": "both",
            **LOOSE,
        },
    )
    assert len(response.detections) == 3
    for detection in response.detections:
        assert_mask_size(detection.mask, WIDTH, HEIGHT)
        assert detection.polygons is not None


def test_threshold_one_keeps_nothing(engine: Engine, image_b64: str) -> None:
    response = run(
        engine,
        {
            "task": "detect",
            "model": "grounding_dino",
            "image_base64": image_b64,
            "text_prompt": "cat",
            "box_threshold": 1.0,
        },
    )
    assert response.detections == []


@pytest.mark.parametrize(
    ("task", "text"),
    [
        ("od", None),
        ("phrase_grounding", "a cat"),
        ("open_vocabulary_detection", "cat"),
        ("dense_region_caption", None),
        ("region_proposal", None),
        ("referring_expression_segmentation", "the cat"),
        ("ocr_with_region", None),
    ],
)
def test_florence2_tasks(engine: Engine, image_b64: str, task: str, text: str | None) -> None:
    payload = {"task": "detect", "model": "florence2", "image_base64": image_b64, "florence2_task": task}
    if text:
        payload["text_prompt"] = text
    response = run(engine, payload)
    assert response.model == "florence2"
    for detection in response.detections:
        assert_unit_box(detection.box)
        if detection.mask is not None:
            assert_mask_size(detection.mask, WIDTH, HEIGHT)
        if task == "referring_expression_segmentation":
            assert detection.label == text, "instances of a referring expression carry the expression"


def test_sam3_text_detection_has_masks(engine: Engine, image_b64: str) -> None:
    response = run(
        engine,
        {
            "task": "detect",
            "model": "sam3",
            "image_base64": image_b64,
            "text_prompt": "cat . dog",
            "box_threshold": 0.0,
        },
    )
    assert response.detections
    for detection in response.detections:
        assert detection.label in ("cat", "dog")
        assert_unit_box(detection.box)
        assert_mask_size(detection.mask, WIDTH, HEIGHT)


@pytest.mark.parametrize("model", ["sam2", "sam3"])
@pytest.mark.parametrize(
    "prompt",
    [
        {"prompt_type": "point", "point": [0.5, 0.3], "label": 1},
        {"prompt_type": "points", "points": [[0.2, 0.2], [0.8, 0.7]], "labels": [1, 0]},
        {"prompt_type": "box", "box": [0.1, 0.2, 0.6, 0.9]},
        {"points": [[0.3, 0.5]], "labels": [1], "box": [0.1, 0.2, 0.6, 0.9]},
    ],
)
def test_segment_prompts(engine: Engine, image_b64: str, model: str, prompt: dict) -> None:
    response = run(engine, {"task": "segment", "model": model, "image_base64": image_b64, **prompt})
    assert isinstance(response, SegmentResponse)
    assert len(response.masks) == 1
    mask = response.masks[0]
    assert_mask_size(mask.mask, WIDTH, HEIGHT)
    assert_unit_box(mask.box)


def test_segment_multimask_returns_three_sorted(engine: Engine, image_b64: str) -> None:
    response = run(
        engine,
        {
            "task": "segment",
            "model": "sam2",
            "image_base64": image_b64,
            "point": [0.5, 0.5],
            "multimask": True,
        },
    )
    assert len(response.masks) == 3
    scores = [mask.score for mask in response.masks]
    assert scores == sorted(scores, reverse=True)


def test_sam3_text_segment(engine: Engine, image_b64: str) -> None:
    response = run(
        engine,
        {
            "task": "segment",
            "model": "sam3",
            "image_base64": image_b64,
            "prompt_type": "text",
            "text_prompt": "cat",
            "threshold": 0.0,
        },
    )
    assert response.masks
    for mask in response.masks:
        assert_mask_size(mask.mask, WIDTH, HEIGHT)


def test_exif_rotated_image_reports_rotated_size(engine: Engine) -> None:
    rotated = base64.b64encode(make_image(WIDTH, HEIGHT, orientation=6)).decode()
    response = run(engine, {"task": "segment", "model": "sam2", "image_base64": rotated, "point": [0.5, 0.5]})
    assert (response.image.width, response.image.height) == (HEIGHT, WIDTH)
    assert_mask_size(response.masks[0].mask, HEIGHT, WIDTH)


def test_batch_with_a_broken_image_returns_the_others(engine: Engine) -> None:
    with serve_images() as server:
        good = server.add("/good.png", make_image(WIDTH, HEIGHT))
        other = server.add("/other.png", make_image(32, 32))
        broken = server.add("/broken.png", b"not an image")
        response = run(
            engine,
            {
                "task": "batch",
                "model": "grounding_dino",
                "images": [
                    {"id": "a", "url": good},
                    {"id": "b", "url": broken},
                    {"id": "c", "url": server.url("/missing.png")},
                    {"id": 4, "url": other},
                ],
                "text_prompt": "product",
                **LOOSE,
            },
        )
    assert isinstance(response, BatchResponse)
    assert [item.id for item in response.results] == ["a", "b", "c", 4]
    a, b, c, d = response.results
    assert a.error is None and a.detections and a.image.width == WIDTH
    assert "cannot decode image" in b.error and b.detections is None
    assert "HTTP 404" in c.error
    assert d.image.width == 32 and d.detections


def test_batch_size_limit(tiny_hf_cache: Path) -> None:
    small = Engine(load_settings(device="cpu", max_batch_images=2))
    request = parse_request(
        {
            "task": "batch",
            "model": "grounding_dino",
            "text_prompt": "a",
            "images": [{"id": i, "base64": "AA"} for i in range(3)],
        }
    )
    with pytest.raises(RequestError, match="MAX_BATCH_IMAGES"):
        small.run(request)


def test_local_paths_only_where_allowed(tmp_path: Path, tiny_hf_cache: Path) -> None:
    path = tmp_path / "a.png"
    path.write_bytes(make_image(WIDTH, HEIGHT))
    payload = {"task": "segment", "model": "sam2", "image_path": str(path), "point": [0.5, 0.5]}
    with pytest.raises(RequestError, match="image_path: local files are not accepted"):
        Engine(load_settings(device="cpu")).run(parse_request(payload))
    response = Engine(load_settings(device="cpu"), allow_local_paths=True).run(parse_request(payload))
    assert response.image.width == WIDTH


def test_private_url_refused_by_default(tiny_hf_cache: Path) -> None:
    strict = Engine(load_settings(device="cpu", allow_private_urls=False))
    payload = {
        "task": "segment",
        "model": "sam2",
        "image_url": "http://127.0.0.1:9/a.png",
        "point": [0.5, 0.5],
    }
    with pytest.raises(RequestError, match="ALLOW_PRIVATE_URLS"):
        strict.run(parse_request(payload))


def test_out_of_memory_is_reported_and_caches_are_emptied(
    engine: Engine, image_b64: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    payload = {"task": "segment", "model": "sam2", "image_base64": image_b64, "point": [0.5, 0.5]}
    run(engine, payload)
    segmenter = engine.registry.get("sam2")
    assert len(segmenter.cache) > 0

    def exhausted(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    with monkeypatch.context() as patch:
        patch.setattr(segmenter, "segment", exhausted)
        with pytest.raises(ResourceError, match="GPU out of memory"):
            run(engine, payload)
    assert len(segmenter.cache) == 0
    assert run(engine, payload).masks


def test_describe_reports_device_and_loaded_models(engine: Engine) -> None:
    info = engine.describe()
    assert info["device"] == "cpu"
    assert "sam2" in info["models_loaded"]


def test_batch_groups_grounding_dino_images_on_a_gpu(engine: Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    """On CUDA the loaded images of a batch reach Grounding DINO together (it batches same-size ones)."""
    import dataclasses

    detector = engine.registry.get("grounding_dino")
    calls: list[int] = []
    real = detector.detect_batch

    def counting(images, *args, **kwargs):
        calls.append(len(images))
        return real(images, *args, **kwargs)

    monkeypatch.setattr(detector, "detect_batch", counting)
    monkeypatch.setattr(
        engine.registry, "_runtime", dataclasses.replace(engine.registry.runtime, device=torch.device("cuda"))
    )
    image = base64.b64encode(make_image(WIDTH, HEIGHT)).decode()
    request = {"task": "batch", "model": "grounding_dino", "text_prompt": "cat", **LOOSE}
    images = [{"id": i, "base64": image} for i in range(3)] + [{"id": "bad", "base64": "AAAA"}]
    response = run(engine, {**request, "images": images})
    assert calls == [3]
    assert [item.id for item in response.results] == [0, 1, 2, "bad"]
    assert response.results[0].detections == response.results[2].detections
    assert response.results[3].error


def test_local_files_are_decoded_once_until_they_change(tmp_path: Path, tiny_hf_cache: Path) -> None:
    engine = Engine(load_settings(device="cpu"), allow_local_paths=True)
    path = tmp_path / "photo.png"
    path.write_bytes(make_image(WIDTH, HEIGHT))
    source = parse_request({"task": "segment", "model": "sam2", "image_path": str(path), "point": [0.5, 0.5]})
    first = engine.load_image(source)
    assert engine.load_image(source) is first
    path.write_bytes(make_image(WIDTH + 1, HEIGHT))
    changed = engine.load_image(source)
    assert changed is not first and changed.width == WIDTH + 1
    path.unlink()
    with pytest.raises(RequestError, match="image_path: no such file"):
        engine.load_image(source)


# ---- image_ref: an image decoded before, named by content hash and size ----


def ref_of(data: bytes) -> dict:
    return {"hash": hashlib.blake2b(data, digest_size=16).hexdigest(), "bytes": len(data)}


def test_image_ref_serves_an_image_sent_before(tiny_hf_cache: Path) -> None:
    engine = Engine(load_settings(device="cpu"))
    data = make_image(WIDTH, HEIGHT)
    click = {"task": "segment", "model": "sam2", "point": [0.4, 0.6]}
    by_bytes = run(engine, {**click, "image_base64": base64.b64encode(data).decode()})
    embeddings = engine.registry.get("sam2").cache
    hits = embeddings.hits
    by_ref = run(engine, {**click, "image_ref": ref_of(data)})
    assert by_ref.model_dump(exclude={"timing_ms"}) == by_bytes.model_dump(exclude={"timing_ms"})
    assert embeddings.hits == hits + 1, "the ref is the embedding-cache key"
    assert by_ref.image.width == WIDTH


def test_image_ref_unknown_or_of_another_size_is_a_distinct_error(tiny_hf_cache: Path) -> None:
    engine = Engine(load_settings(device="cpu"))
    data = make_image(WIDTH, HEIGHT)
    engine.load_image(parse_request({"task": "embed", "image_base64": base64.b64encode(data).decode()}))
    wrong_size = {**ref_of(data), "bytes": len(data) + 1}
    for ref in (ref_of(make_image(WIDTH + 1, HEIGHT)), wrong_size):
        with pytest.raises(ImageRefMiss) as caught:
            engine.run(
                parse_request({"task": "segment", "model": "sam2", "image_ref": ref, "point": [0.5, 0.5]})
            )
        assert str(caught.value).startswith(IMAGE_REF_MISS)
        assert isinstance(caught.value, RequestError), "the worker answers it as a FAILED job"


def test_image_ref_after_an_embed_only_request(tiny_hf_cache: Path) -> None:
    engine = Engine(load_settings(device="cpu"))
    data = make_image(WIDTH, HEIGHT)
    embedded = run(
        engine, {"task": "embed", "model": "sam2", "image_base64": base64.b64encode(data).decode()}
    )
    assert (embedded.task, embedded.image.width, embedded.image.height) == ("embed", WIDTH, HEIGHT)
    embeddings = engine.registry.get("sam2").cache
    cached = len(embeddings)
    clicked = run(
        engine, {"task": "segment", "model": "sam2", "image_ref": ref_of(data), "point": [0.5, 0.5]}
    )
    assert clicked.masks and len(embeddings) == cached, "the click reused the prewarmed embedding"


def test_decoded_images_are_bounded_by_the_embedding_cache_size(tiny_hf_cache: Path) -> None:
    engine = Engine(load_settings(device="cpu", embedding_cache_size=2))
    images = [make_image(WIDTH + extra, HEIGHT) for extra in range(3)]
    for data in images:
        engine.load_image(parse_request({"task": "embed", "image_base64": base64.b64encode(data).decode()}))
    with pytest.raises(ImageRefMiss):
        engine.load_image(parse_request({"task": "embed", "image_ref": ref_of(images[0])}))
    assert (
        engine.load_image(parse_request({"task": "embed", "image_ref": ref_of(images[2])})).width == WIDTH + 2
    )


def test_image_url_sources_are_remembered_but_batch_images_are_not(tiny_hf_cache: Path) -> None:
    engine = Engine(load_settings(device="cpu", allow_private_urls=True))
    clicked, batched = make_image(WIDTH, HEIGHT), make_image(32, 32)
    with serve_images() as server:
        run(engine, {"task": "embed", "image_url": server.add("/a.png", clicked)})
        batch = {"task": "batch", "model": "grounding_dino", "text_prompt": "cat", **LOOSE}
        run(engine, {**batch, "images": [{"id": 1, "url": server.add("/b.png", batched)}]})
    assert engine.load_image(parse_request({"task": "embed", "image_ref": ref_of(clicked)})).width == WIDTH
    with pytest.raises(ImageRefMiss):
        engine.load_image(parse_request({"task": "embed", "image_ref": ref_of(batched)}))
