"""The tiny fixture models load offline by their production hub ids, with every weight present."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForImageTextToText,
    AutoModelForZeroShotObjectDetection,
    AutoProcessor,
    Florence2ForConditionalGeneration,
    Florence2Processor,
    GroundingDinoForObjectDetection,
    GroundingDinoProcessor,
    Sam2Model,
    Sam2Processor,
    Sam3Model,
    Sam3Processor,
    Sam3TrackerModel,
    Sam3TrackerProcessor,
)

from tests.fixtures.tiny_models import MARKER_NAME, build_hf_cache


def load_complete(model_class: Any, hub_id: str) -> tuple[Any, dict[str, Any]]:
    """Load a model and assert that no checkpoint weight was missing (i.e. left randomly initialised)."""
    model, info = model_class.from_pretrained(hub_id, output_loading_info=True)
    assert sorted(info["missing_keys"]) == []
    return model, info


def test_grounding_dino(tiny_hub_ids: dict[str, str]) -> None:
    hub_id = tiny_hub_ids["grounding_dino"]
    processor = AutoProcessor.from_pretrained(hub_id)
    model, _ = load_complete(AutoModelForZeroShotObjectDetection, hub_id)
    assert isinstance(processor, GroundingDinoProcessor)
    assert isinstance(model, GroundingDinoForObjectDetection)
    # The model splits phrases at these hard-coded bert-base-uncased ids.
    assert processor.tokenizer.convert_tokens_to_ids(["[CLS]", "[SEP]", ".", "?"]) == [101, 102, 1012, 1029]
    assert processor.tokenizer.tokenize("price tag. shelf") == ["price", "tag", ".", "shelf"]


def test_sam2(tiny_hub_ids: dict[str, str]) -> None:
    hub_id = tiny_hub_ids["sam2"]
    processor = AutoProcessor.from_pretrained(hub_id)
    model, _ = load_complete(AutoModel, hub_id)
    assert isinstance(processor, Sam2Processor)
    assert isinstance(model, Sam2Model)
    assert processor.image_processor.size == {"height": 1024, "width": 1024}


def test_sam3_detector_and_tracker_share_one_checkpoint(tiny_hub_ids: dict[str, str]) -> None:
    hub_id = tiny_hub_ids["sam3"]
    detector, detector_info = load_complete(Sam3Model, hub_id)
    tracker, tracker_info = load_complete(Sam3TrackerModel, hub_id)
    assert sorted(detector_info["unexpected_keys"]) == []
    assert sorted(tracker_info["unexpected_keys"]) == []
    assert isinstance(detector, Sam3Model) and isinstance(tracker, Sam3TrackerModel)

    processor = Sam3Processor.from_pretrained(hub_id)
    assert processor.image_processor.size == {"height": 1008, "width": 1008}
    assert processor.tokenizer.tokenize("visual") == ["visual</w>"]  # the prompt used for box-only requests
    assert isinstance(Sam3TrackerProcessor.from_pretrained(hub_id), Sam3TrackerProcessor)


def test_florence2(tiny_hub_ids: dict[str, str]) -> None:
    hub_id = tiny_hub_ids["florence2"]
    processor = AutoProcessor.from_pretrained(hub_id)
    model, _ = load_complete(AutoModelForImageTextToText, hub_id)
    assert isinstance(processor, Florence2Processor)
    assert isinstance(model, Florence2ForConditionalGeneration)
    assert (model.generation_config.num_beams, model.generation_config.max_new_tokens) == (1, 20)

    parsed = processor.post_process_generation(
        "</s><s>cat<loc_100><loc_200><loc_400><loc_600></s>", task="<OD>", image_size=(640, 480)
    )
    assert parsed == {"<OD>": {"bboxes": [[64, 96, 256, 288]], "labels": ["cat"]}}


def test_uncached_hub_id_fails_fast_offline(tiny_hf_cache: Path) -> None:
    started = time.monotonic()
    with pytest.raises(OSError):
        AutoConfig.from_pretrained("no-such-org/no-such-model")
    assert time.monotonic() - started < 5


def test_rebuilding_an_up_to_date_cache_is_a_no_op(
    tiny_hf_cache: Path, tiny_hub_ids: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from tests.fixtures import tiny_models

    def must_not_build(_: Path) -> None:
        raise AssertionError("an up-to-date family was built again")

    for family in tiny_models.BUILDERS:
        monkeypatch.setitem(tiny_models.BUILDERS, family, must_not_build)
    marker = (tiny_hf_cache / MARKER_NAME).read_text()
    files = {
        path: path.stat().st_mtime_ns
        for path in tiny_hf_cache.rglob("*")
        if path.is_file() and path.name != tiny_models.LOCK_NAME
    }
    assert build_hf_cache(tiny_hf_cache) == tiny_hub_ids
    assert (tiny_hf_cache / MARKER_NAME).read_text() == marker
    assert {path: path.stat().st_mtime_ns for path in files} == files
