"""The wire contract: the RunPod `input` object and the response, shared by every front.

The worker validates incoming jobs with it, the offload client builds requests with it, and the
Label Studio backend calls the engine with it, so local and offloaded inference are the same call.
All coordinates, in and out, are normalised to [0, 1] of the EXIF-corrected original image.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, model_validator

Unit = Annotated[float, Field(ge=0.0, le=1.0)]
Point = tuple[Unit, Unit]
Box = tuple[Unit, Unit, Unit, Unit]

DetectModel = Literal["grounding_dino", "florence2", "sam3"]
SegmentModel = Literal["sam2", "sam3"]
MaskFormat = Literal["rle", "polygons", "both"]
Florence2Task = Literal[
    "od",
    "phrase_grounding",
    "open_vocabulary_detection",
    "dense_region_caption",
    "region_proposal",
    "referring_expression_segmentation",
    "ocr_with_region",
]
FLORENCE2_TASKS_NEEDING_TEXT = {
    "phrase_grounding",
    "open_vocabulary_detection",
    "referring_expression_segmentation",
}


class WireModel(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class PolygonFields(WireModel):
    """Polygon output settings (`mask_format: polygons | both`); unset fields take the server's
    POLYGON_TOLERANCE, POLYGON_MAX_POINTS and POLYGON_MIN_AREA."""

    polygon_tolerance: Annotated[float, Field(ge=0.0, le=0.1)] | None = None
    polygon_max_points: Annotated[int, Field(ge=3, le=100_000)] | None = None
    polygon_min_area: Unit | None = None


IMAGE_REF_MISS = "image_ref: not cached on this worker"
"""The stable start of a worker's error for an `image_ref` it does not hold: resend with the bytes."""


class ImageRef(WireModel):
    """An image the worker has seen before: the blake2b-128 hex digest of its source bytes (the
    embedding-cache key, `RGBImage.key`) and their length."""

    hash: Annotated[str, Field(pattern=r"^[0-9a-f]{32}$")]
    bytes: Annotated[int, Field(gt=0)]


class ImageSource(WireModel):
    """Exactly one of the image fields. `image_path` is accepted only by the Label Studio backend;
    `image_ref` only names an image this worker decoded before (else an `IMAGE_REF_MISS` error)."""

    image_url: str | None = None
    image_base64: str | None = None
    image_path: str | None = None
    image_ref: ImageRef | None = None

    @model_validator(mode="after")
    def _exactly_one_image(self) -> ImageSource:
        fields = ("image_url", "image_base64", "image_path", "image_ref")
        given = [name for name in fields if getattr(self, name)]
        if len(given) != 1:
            found = ", ".join(given) if given else "none"
            raise ValueError(f"image: give exactly one of image_url, image_base64 or image_ref (got {found})")
        return self


class DetectOptions(PolygonFields):
    model: DetectModel
    text_prompt: str | None = None
    box_threshold: Unit | None = None
    text_threshold: Unit | None = None
    with_masks: bool = False
    florence2_task: Florence2Task = "od"
    max_detections: Annotated[int, Field(gt=0, le=1000)] | None = None
    mask_format: MaskFormat = "rle"

    @model_validator(mode="after")
    def _prompt_where_needed(self) -> DetectOptions:
        if self.model in ("grounding_dino", "sam3") and not (self.text_prompt or "").strip():
            raise ValueError(f"text_prompt: required for model {self.model}")
        if (
            self.model == "florence2"
            and self.florence2_task in FLORENCE2_TASKS_NEEDING_TEXT
            and not (self.text_prompt or "").strip()
        ):
            raise ValueError(f"text_prompt: required for florence2_task {self.florence2_task}")
        return self


class DetectRequest(DetectOptions, ImageSource):
    task: Literal["detect"] = "detect"


class SegmentRequest(PolygonFields, ImageSource):
    task: Literal["segment"] = "segment"
    model: SegmentModel
    prompt_type: Literal["point", "points", "box", "text"] | None = None
    point: Point | None = None
    label: Literal[0, 1] = 1
    points: Annotated[list[Point], Field(min_length=1, max_length=64)] | None = None
    labels: list[Literal[0, 1]] | None = None
    box: Box | None = None
    text_prompt: str | None = None
    threshold: Unit | None = None
    multimask: bool = False
    mask_format: MaskFormat = "rle"

    @model_validator(mode="after")
    def _prompt_is_complete(self) -> SegmentRequest:
        if self.prompt_type is None:
            self.prompt_type = self._infer_prompt_type()
        required = {"point": "point", "points": "points", "box": "box", "text": "text_prompt"}[
            self.prompt_type
        ]
        if not getattr(self, required):
            raise ValueError(f"{required}: required for prompt_type {self.prompt_type}")
        if self.prompt_type == "text" and self.model != "sam3":
            raise ValueError("prompt_type: text prompts need model sam3")
        if self.points is not None and self.labels is not None and len(self.labels) != len(self.points):
            raise ValueError(f"labels: {len(self.labels)} labels for {len(self.points)} points")
        if self.box is not None and not (self.box[0] < self.box[2] and self.box[1] < self.box[3]):
            raise ValueError("box: must be [x1, y1, x2, y2] with x1 < x2 and y1 < y2")
        return self

    def _infer_prompt_type(self) -> str:
        if self.points:
            return "points"
        if self.point:
            return "point"
        if self.box:
            return "box"
        if self.text_prompt:
            return "text"
        raise ValueError("prompt_type: give point, points, box or text_prompt")

    def prompt_points(self) -> tuple[list[Point], list[int]]:
        """All clicked points with their labels (1 positive, 0 negative), whatever field carried them."""
        points: list[Point] = []
        labels: list[int] = []
        if self.point is not None:
            points.append(self.point)
            labels.append(self.label)
        if self.points:
            points.extend(self.points)
            labels.extend(self.labels if self.labels is not None else [1] * len(self.points))
        return points, labels


