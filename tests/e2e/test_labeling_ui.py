"""The one test that proves Label Studio's real client accepts what the backend sends.

Label Studio 1.23's labeling page in headless Chromium, logged in as a user: the annotator turns on
Auto-Annotation, picks the Auto-Detect smart keypoint and a label, clicks the image; the backend's SAM
mask appears as suggestions, the annotator accepts them and submits; the stored annotation holds the mask.
"""

from __future__ import annotations

import re

import numpy as np
import pytest
from label_studio_sdk.converter.brush import decode_rle

from tests.conftest import LabelStudio
from tests.e2e.browser import browser_page, shots_dir_for
from tests.labelstudio.configs import SAM_CONFIG
from tests.support import make_image

pytestmark = [pytest.mark.e2e, pytest.mark.slow]
# As the `label_studio` fixture creates the user.
EMAIL, PASSWORD = "admin@example.com", "pass1234"
WIDTH, HEIGHT = 360, 240
CLICK = (0.4, 0.55)  # where the annotator clicks, as a fraction of the image


def sam_project_with_one_upload(ls: LabelStudio, backend_url: str) -> tuple[int, int]:
    project = ls.api(
        "POST", "/api/projects", json={"title": "labeling ui", "label_config": SAM_CONFIG}
    ).json()
    image = make_image(WIDTH, HEIGHT)
    # An upload: images from another origin do not render in the labeling page (no CORS).
    ls.api(
        "POST",
        f"/api/projects/{project['id']}/import",
        files={"photo.png": ("photo.png", image, "image/png")},
    )
    tasks = ls.tasks(project["id"])
    ls.connect(project["id"], backend_url, interactive=True)
    # Connecting turns on "prelabel with the live model", which would copy a batch prediction into the
    # new annotation; off, the stored annotation holds only what the click produced.
    ls.api("PATCH", f"/api/projects/{project['id']}", json={"show_collab_predictions": False})
    return project["id"], tasks[0]["id"]


def test_smart_keypoint_in_the_labeling_page_stores_the_backend_mask(
    label_studio: LabelStudio, backend_url: str, request: pytest.FixtureRequest
) -> None:
    project, task = sam_project_with_one_upload(label_studio, backend_url)
    with browser_page(shots_dir_for(request)) as browser:
        browser.login_label_studio(label_studio.url, EMAIL, PASSWORD)
        browser.set_local_storage("autoAnnotation", "true")  # the bottom bar's Auto-Annotation toggle
        browser.goto(f"{label_studio.url}/projects/{project}/data?task={task}", wait_for="canvas")
        page = browser.page
        page.wait_for_selector("button[aria-label='Submit current annotation']")

        browser.click("button.lsf-tool_smart:not([aria-label])")  # Auto-Detect opens the smart tools
        browser.click("button.lsf-tool_smart[aria-label='key-point-tool']")
        page.locator(".lsf-label").filter(has_text="Banana").first.click()  # KeyPointLabels tag2
        browser.screenshot("1-ready")
        with page.expect_response(lambda r: "/interactive-annotating" in r.url, timeout=120_000) as answer:
            browser.click_at("canvas", *CLICK)
        sent = answer.value.request.post_data_json
        returned = answer.value.json()
        assert "errors" not in returned, returned

        point = sent["context"]["result"][0]
        assert (point["type"], point["value"]["keypointlabels"]) == ("keypointlabels", ["Banana"])
        assert point["value"]["x"] == pytest.approx(CLICK[0] * 100, abs=1)
        assert point["value"]["y"] == pytest.approx(CLICK[1] * 100, abs=1)
        assert (point["original_width"], point["original_height"]) == (WIDTH, HEIGHT)
        regions = returned["data"]["result"]
        brush = [item for item in regions if item["type"] == "brushlabels"]
        assert len(brush) == 1 and brush[0]["value"]["brushlabels"] == ["Banana"]

        # The page shows what the backend returned as suggestions to accept.
        counter = page.locator(".lsf-auto-accept__info")
        counter.wait_for()
        assert re.fullmatch(rf"{len(regions)} suggestions?", counter.inner_text().strip()), (
            counter.inner_text()
        )
        browser.screenshot("2-suggestions")
        browser.click("[data-testid='bottombar-accept-suggestions-button']")
        counter.wait_for(state="detached")
        browser.screenshot("3-accepted")
        with page.expect_response(
            lambda r: f"/api/tasks/{task}/annotations" in r.url and r.request.method == "POST"
        ) as submitted:
            browser.click("button[aria-label='Submit current annotation']")
        assert submitted.value.status == 201, submitted.value.text()
        browser.screenshot("4-submitted")
        assert not [error for error in browser.console_errors if "pageerror" in error], browser.console_errors

    stored = label_studio.api("GET", f"/api/tasks/{task}/annotations").json()
    assert len(stored) == 1
    masks = [item for item in stored[0]["result"] if item["type"] == "brushlabels"]
    assert len(masks) == 1, [item["type"] for item in stored[0]["result"]]
    mask = masks[0]
    assert mask["value"]["brushlabels"] == ["Banana"]
    assert (mask["original_width"], mask["original_height"]) == (WIDTH, HEIGHT)
    pixels = decode_rle(mask["value"]["rle"])
    assert pixels.size == WIDTH * HEIGHT * 4
    assert np.array_equal(pixels, decode_rle(brush[0]["value"]["rle"])), (
        "the stored mask is not the backend's"
    )
