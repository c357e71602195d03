import pytest

from ml_backend.labelstudio.interface import ProjectInterface
from ml_backend.labelstudio.prompts import (
    PromptError,
    SmartBox,
    SmartClick,
    TextPrompt,
    interaction_from_context,
    original_size_from_context,
)
from tests.labelstudio.configs import (
    RECORDED_KEYPOINT_CONTEXT,
    RECT_ONLY_CONFIG,
    SAM_CONFIG,
    TEXT_PROMPT_CONFIG,
)

# Bodies of POST /api/ml/<id>/interactive-annotating recorded from Label Studio 1.23.2 (ls_protocol.md §5).
KEYPOINT_CLICK = {"task": 7, "context": RECORDED_KEYPOINT_CONTEXT}

NEGATIVE_CLICK = {
    "task": 7,
    "context": {
        "result": [
            KEYPOINT_CLICK["context"]["result"][0],
            {
                "original_width": 640,
                "original_height": 480,
                "image_rotation": 0,
                "value": {
                    "x": 70.7865168539326,
                    "y": 53.9117769454848,
                    "width": 0.26362038664323373,
                    "labels": ["Banana"],
                    "keypointlabels": ["Banana"],
                },
                "is_positive": False,
                "id": "7uz63dP9Mu",
                "from_name": "tag2",
                "to_name": "image",
                "type": "keypointlabels",
                "origin": "manual",
            },
        ]
    },
}

SMART_RECTANGLE = {
    "task": 7,
    "context": {
        "result": [
            {
                "original_width": 640,
                "original_height": 480,
                "image_rotation": 0,
                "value": {
                    "x": 15.980024968789014,
                    "y": 30.274656679151065,
                    "width": 34.082397003745314,
                    "height": 19.808572617561374,
                    "rotation": 0,
                    "rectanglelabels": ["Banana"],
                },
                "id": "IcCNbmaigL",
                "from_name": "tag3",
                "to_name": "image",
                "type": "rectanglelabels",
                "origin": "manual",
            }
        ]
    },
}

TEXT_PROMPT = {
    "task": 3,
    "context": {
        "result": [
            {
                "value": {"text": ["banana"]},
                "id": "uuguVZyRiz",
                "from_name": "prompt",
                "to_name": "image",
                "type": "textarea",
                "origin": "manual",
            }
        ]
    },
}

# A point restored from a draft comes back without is_positive and without value.labels.
RESTORED_POINT = {
    "original_width": 640,
    "original_height": 480,
    "image_rotation": 0,
    "value": {"x": 32.20973782771535, "y": 40.09571369121931, "width": 0.26362038664323373},
    "id": "sHeJYe18V1",
    "from_name": "tag2",
    "to_name": "image",
    "type": "keypointlabels",
    "origin": "manual",
}


def _flat(points: tuple[tuple[float, float], ...]) -> list[float]:
    return [coordinate for point in points for coordinate in point]


@pytest.fixture(scope="module")
def sam() -> ProjectInterface:
    return ProjectInterface.from_config(SAM_CONFIG)


def test_keypoint_click_becomes_one_positive_normalised_point(sam: ProjectInterface) -> None:
    click = interaction_from_context(KEYPOINT_CLICK["context"], sam)

    assert isinstance(click, SmartClick)
    assert _flat(click.points) == pytest.approx([0.3220973782771535, 0.4009571369121931])
    assert click.labels == (1,)
    assert click.box is None
    assert click.label == "Banana"
    assert click.source.name == "tag2"


def test_alt_click_adds_a_negative_point_to_the_same_set(sam: ProjectInterface) -> None:
    click = interaction_from_context(NEGATIVE_CLICK["context"], sam)

    assert _flat(click.points) == pytest.approx([0.322097, 0.400957, 0.707865, 0.539118], abs=1e-6)
    assert click.labels == (1, 0)


def test_restored_point_without_is_positive_is_positive_and_borrows_the_label(sam: ProjectInterface) -> None:
    negative = NEGATIVE_CLICK["context"]["result"][1]
    click = interaction_from_context({"result": [RESTORED_POINT, negative]}, sam)

    assert click.labels == (1, 0)
    assert click.label == "Banana"


def test_unlabelled_points_take_the_first_label_of_their_control(sam: ProjectInterface) -> None:
    click = interaction_from_context({"result": [RESTORED_POINT]}, sam)

    assert click.label == "Banana"
    assert click.labels == (1,)


