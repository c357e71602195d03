import pytest

from ml_backend.labelstudio.interface import (
    BRUSH,
    KEYPOINT,
    POLYGON,
    RECTANGLE,
    TEXT_AREA,
    LabelConfigError,
    ProjectInterface,
    parse_predicted_values,
)
from tests.labelstudio.configs import RECT_ONLY_CONFIG, SAM_CONFIG, TEXT_PROMPT_CONFIG


def test_sam_config_has_every_region_control_bound_to_the_image() -> None:
    interface = ProjectInterface.from_config(SAM_CONFIG)

    assert (interface.image_name, interface.image_data_key) == ("image", "image")
    assert [(tag.name, tag.type) for tag in interface.controls] == [
        ("tag2", KEYPOINT),
        ("tag3", RECTANGLE),
        ("tag", BRUSH),
        ("outline", POLYGON),
    ]
    assert all(tag.to_name == "image" for tag in interface.controls)
    assert interface.labels() == ["Banana", "Orange"]
    assert interface.text_prompt is None
    assert [tag.name for tag in interface.mask_targets("Banana")] == ["tag", "outline"]
    assert interface.control("tag2").result_type == "keypointlabels"


def test_text_prompt_config_reads_textarea_and_predicted_values() -> None:
    interface = ProjectInterface.from_config(TEXT_PROMPT_CONFIG)

    assert interface.text_prompt is not None
    assert (interface.text_prompt.name, interface.text_prompt.type) == ("prompt", TEXT_AREA)
    box = interface.first_of(RECTANGLE)
    assert box.labels == ("Product", "Price tag")
    assert dict(box.predicted_values) == {"Product": ("bottle", "can", "box")}
    assert interface.batch_phrases() == ["bottle", "can", "box", "Price tag"]
    assert interface.control("prompt") is interface.text_prompt


def test_rect_only_config_reads_the_image_data_key_and_has_no_mask_targets() -> None:
    interface = ProjectInterface.from_config(RECT_ONLY_CONFIG)

    assert (interface.image_name, interface.image_data_key) == ("img", "photo")
    assert interface.mask_targets("Car") == ()
    assert interface.control_for(RECTANGLE, "Car").name == "label"
    assert interface.control_for(RECTANGLE, "Banana") is None
    assert interface.batch_phrases() == ["Car", "Person"]
    assert (
        interface.task_image({"id": 4, "data": {"photo": "/data/upload/1/a.png"}}) == "/data/upload/1/a.png"
    )


def test_phrase_mapping_is_case_insensitive_and_never_guesses() -> None:
    interface = ProjectInterface.from_config(TEXT_PROMPT_CONFIG)

    assert interface.label_for_phrase("Product") == "Product"
    assert interface.label_for_phrase("  PRICE   tag ") == "Price tag"
    assert interface.label_for_phrase("Bottle") == "Product"
    assert interface.label_for_phrase("can") == "Product"
    assert interface.label_for_phrase("banana") is None
    assert interface.label_for_phrase("bottle can") is None


def test_phrase_claimed_by_two_labels_maps_to_none() -> None:
    config = """<View><Image name="i" value="$image"/><RectangleLabels name="r" toName="i">
      <Label value="Drink" predicted_values="bottle, can"/><Label value="Waste" predicted_values="can"/>
    </RectangleLabels></View>"""
    interface = ProjectInterface.from_config(config)

    assert interface.label_for_phrase("bottle") == "Drink"
    assert interface.label_for_phrase("can") is None


def test_predicted_values_are_split_trimmed_and_deduplicated() -> None:
    assert parse_predicted_values(" bottle, can,, box ,can") == ("bottle", "can", "box")
    assert parse_predicted_values("") == ()


def test_controls_bound_to_another_object_are_ignored() -> None:
    config = """<View><Image name="i" value="$image"/><Text name="t" value="$text"/>
      <RectangleLabels name="r" toName="i"><Label value="Car"/></RectangleLabels>
      <BrushLabels name="b" toName="t"><Label value="Car"/></BrushLabels></View>"""
    interface = ProjectInterface.from_config(config)

    assert [tag.name for tag in interface.controls] == ["r"]


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ('<View><Text name="t" value="$text"/></View>', "no <Image> tag"),
        (
            '<View><Image name="i" value="$image"/><Choices name="c" toName="i"><Choice value="a"/></Choices></View>',
            'bound to <Image name="i">',
        ),
        ('<View><Image name="i" value="$image"', "not valid XML"),
        (
            '<View><Image name="i" value="http://x/a.png"/><RectangleLabels name="r" toName="i">'
            '<Label value="A"/></RectangleLabels></View>',
            'like value="$image"',
        ),
    ],
)
def test_unusable_configs_raise_a_clear_error(config: str, message: str) -> None:
    with pytest.raises(LabelConfigError, match=message.replace("$", r"\$")):
        ProjectInterface.from_config(config)


def test_task_without_the_image_field_names_the_key() -> None:
    interface = ProjectInterface.from_config(SAM_CONFIG)

    with pytest.raises(LabelConfigError, match="Task 9 has no data field 'image'"):
        interface.task_image({"id": 9, "data": {"img": "a.png"}})
