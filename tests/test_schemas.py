"""The wire contract: every request example of the worker guide validates, every error names its field."""

import pytest

from ml_backend.schemas import (
    IMAGE_REF_MISS,
    BatchRequest,
    DetectRequest,
    EmbedRequest,
    EmbedResponse,
    ImageRefMiss,
    RequestError,
    SegmentRequest,
    parse_request,
    parse_response,
)

GUIDE_EXAMPLES = [
    {
        "task": "detect",
        "model": "grounding_dino",
        "image_url": "https://example.com/test.jpg",
        "text_prompt": "shelf . product",
    },
    {
        "task": "detect",
        "model": "grounding_dino",
        "image_url": "https://your-image-url.jpg",
        "text_prompt": "shelf . product . price tag",
        "box_threshold": 0.3,
    },
    {
        "task": "detect",
        "model": "grounding_dino",
        "image_url": "https://...",
        "text_prompt": "shelf . product . price tag",
        "box_threshold": 0.3,
        "text_threshold": 0.25,
    },
    {
        "task": "segment",
        "model": "sam2",
        "image_url": "https://...",
        "prompt_type": "point",
        "point": [0.5, 0.3],
        "label": 1,
    },
    {
        "task": "batch",
        "model": "grounding_dino",
        "images": [{"id": "img1", "url": "https://..."}, {"id": "img2", "url": "https://..."}],
        "text_prompt": "product",
        "box_threshold": 0.3,
    },
]


@pytest.mark.parametrize("payload", GUIDE_EXAMPLES)
def test_every_guide_example_validates(payload: dict) -> None:
    request = parse_request(payload)
    assert request.task == payload["task"]
    assert request.model == payload["model"]


def test_segment_point_and_points_merge_with_labels() -> None:
    request = parse_request(
        {
            "task": "segment",
            "model": "sam2",
            "image_base64": "AAAA",
            "point": [0.1, 0.2],
            "points": [[0.3, 0.4], [0.5, 0.6]],
            "labels": [1, 0],
            "box": [0.1, 0.1, 0.9, 0.9],
        }
    )
    assert isinstance(request, SegmentRequest)
    assert request.prompt_type == "points"
    points, labels = request.prompt_points()
    assert points == [(0.1, 0.2), (0.3, 0.4), (0.5, 0.6)]
    assert labels == [1, 1, 0]


def test_prompt_type_is_inferred_from_box() -> None:
    request = parse_request(
        {"task": "segment", "model": "sam3", "image_url": "https://x/a.png", "box": [0, 0, 0.5, 0.5]}
    )
    assert request.prompt_type == "box"


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        ({"task": "detect", "model": "yolo", "image_url": "https://x", "text_prompt": "a"}, "model"),
        ({"task": "detect", "model": "grounding_dino", "image_url": "https://x"}, "text_prompt: required"),
        (
            {"task": "detect", "model": "sam3", "image_url": "https://x", "text_prompt": "  "},
            "text_prompt: required",
        ),
        (
            {
                "task": "detect",
                "model": "florence2",
                "image_url": "https://x",
                "florence2_task": "phrase_grounding",
            },
            "text_prompt: required for florence2_task phrase_grounding",
        ),
        (
            {
                "task": "detect",
                "model": "grounding_dino",
                "image_url": "https://x",
                "text_prompt": "a",
                "box_threshold": 1.2,
            },
            "box_threshold",
        ),
        (
            {
                "task": "detect",
                "model": "grounding_dino",
                "image_url": "https://x",
                "text_prompt": "a",
                "text_threshold": -0.1,
            },
            "text_threshold",
        ),
        ({"task": "segment", "model": "sam2", "image_url": "https://x", "point": [1.5, 0.3]}, "point.0"),
        (
            {
                "task": "segment",
                "model": "sam2",
                "image_url": "https://x",
                "points": [[0.1, 0.1]],
                "labels": [1, 0],
            },
            "labels: 2 labels for 1 points",
        ),
        (
            {"task": "segment", "model": "sam2", "image_url": "https://x", "box": [0.5, 0.5, 0.1, 0.9]},
            "box: must be",
        ),
        (
            {
                "task": "segment",
                "model": "sam2",
                "image_url": "https://x",
                "prompt_type": "text",
                "text_prompt": "cat",
            },
            "text prompts need model sam3",
        ),
        ({"task": "segment", "model": "sam2", "image_url": "https://x"}, "prompt_type: give point"),
        (
            {"task": "segment", "model": "sam2", "image_url": "https://x", "prompt_type": "box"},
            "box: required",
        ),
        ({"task": "segment", "model": "sam2", "point": [0.5, 0.5]}, "image: give exactly one"),
        (
            {
                "task": "segment",
                "model": "sam2",
                "image_url": "https://x",
                "image_base64": "AA",
                "point": [0.5, 0.5],
            },
            "got image_url, image_base64",
        ),
        ({"task": "batch", "model": "grounding_dino", "text_prompt": "a", "images": []}, "images"),
        (
            {"task": "batch", "model": "sam2", "text_prompt": "a", "images": [{"id": 1, "url": "https://x"}]},
            "model",
        ),
        ({"task": "classify"}, "task: must be one of detect, segment, batch"),
        ({"model": "sam2"}, "task: required"),
        (
            {
                "task": "detect",
                "model": "grounding_dino",
                "image_url": "https://x",
                "text_prompt": "a",
                "bogus": 1,
            },
            "bogus: unknown field",
        ),
    ],
)
def test_errors_name_the_field(payload: dict, message: str) -> None:
    with pytest.raises(RequestError, match=message.replace("(", r"\(").replace("[", r"\[")):
        parse_request(payload)