def test_smart_rectangle_becomes_a_normalised_xyxy_box(sam: ProjectInterface) -> None:
    smart_box = interaction_from_context(SMART_RECTANGLE["context"], sam)

    assert isinstance(smart_box, SmartBox)
    assert smart_box.box == pytest.approx((0.15980025, 0.30274657, 0.50062422, 0.50083229))
    assert smart_box.label == "Banana"
    assert smart_box.source.name == "tag3"


def test_keypoints_with_a_rectangle_carry_the_box(sam: ProjectInterface) -> None:
    context = {"result": [*NEGATIVE_CLICK["context"]["result"], *SMART_RECTANGLE["context"]["result"]]}
    click = interaction_from_context(context, sam)

    assert isinstance(click, SmartClick)
    assert click.box == pytest.approx((0.15980025, 0.30274657, 0.50062422, 0.50083229))
    assert len(click.points) == 2


def test_rectangle_reaching_past_the_image_is_clamped(sam: ProjectInterface) -> None:
    item = SMART_RECTANGLE["context"]["result"][0]
    beyond = {**item, "value": {**item["value"], "x": 80.0, "width": 40.0, "y": -5.0, "height": 10.0}}

    assert interaction_from_context({"result": [beyond]}, sam).box == pytest.approx((0.8, 0.0, 1.0, 0.05))


def test_text_prompt_is_read_from_the_textarea() -> None:
    interface = ProjectInterface.from_config(TEXT_PROMPT_CONFIG)

    assert interaction_from_context(TEXT_PROMPT["context"], interface) == TextPrompt("banana")


@pytest.mark.parametrize("context", [None, {}, {"result": []}])
def test_no_context_means_batch_prediction(sam: ProjectInterface, context: dict | None) -> None:
    assert interaction_from_context(context, sam) is None


def test_original_size_comes_from_any_result_item() -> None:
    assert original_size_from_context(NEGATIVE_CLICK["context"]) == (640, 480)
    assert original_size_from_context(TEXT_PROMPT["context"]) is None
    assert original_size_from_context(None) is None
    assert (
        original_size_from_context({"result": ["junk", {"original_width": 0, "original_height": 5}]}) is None
    )


def _keypoint_with(value: dict) -> dict:
    return {"result": [{**RESTORED_POINT, "value": value}]}


@pytest.mark.parametrize(
    ("context", "message"),
    [
        (_keypoint_with({"y": 40.0}), r"numeric value\.x"),
        (_keypoint_with({"x": "left", "y": 40.0}), r"numeric value\.x"),
        ({"result": [{**RESTORED_POINT, "value": None}]}, "no 'value' object"),
        ({"result": [{**RESTORED_POINT, "from_name": "gone"}]}, "control 'gone' is not in"),
        ({"result": "nope"}, "must be a list"),
        (
            {"result": [{"type": "brushlabels", "value": {}, "to_name": "image"}]},
            "brushlabels are not supported",
        ),
        (
            {"result": [{**TEXT_PROMPT["context"]["result"][0], "value": {"text": ["  "]}}]},
            "text prompt is empty",
        ),
    ],
)
def test_malformed_contexts_raise_prompt_error(sam: ProjectInterface, context: dict, message: str) -> None:
    with pytest.raises(PromptError, match=message):
        interaction_from_context(context, sam)


def test_rectangle_without_area_raises_prompt_error(sam: ProjectInterface) -> None:
    item = SMART_RECTANGLE["context"]["result"][0]
    flat = {**item, "value": {**item["value"], "height": 0}}

    with pytest.raises(PromptError, match="no area"):
        interaction_from_context({"result": [flat]}, sam)


def test_unlabelled_click_on_a_control_without_labels_raises() -> None:
    config = '<View><Image name="image" value="$image"/><KeyPointLabels name="tag2" toName="image"/></View>'
    interface = ProjectInterface.from_config(config)

    with pytest.raises(PromptError, match="no label chosen"):
        interaction_from_context({"result": [RESTORED_POINT]}, interface)


def test_items_for_another_image_are_ignored() -> None:
    interface = ProjectInterface.from_config(RECT_ONLY_CONFIG)

    assert interaction_from_context(SMART_RECTANGLE["context"], interface) is None
