"""Local mode: `Engine.run(..., arrays=True)` hands masks over as boolean arrays instead of COCO RLE, and
the Label Studio results built from them are the ones built from the wire's RLE."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import numpy as np
import pytest

from ml_backend.config import load_settings
from ml_backend.engine import Engine, mask_array
from ml_backend.labelstudio.interface import ProjectInterface
from ml_backend.labelstudio.predictor import Predictor
from ml_backend.labelstudio.results import detections_to_results, segment_results
from ml_backend.masks import decode_rle
from ml_backend.schemas import (
    DetectRequest,
    DetectResponse,
    Request,
    Response,
    SegmentRequest,
    SegmentResponse,
)
from tests.labelstudio.configs import SAM_CONFIG, TEXT_PROMPT_CONFIG
from tests.support import make_image

WIDTH, HEIGHT = 160, 120


@pytest.fixture(scope="module")
def engine(tiny_hf_cache: Path) -> Engine:
    return Engine(load_settings(device="cpu"), allow_local_paths=False)


@pytest.fixture(scope="module")
def image_b64() -> str:
    return base64.b64encode(make_image(WIDTH, HEIGHT)).decode()


def without_ids(results: list[dict]) -> list[dict]:
    return [{key: value for key, value in item.items() if key != "id"} for item in results]


@pytest.mark.parametrize("multimask", [False, True])
def test_segment_arrays_equal_the_rle_and_give_the_same_results(
    engine: Engine, image_b64: str, multimask: bool
) -> None:
    request = SegmentRequest(
        model="sam2", image_base64=image_b64, prompt_type="points", points=[(0.4, 0.5)], multimask=multimask
    )
    wire = engine.run(request)
    local = engine.run(request, arrays=True)
    assert isinstance(wire, SegmentResponse) and isinstance(local, SegmentResponse)
    assert len(local.masks) == len(wire.masks) == (3 if multimask else 1)
    for over_wire, in_process in zip(wire.masks, local.masks, strict=True):
        assert mask_array(over_wire) is None and over_wire.mask is not None
        assert in_process.mask is None  # no RLE was encoded
        np.testing.assert_array_equal(mask_array(in_process), decode_rle(over_wire.mask))
        assert (in_process.score, in_process.box) == (over_wire.score, over_wire.box)
    interface = ProjectInterface.from_config(SAM_CONFIG)
    from_wire = segment_results(wire.masks, "Banana", interface, WIDTH, HEIGHT)
    from_arrays = segment_results(local.masks, "Banana", interface, WIDTH, HEIGHT)
    assert from_wire and without_ids(from_arrays) == without_ids(from_wire)


def test_arrays_never_reach_the_wire(engine: Engine, image_b64: str) -> None:
    request = SegmentRequest(
        model="sam2", image_base64=image_b64, prompt_type="box", box=(0.1, 0.1, 0.8, 0.9)
    )
    local = engine.run(request, arrays=True)
    dumped = json.loads(local.model_dump_json())
    assert set(dumped["masks"][0]) == {"score", "box", "mask", "polygons"}
    assert dumped["masks"][0]["mask"] is None
    # A later wire run in the same thread encodes RLE again (the flag lasts one call).
    assert engine.run(request).masks[0].mask is not None


def test_grounded_sam_arrays_give_the_same_results(engine: Engine, image_b64: str) -> None:
    request = DetectRequest(
        model="grounding_dino",
        image_base64=image_b64,
        text_prompt="bottle . can",
        box_threshold=0.0,
        text_threshold=0.0,
        with_masks=True,
        max_detections=3,
    )
    wire = engine.run(request)
    local = engine.run(request, arrays=True)
    assert isinstance(wire, DetectResponse) and isinstance(local, DetectResponse)
    assert wire.detections and len(local.detections) == len(wire.detections)
    for over_wire, in_process in zip(wire.detections, local.detections, strict=True):
        assert in_process.mask is None
        np.testing.assert_array_equal(mask_array(in_process), decode_rle(over_wire.mask))
    interface = ProjectInterface.from_config(TEXT_PROMPT_CONFIG)

    def label_of(phrase: str) -> str:
        return "Product"

    from_wire = detections_to_results(wire.detections, interface, WIDTH, HEIGHT, label_of)
    from_arrays = detections_to_results(local.detections, interface, WIDTH, HEIGHT, label_of)
    assert any(item["type"] == "brushlabels" for item in from_wire)
    assert without_ids(from_arrays) == without_ids(from_wire)


class RecordingBackend:
    """The real engine, recording whether each call asked for arrays."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.arrays: list[bool] = []

    def run(self, request: Request, *, arrays: bool = False) -> Response:
        self.arrays.append(arrays)
        return self.engine.run(request, arrays=arrays)

    def describe(self) -> dict:
        return self.engine.describe()


def test_the_label_studio_predictor_takes_arrays_from_the_local_engine(tmp_path: Path) -> None:
    engine = Engine(load_settings(device="cpu"), allow_local_paths=True)
    photo = tmp_path / "photo.png"
    photo.write_bytes(make_image(WIDTH, HEIGHT))
    backend = RecordingBackend(engine)
    predictor = Predictor(backend, lambda url, task_id: str(photo), engine.settings)
    click = {
        "original_width": WIDTH,
        "original_height": HEIGHT,
        "image_rotation": 0,
        "value": {"x": 40.0, "y": 50.0, "width": 0.3, "keypointlabels": ["Banana"]},
        "is_positive": True,
        "id": "kp",
        "from_name": "tag2",
        "to_name": "image",
        "type": "keypointlabels",
    }
    interface = ProjectInterface.from_config(SAM_CONFIG)
    [prediction] = predictor.predict(
        [{"id": 1, "data": {"image": "/data/photo.png"}}], interface, {"result": [click]}
    )
    assert backend.arrays == [True]
    brush = [item for item in prediction["result"] if item["type"] == "brushlabels"]
    request = SegmentRequest(
        model="sam2", image_path=str(photo), prompt_type="points", points=[(0.4, 0.5)], labels=[1]
    )
    expected = segment_results(engine.run(request).masks, "Banana", interface, WIDTH, HEIGHT)
    assert brush and without_ids(prediction["result"]) == without_ids(expected)
