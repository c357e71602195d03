"""Label configs for tests and the README: the control names match the contexts recorded from a real
Label Studio 1.23.2 (/work/shared/notes/ls_protocol.md): KeyPointLabels `tag2`, RectangleLabels `tag3`."""

SAM_CONFIG = """<View>
  <Image name="image" value="$image" zoom="true"/>
  <KeyPointLabels name="tag2" toName="image" smart="true">
    <Label value="Banana" background="yellow"/>
    <Label value="Orange" background="orange"/>
  </KeyPointLabels>
  <RectangleLabels name="tag3" toName="image" smart="true">
    <Label value="Banana" background="yellow"/>
    <Label value="Orange" background="orange"/>
  </RectangleLabels>
  <BrushLabels name="tag" toName="image">
    <Label value="Banana" background="yellow"/>
    <Label value="Orange" background="orange"/>
  </BrushLabels>
  <PolygonLabels name="outline" toName="image">
    <Label value="Banana" background="yellow"/>
    <Label value="Orange" background="orange"/>
  </PolygonLabels>
</View>"""

TEXT_PROMPT_CONFIG = """<View>
  <Image name="image" value="$image"/>
  <TextArea name="prompt" toName="image" editable="true" rows="2" maxSubmissions="1"
            showSubmitButton="true" smart="true" placeholder="What to find, e.g. bottle . can"/>
  <RectangleLabels name="box" toName="image">
    <Label value="Product" predicted_values="bottle, can, box" background="green"/>
    <Label value="Price tag" background="red"/>
  </RectangleLabels>
  <BrushLabels name="mask" toName="image">
    <Label value="Product" predicted_values="bottle, can, box" background="green"/>
    <Label value="Price tag" background="red"/>
  </BrushLabels>
</View>"""

RECT_ONLY_CONFIG = """<View>
  <Image name="img" value="$photo"/>
  <RectangleLabels name="label" toName="img">
    <Label value="Car"/>
    <Label value="Person"/>
  </RectangleLabels>
</View>"""


# A smart keypoint click as a real Label Studio 1.23.2 sends it in `params.context` (ls_protocol.md §5).
RECORDED_KEYPOINT_CONTEXT = {
    "result": [
        {
            "original_width": 640,
            "original_height": 480,
            "image_rotation": 0,
            "value": {
                "x": 32.20973782771535,
                "y": 40.09571369121931,
                "width": 0.26362038664323373,
                "labels": ["Banana"],
                "keypointlabels": ["Banana"],
            },
            "is_positive": True,
            "id": "sHeJYe18V1",
            "from_name": "tag2",
            "to_name": "image",
            "type": "keypointlabels",
            "origin": "manual",
        }
    ]
}


def keypoint_click_body(image_url: str, width: int, height: int) -> dict:
    """A `/predict` body for one positive smart keypoint in the middle of a `SAM_CONFIG` task's image."""
    click = {
        "original_width": width,
        "original_height": height,
        "value": {"x": 50.0, "y": 50.0, "keypointlabels": ["Banana"]},
        "is_positive": True,
        "from_name": "tag2",
        "to_name": "image",
        "type": "keypointlabels",
    }
    return {
        "tasks": [{"id": 1, "data": {"image": image_url}}],
        "label_config": SAM_CONFIG,
        "project": "1.1",
        "params": {"context": {"result": [click]}},
    }
