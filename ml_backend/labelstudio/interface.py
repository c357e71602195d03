"""A Label Studio label config reduced to what the backend needs: the image, the controls bound to
it, their labels and the phrases each label stands for (`predicted_values="bottle, can, box"`)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from label_studio_sdk.label_interface import LabelInterface
from label_studio_sdk.label_interface.control_tags import ControlTag as SdkControlTag
from label_studio_sdk.label_interface.object_tags import ObjectTag as SdkObjectTag

from ml_backend.schemas import RequestError

KEYPOINT = "KeyPointLabels"
RECTANGLE = "RectangleLabels"
BRUSH = "BrushLabels"
POLYGON = "PolygonLabels"
TEXT_AREA = "TextArea"
REGION_CONTROLS = (KEYPOINT, RECTANGLE, BRUSH, POLYGON)


class LabelConfigError(RequestError):
    """The project's label config (or a task's data) does not fit this backend; the message says what to add."""


@dataclass(frozen=True)
class ControlTag:
    name: str
    type: str
    to_name: str
    labels: tuple[str, ...]
    predicted_values: Mapping[str, tuple[str, ...]] = field(
        default_factory=lambda: MappingProxyType({}), hash=False
    )

    @property
    def result_type(self) -> str:
        """The `type` of a result item of this control, also the key of its labels in `value`."""
        return self.type.lower()

    def phrases_for(self, label: str) -> tuple[str, ...]:
        return self.predicted_values.get(label) or (label,)


@dataclass(frozen=True)
class ProjectInterface:
    image_name: str
    image_data_key: str
    controls: tuple[ControlTag, ...]
    text_prompt: ControlTag | None = None

    @classmethod
    def from_config(cls, label_config_xml: str) -> ProjectInterface:
        parsed = _parse(label_config_xml)
        images = [tag for tag in parsed.objects if tag.tag == "Image"]
        if not images:
            raise LabelConfigError(
                'The label config has no <Image> tag: add <Image name="image" value="$image"/> '
                "and bind the labelling controls to it with toName."
            )
        bound = {image.name: _controls_bound_to(parsed, image.name) for image in images}
        image = next((image for image in images if bound[image.name][0]), images[0])
        controls, text_prompt = bound[image.name]
        if not controls:
            raise LabelConfigError(
                f"The label config has no {', '.join(REGION_CONTROLS)} bound to "
                f'<Image name="{image.name}">: add one with toName="{image.name}" and its <Label> values.'
            )
        return cls(image.name, _data_key(image), controls, text_prompt)

    def control(self, name: str) -> ControlTag | None:
        return next((tag for tag in self._all_controls() if tag.name == name), None)

    def first_of(self, control_type: str) -> ControlTag | None:
        return next((tag for tag in self.controls if tag.type == control_type), None)

    def control_for(self, control_type: str, label: str) -> ControlTag | None:
        """The first control of that type offering the label, or None: a region is never given a label
        its control does not have."""
        return next((tag for tag in self.controls if tag.type == control_type and label in tag.labels), None)

    def mask_targets(self, label: str) -> tuple[ControlTag, ...]:
        """The brush and polygon controls a mask with this label goes to (at most one of each)."""
        targets = (self.control_for(BRUSH, label), self.control_for(POLYGON, label))
        return tuple(tag for tag in targets if tag is not None)

    def labels(self) -> list[str]:
        return list(dict.fromkeys(label for tag in self.controls for label in tag.labels))

    def batch_phrases(self) -> list[str]:
        """What to look for in a batch prediction: each label's predicted values, else the label itself."""
        phrases = (
            phrase for tag in self.controls for label in tag.labels for phrase in tag.phrases_for(label)
        )
        return list(dict.fromkeys(phrases))

    def label_for_phrase(self, phrase: str) -> str | None:
        """The label a detected phrase stands for: an exact label name, else a case-insensitive match of
        a label name, else of a predicted value. None when nothing or several labels match."""
        if phrase.strip() in self.labels():
            return phrase.strip()
        key = _phrase_key(phrase)
        for matches in (self._labels_named(key), self._labels_predicting(key)):
            if matches:
                return matches.pop() if len(matches) == 1 else None
        return None

    def _labels_named(self, key: str) -> set[str]:
        return {label for label in self.labels() if _phrase_key(label) == key}

    def _labels_predicting(self, key: str) -> set[str]:
        return {
            label
            for tag in self.controls
            for label, values in tag.predicted_values.items()
            if key in map(_phrase_key, values)
        }

    def task_image(self, task: Mapping) -> str:
        """The image reference of a task (URL, /data/upload/... path or cloud URI)."""
        value = (task.get("data") or {}).get(self.image_data_key)
        if not isinstance(value, str) or not value:
            raise LabelConfigError(
                f"Task {task.get('id', '?')} has no data field '{self.image_data_key}', which "
                f'<Image name="{self.image_name}" value="${self.image_data_key}"> reads: '
                "import the task with that key or change the label config."
            )
        return value

    def _all_controls(self) -> tuple[ControlTag, ...]:
        return (*self.controls, self.text_prompt) if self.text_prompt else self.controls


def _parse(label_config_xml: str) -> LabelInterface:
    try:
        return LabelInterface(label_config_xml)
    except Exception as error:
        raise LabelConfigError(f"The label config is not valid XML: {error}") from None


def _controls_bound_to(
    parsed: LabelInterface, image_name: str
) -> tuple[tuple[ControlTag, ...], ControlTag | None]:
    controls = []
    text_prompt = None
    for tag in parsed.controls:
        if image_name not in tag.to_name:
            continue
        if tag.tag in REGION_CONTROLS:
            controls.append(_control_tag(tag, image_name))
        elif tag.tag == TEXT_AREA and text_prompt is None:
            text_prompt = ControlTag(tag.name, TEXT_AREA, image_name, ())
    return tuple(controls), text_prompt


def _control_tag(tag: SdkControlTag, image_name: str) -> ControlTag:
    labels = tuple(tag.labels)
    predicted = {
        label: values
        for label, label_tag in tag.labels_attrs.items()
        if (values := parse_predicted_values(label_tag.attr.get("predicted_values", "")))
    }
    return ControlTag(tag.name, tag.tag, image_name, labels, MappingProxyType(predicted))


def parse_predicted_values(text: str) -> tuple[str, ...]:
    """ "bottle, can,  box" → ("bottle", "can", "box")."""
    return tuple(dict.fromkeys(value.strip() for value in text.split(",") if value.strip()))


def _data_key(image: SdkObjectTag) -> str:
    value = image.value or ""
    if not value.startswith("$") or len(value) < 2:
        raise LabelConfigError(
            f'<Image name="{image.name}" value="{value}"> must read the image from task data, '
            'like value="$image".'
        )
    return value[1:]


def _phrase_key(phrase: str) -> str:
    return " ".join(phrase.lower().split())