def test_non_object_input_is_refused() -> None:
    with pytest.raises(RequestError, match="input: must be a JSON object"):
        parse_request("detect please")


def test_batch_images_accept_int_and_str_ids() -> None:
    request = parse_request(
        {
            "task": "batch",
            "model": "florence2",
            "images": [{"id": 7, "url": "https://x"}, {"id": "b", "base64": "AA"}],
        }
    )
    assert isinstance(request, BatchRequest)
    assert [image.id for image in request.images] == [7, "b"]
    assert request.images[1].as_source().image_base64 == "AA"


def test_response_round_trips_through_json() -> None:
    payload = {
        "task": "detect",
        "model": "grounding_dino",
        "model_id": "IDEA-Research/grounding-dino-base",
        "image": {"width": 640, "height": 480},
        "detections": [{"label": "shelf", "score": 0.9, "box": [0.1, 0.1, 0.5, 0.5]}],
        "timing_ms": {"download": 1.0, "inference": 2.0, "total": 3.0},
    }
    response = parse_response(payload)
    assert response.model_dump(mode="json", exclude_none=True) == payload
    assert isinstance(parse_request({**GUIDE_EXAMPLES[0]}), DetectRequest)


# ---- image_ref ----

REF = {"hash": "0123456789abcdef0123456789abcdef", "bytes": 4_200_000}


@pytest.mark.parametrize(
    "payload",
    [
        {"task": "segment", "model": "sam2", "image_ref": REF, "point": [0.5, 0.3]},
        {"task": "detect", "model": "grounding_dino", "image_ref": REF, "text_prompt": "product"},
        {"task": "embed", "model": "sam3", "image_ref": REF},
    ],
)
def test_image_ref_is_an_image_source(payload: dict) -> None:
    request = parse_request(payload)
    assert request.image_ref is not None and request.image_ref.model_dump() == REF
    assert request.model_dump(mode="json", exclude_none=True)["image_ref"] == REF


@pytest.mark.parametrize(
    ("image", "message"),
    [
        (
            {"image_ref": REF, "image_base64": "AA"},
            "image: give exactly one of image_url, image_base64 or image_ref (got image_base64, image_ref)",
        ),
        ({"image_ref": {**REF, "hash": "ABC"}}, "image_ref.hash: String should match pattern"),
        ({"image_ref": {"hash": REF["hash"]}}, "image_ref.bytes: Field required"),
        ({"image_ref": {**REF, "bytes": 0}}, "image_ref.bytes: Input should be greater than 0"),
        ({"image_ref": {**REF, "url": "https://x"}}, "image_ref.url: unknown field"),
    ],
)
def test_image_ref_errors_name_the_field(image: dict, message: str) -> None:
    with pytest.raises(RequestError) as caught:
        parse_request({"task": "segment", "model": "sam2", "point": [0.5, 0.5], **image})
    assert str(caught.value).startswith(message)


def test_image_ref_miss_is_a_request_error_with_the_documented_prefix() -> None:
    miss = ImageRefMiss()
    assert isinstance(miss, RequestError)
    assert IMAGE_REF_MISS == "image_ref: not cached on this worker"
    assert str(miss).startswith(IMAGE_REF_MISS) and "image_base64" in str(miss)


def test_embed_request_defaults_to_sam2_and_answers_an_embed_response() -> None:
    request = parse_request({"task": "embed", "image_url": "https://x/a.jpg"})
    assert isinstance(request, EmbedRequest) and request.model == "sam2"
    response = parse_response(
        {
            "task": "embed",
            "model": "sam2",
            "model_id": "m",
            "image": {"width": 4, "height": 3},
            "timing_ms": {},
        }
    )
    assert isinstance(response, EmbedResponse) and response.image.width == 4