class BatchImage(WireModel):
    id: str | int
    url: str | None = None
    base64: str | None = None
    path: str | None = None

    def as_source(self) -> ImageSource:
        return ImageSource.model_construct(image_url=self.url, image_base64=self.base64, image_path=self.path)


class BatchRequest(DetectOptions):
    task: Literal["batch"] = "batch"
    images: Annotated[list[BatchImage], Field(min_length=1)]


class EmbedRequest(ImageSource):
    """Compute and cache the image's SAM embedding ahead of the first click (prewarm); no masks."""

    task: Literal["embed"] = "embed"
    model: SegmentModel = "sam2"


AnyRequest = DetectRequest | SegmentRequest | BatchRequest | EmbedRequest
Request = Annotated[AnyRequest, Field(discriminator="task")]
_request_adapter: TypeAdapter[AnyRequest] = TypeAdapter(Request)


class RequestError(ValueError):
    """Bad input: the message names the field and the reason, for the user to act on."""


class ImageRefMiss(RequestError):
    """The worker holds no image for this `image_ref` (evicted, restarted, or another worker)."""

    def __init__(self) -> None:
        super().__init__(f"{IMAGE_REF_MISS}; send the image again as image_base64 or image_url")


def parse_request(payload: Any) -> AnyRequest:
    if not isinstance(payload, dict):
        raise RequestError("input: must be a JSON object")
    if "task" not in payload:
        raise RequestError("task: required, one of detect, segment, batch, embed")
    try:
        return _request_adapter.validate_python(payload)
    except ValidationError as error:
        raise RequestError(describe_errors(error)) from None


def describe_errors(error: ValidationError) -> str:
    messages = []
    for item in error.errors():
        loc = [str(part) for part in item["loc"] if part not in ("detect", "segment", "batch", "embed")]
        message = item["msg"].removeprefix("Value error, ")
        if item["type"] == "union_tag_invalid":
            message = "task: must be one of detect, segment, batch, embed"
        elif item["type"] == "extra_forbidden":
            message = f"{'.'.join(loc)}: unknown field"
        elif loc and not message.startswith(f"{loc[-1]}:"):
            message = f"{'.'.join(loc)}: {message}"
        messages.append(message)
    return "; ".join(dict.fromkeys(messages))


# ---- responses ----


class RLE(BaseModel):
    """COCO run-length encoding, pycocotools-compatible (column-major, compressed counts)."""

    size: tuple[int, int]
    counts: str


class ImageSize(BaseModel):
    width: int
    height: int


class Timing(BaseModel):
    download: float = 0.0
    inference: float = 0.0
    total: float = 0.0


class DetectionOut(BaseModel):
    label: str
    score: float
    box: tuple[float, float, float, float]
    mask: RLE | None = None
    polygons: list[list[float]] | None = None


class MaskOut(BaseModel):
    score: float
    box: tuple[float, float, float, float]
    mask: RLE | None = None
    polygons: list[list[float]] | None = None


class DetectResponse(BaseModel):
    task: Literal["detect"] = "detect"
    model: str
    model_id: str
    image: ImageSize
    detections: list[DetectionOut]
    timing_ms: Timing


class SegmentResponse(BaseModel):
    task: Literal["segment"] = "segment"
    model: str
    model_id: str
    image: ImageSize
    masks: list[MaskOut]
    timing_ms: Timing


class BatchItem(BaseModel):
    id: str | int
    image: ImageSize | None = None
    detections: list[DetectionOut] | None = None
    error: str | None = None


class BatchResponse(BaseModel):
    task: Literal["batch"] = "batch"
    model: str
    model_id: str
    results: list[BatchItem]
    timing_ms: Timing


class EmbedResponse(BaseModel):
    task: Literal["embed"] = "embed"
    model: str
    model_id: str
    image: ImageSize
    timing_ms: Timing


Response = DetectResponse | SegmentResponse | BatchResponse | EmbedResponse
_response_adapter: TypeAdapter[Response] = TypeAdapter(Annotated[Response, Field(discriminator="task")])


def parse_response(payload: Any) -> Response:
    return _response_adapter.validate_python(payload)
