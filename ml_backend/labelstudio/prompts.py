"""The interaction context of a Label Studio smart tool → a prompt in normalised coordinates.

Label Studio sends the regions just drawn as result items, in percent (0–100) of the original image:
keypoints (`is_positive` false for an Alt+click; missing means positive), a rectangle (top-left x, y
plus width, height) or the text of a TextArea.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ml_backend.labelstudio.interface import KEYPOINT, RECTANGLE, ControlTag, ProjectInterface
from ml_backend.models.base import BoxXYXY, clamp_unit
from ml_backend.schemas import RequestError

KEYPOINT_TYPE = KEYPOINT.lower()
RECTANGLE_TYPE = RECTANGLE.lower()
TEXT_TYPE = "textarea"
_SUPPORTED_TYPES = (KEYPOINT_TYPE, RECTANGLE_TYPE, TEXT_TYPE)


class PromptError(RequestError):
    """The interaction context cannot be read as a prompt; the message says what is wrong."""


@dataclass(frozen=True)
class SmartClick:
    points: tuple[tuple[float, float], ...]
    labels: tuple[int, ...]
    box: BoxXYXY | None
    label: str
    source: ControlTag


@dataclass(frozen=True)
class SmartBox:
    box: BoxXYXY
    label: str
    source: ControlTag


@dataclass(frozen=True)
class TextPrompt:
    text: str


Interaction = SmartClick | SmartBox | TextPrompt


def interaction_from_context(context: Mapping | None, interface: ProjectInterface) -> Interaction | None:
    """The prompt of a smart-tool call, or None for a batch prediction (no context, empty result)."""
    items = _result_items(context, interface.image_name)
    if not items:
        return None
    by_type = {kind: [item for item in items if item.get("type") == kind] for kind in _SUPPORTED_TYPES}
    if by_type[KEYPOINT_TYPE]:
        return _smart_click(by_type[KEYPOINT_TYPE], by_type[RECTANGLE_TYPE], interface)
    if by_type[RECTANGLE_TYPE]:
        return _smart_box(by_type[RECTANGLE_TYPE][-1], interface)
    if by_type[TEXT_TYPE]:
        return _text_prompt(by_type[TEXT_TYPE])
    found = ", ".join(sorted({str(item.get("type")) for item in items}))
    raise PromptError(
        f"context: smart tool type(s) {found} are not supported; use a smart keypoint, a smart rectangle "
        "or a text prompt"
    )


def original_size_from_context(context: Mapping | None) -> tuple[int, int] | None:
    """(width, height) in pixels of the image Label Studio shows, when a result item carries it."""
    items = context.get("result") if isinstance(context, Mapping) else None
    for item in items if isinstance(items, list) else []:
        if not isinstance(item, Mapping):
            continue
        width, height = item.get("original_width"), item.get("original_height")
        if isinstance(width, int | float) and isinstance(height, int | float) and width > 0 and height > 0:
            return int(width), int(height)
    return None


def _result_items(context: Mapping | None, image_name: str) -> list[Mapping]:
    if not context:
        return []
    if not isinstance(context, Mapping):
        raise PromptError("context: must be a JSON object with a 'result' list")
    items = context.get("result") or []
    if not isinstance(items, list) or not all(isinstance(item, Mapping) for item in items):
        raise PromptError("context.result: must be a list of result objects")
    return [item for item in items if item.get("to_name", image_name) == image_name]


def _smart_click(
    keypoints: Sequence[Mapping], rectangles: Sequence[Mapping], interface: ProjectInterface
) -> SmartClick:
    source = _source_control(keypoints[0], KEYPOINT, interface)
    points = tuple(_keypoint(item) for item in keypoints)
    labels = tuple(0 if item.get("is_positive") is False else 1 for item in keypoints)
    box = _rectangle_box(rectangles[-1]) if rectangles else None
    label = _label_of([*keypoints, *rectangles], source)
    return SmartClick(points, labels, box, label, source)


def _smart_box(rectangle: Mapping, interface: ProjectInterface) -> SmartBox:
    source = _source_control(rectangle, RECTANGLE, interface)
    return SmartBox(_rectangle_box(rectangle), _label_of([rectangle], source), source)


def _text_prompt(items: Sequence[Mapping]) -> TextPrompt:
    texts = [
        text.strip() for item in items for text in _value(item).get("text") or [] if isinstance(text, str)
    ]
    texts = [text for text in texts if text]
    if not texts:
        raise PromptError("context: the text prompt is empty; type what to look for, e.g. 'bottle . can'")
    return TextPrompt(" . ".join(texts))


def _source_control(item: Mapping, control_type: str, interface: ProjectInterface) -> ControlTag:
    name = item.get("from_name")
    control = interface.control(name) if name else interface.first_of(control_type)
    if control is None:
        raise PromptError(
            f"context: control '{name or control_type}' is not in the project's label config "
            "(was the config changed? reload the task)"
        )
    return control


def _label_of(items: Sequence[Mapping], source: ControlTag) -> str:
    """The label chosen in the UI; restored regions may lack it, so any item's or the control's first."""
    for item in items:
        value = _value(item)
        for key in (item.get("type"), "labels"):
            labels = value.get(key) if isinstance(key, str) else None
            if labels and isinstance(labels, list) and isinstance(labels[0], str):
                return labels[0]
    if source.labels:
        return source.labels[0]
    raise PromptError(f"context: no label chosen and control '{source.name}' has no <Label>")


def _keypoint(item: Mapping) -> tuple[float, float]:
    value = _value(item)
    return (clamp_unit(_percent(value, "x", item) / 100), clamp_unit(_percent(value, "y", item) / 100))


def _rectangle_box(item: Mapping) -> BoxXYXY:
    value = _value(item)
    x, y = _percent(value, "x", item), _percent(value, "y", item)
    width, height = _percent(value, "width", item), _percent(value, "height", item)
    box = (
        clamp_unit(x / 100),
        clamp_unit(y / 100),
        clamp_unit((x + width) / 100),
        clamp_unit((y + height) / 100),
    )
    if not (box[0] < box[2] and box[1] < box[3]):
        raise PromptError(f"context: rectangle {item.get('id', '')} has no area inside the image; drag a box")
    return box


def _value(item: Mapping) -> Mapping[str, Any]:
    value = item.get("value")
    if not isinstance(value, Mapping):
        raise PromptError(
            f"context: {item.get('type', 'result')} item {item.get('id', '')} has no 'value' object"
        )
    return value


def _percent(value: Mapping[str, Any], key: str, item: Mapping) -> float:
    number = value.get(key)
    if isinstance(number, bool) or not isinstance(number, int | float) or not math.isfinite(number):
        raise PromptError(
            f"context: {item.get('type', 'result')} item {item.get('id', '')} needs a numeric value.{key} "
            f"(percent of the image), got {number!r}"
        )
    return float(number)
