"""RunPod offload: the local Engine's `run(request)`, executed by the serverless worker.

`RemoteEngine` turns a wire-contract request into a RunPod job and the job's result back into the
same response the local engine returns, so the Label Studio backend can use either.

- Local files (`image_path`, `images[].path`: Label Studio uploads) travel as base64, re-encoded
  smaller when needed so the whole body stays under RUNPOD_MAX_PAYLOAD_MB (coordinates are
  normalised, so a smaller copy gives the same geometry).
- A single local image is sent in full once; later requests for the same file (path, size, mtime)
  send only `image_ref` (hash and size of the bytes sent). A worker that no longer holds the image
  answers `IMAGE_REF_MISS` and the request goes again, once, with the bytes.
- `/runsync` answers within its wait window; a job still queued or running is then polled with
  `POST /status/{id}` (POST works on production and on the SDK's local API server).
- 429, 5xx and connection errors are retried with bounded exponential backoff; past
  RUNPOD_TIMEOUT_S the job is cancelled (best effort) and a timeout error raised.

Endpoint URL: `RUNPOD_BASE_URL/RUNPOD_ENDPOINT_OD_ANNOTATION` (production:
`https://api.runpod.ai/v2/<id>`). A base URL that already ends with the endpoint id, or an empty
endpoint id, is used as it is: the SDK's local server (`--rp_serve_api`) serves `/runsync` at its
root, so it is `RUNPOD_BASE_URL=http://127.0.0.1:8000` with an empty endpoint id.
"""

from __future__ import annotations

import base64
import json
import logging
import re
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any

import requests
from pydantic import ValidationError

from ml_backend.config import Settings
from ml_backend.images import ImageLimits, content_key, decode_image, encode_jpeg, read_path
from ml_backend.masks import decode_rle, encode_rle, resize_mask
from ml_backend.schemas import (
    IMAGE_REF_MISS,
    BatchItem,
    BatchRequest,
    BatchResponse,
    DetectRequest,
    EmbedRequest,
    EmbedResponse,
    ImageRef,
    ImageSize,
    RequestError,
    Response,
    SegmentRequest,
    SegmentResponse,
    parse_response,
)

log = logging.getLogger(__name__)
Request = DetectRequest | SegmentRequest | BatchRequest | EmbedRequest

FINAL_STATES = frozenset({"COMPLETED", "FAILED", "CANCELLED", "TIMED_OUT"})
MAX_TRIES = 5
BACKOFF_START_S = 0.5
BACKOFF_MAX_S = 8.0
RETRY_AFTER_MAX_S = 60.0
POLL_START_S = 0.5
POLL_MAX_S = 5.0
CONNECT_TIMEOUT_S = 10.0
READ_MARGIN_S = 15.0  # a call may outlive the job deadline by this much while RunPod answers
CANCEL_TIMEOUT_S = 5.0
RUNSYNC_WAIT_MS = (1_000, 300_000)  # the range RunPod accepts for /runsync?wait=
ASYNC_PAYLOAD_MAX_MB = 9.5  # /run accepts 10 MB, less than /runsync's 20 MB
MB = 1024 * 1024
SENT_IMAGES_MAX = 4096  # remembered local files (a few hundred bytes each)


class RemoteInferenceError(RuntimeError):
    """RunPod could not produce a result. The message is meant for the Label Studio user: the
    worker's own error string when it gave one, else what went wrong and which setting to check."""

    def __init__(self, message: str, job_id: str | None = None, status: str | None = None) -> None:
        super().__init__(message)
        self.job_id = job_id
        self.status = status


class RemoteTimeoutError(RemoteInferenceError):
    """The job did not finish within RUNPOD_TIMEOUT_S."""


def endpoint_url(settings: Settings) -> str:
    base = settings.runpod_base_url.rstrip("/")
    endpoint_id = (settings.runpod_endpoint_od_annotation or "").strip("/")
    if not endpoint_id or base.endswith(f"/{endpoint_id}"):
        return base
    return f"{base}/{endpoint_id}"


# ---- request body: local files → base64 under a byte budget ----


@dataclass(frozen=True)
class SentImage:
    """The bytes a worker got for a local file, as an `image_ref`, and the file's (width, height)
    when those bytes were a downscaled copy."""

    ref: ImageRef
    original_size: tuple[int, int] | None = None


@dataclass
class PackedInput:
    """The RunPod `input` object, plus batch images (by position) that could not be read here."""

    payload: dict[str, Any]
    skipped: dict[int, str] = field(default_factory=dict)
    # Images sent downscaled: their original (width, height), keyed by batch index (None: single image).
    original_sizes: dict[int | None, tuple[int, int]] = field(default_factory=dict)
    # The single image's bytes as sent, for `image_ref` on later requests (None for batches).
    sent: SentImage | None = None


@dataclass
class _LocalImage:
    holder: dict[str, Any]
    path: str
    data_key: str
    field: str
    batch_index: int | None = None


def pack_input(request: Request, limits: ImageLimits, budget_bytes: int) -> PackedInput:
    """Serialise `request`, embedding its local files so `{"input": ...}` fits in `budget_bytes`."""
    payload = request.model_dump(mode="json", exclude_none=True)
    images = _take_local_images(payload)
    for image in images:
        image.holder[image.data_key] = ""
    spare = budget_bytes - body_size(payload)
    if spare < 0:
        raise RequestError(
            f"request: {body_size(payload)} bytes before local images, over the RUNPOD_MAX_PAYLOAD_MB "
            f"budget of {budget_bytes} bytes (send image URLs instead of base64)"
        )
    caps = share_budget([base64_size(_file_size(image.path)) for image in images], spare)
    skipped: dict[int, str] = {}
    original_sizes: dict[int | None, tuple[int, int]] = {}
    sent: SentImage | None = None
    for image, cap in zip(images, caps, strict=True):
        try:
            data, original_size = embed_image(image.path, cap, limits, image.field)
        except RequestError as error:
            if image.batch_index is None:
                raise
            skipped[image.batch_index] = str(error)
            continue
        image.holder[image.data_key] = base64.b64encode(data).decode("ascii")
        if original_size is not None:
            original_sizes[image.batch_index] = original_size
        if image.batch_index is None:
            sent = SentImage(ImageRef(hash=content_key(data), bytes=len(data)), original_size)
    if skipped:
        _drop_batch_images(payload, skipped)
    return PackedInput(payload, skipped, original_sizes, sent)


def pack_by_reference(request: Request, sent: SentImage) -> PackedInput:
    """A single-image `request` with its local file replaced by the `image_ref` of the bytes sent before."""
    payload = request.model_dump(mode="json", exclude_none=True)
    del payload["image_path"]
    payload["image_ref"] = sent.ref.model_dump()
    original_sizes: dict[int | None, tuple[int, int]] = {}
    if sent.original_size is not None:
        original_sizes[None] = sent.original_size
    return PackedInput(payload, original_sizes=original_sizes, sent=sent)


def _take_local_images(payload: dict[str, Any]) -> list[_LocalImage]:
    if "image_path" in payload:
        return [_LocalImage(payload, payload.pop("image_path"), "image_base64", "image_path")]
    return [
        _LocalImage(image, image.pop("path"), "base64", f"images.{index}.path", index)
        for index, image in enumerate(payload.get("images", []))
        if "path" in image
    ]


def _drop_batch_images(payload: dict[str, Any], skipped: dict[int, str]) -> None:
    if len(skipped) == len(payload["images"]):
        raise RequestError(f"images: no image could be read ({'; '.join(skipped.values())})")
    payload["images"] = [image for index, image in enumerate(payload["images"]) if index not in skipped]


def embed_image(
    path: str, max_chars: int, limits: ImageLimits, field: str
) -> tuple[bytes, tuple[int, int] | None]:
    """The bytes to send for the file: the file itself, or a smaller JPEG when its base64 would be over
    `max_chars`, in which case the original (width, height) comes back too, so results can be scaled
    back to it."""
    data = read_path(path, limits, field)
    if base64_size(len(data)) <= max_chars:
        return data, None
    image = decode_image(data, limits, field)
    encoded = encode_jpeg(image, max_bytes=max_chars // 4 * 3)
    log.info("%s: re-encoded %d → %d bytes to fit the RunPod payload budget", field, len(data), len(encoded))
    return encoded, (image.width, image.height)


def share_budget(sizes: list[int], budget: int) -> list[int]:
    """Split `budget` so items smaller than an even share keep their size and the rest share what is left."""
    caps = [0] * len(sizes)
    remaining, left = budget, len(sizes)
    for index in sorted(range(len(sizes)), key=sizes.__getitem__):
        caps[index] = min(sizes[index], remaining // left)
        remaining -= caps[index]
        left -= 1
    return caps


def base64_size(raw_bytes: int) -> int:
    return 4 * -(-raw_bytes // 3)


def body_size(payload: dict[str, Any]) -> int:
    return len(dump_body(payload))


def dump_body(payload: dict[str, Any]) -> bytes:
    return json.dumps({"input": payload}, separators=(",", ":")).encode()


def _file_size(path: str) -> int:
    try:
        return Path(path).stat().st_size
    except OSError:
        return 0  # embed_image reports the missing file with its field name


# ---- job results ----


def worker_error_text(error: object) -> str | None:
    """The worker's error for the user: the handler's string as it is, or the message of the JSON
    traceback the SDK reports when the handler raised."""
    if error is None or error == "":
        return None
    if not isinstance(error, str):
        return "; ".join(map(str, error)) if isinstance(error, list) else json.dumps(error)
    try:
        details = json.loads(error)
    except ValueError:
        return error
    if isinstance(details, dict) and "error_message" in details:
        kind = re.sub(r"^<class '(?:.*\.)?(.+)'>$", r"\1", str(details.get("error_type", "error")))
        return f"RunPod worker failed ({kind}: {details['error_message']})"
    return error


def job_outcome(job: dict[str, Any]) -> Response:
    """A finished job's response, or the RemoteInferenceError that says why there is none."""
    status, job_id = job.get("status"), job.get("id")
    output = job.get("output")
    if status != "COMPLETED":
        message = worker_error_text(job.get("error")) or _status_message(status, job_id)
        raise RemoteInferenceError(message, job_id, status)
    if isinstance(output, dict) and output.get("error"):
        raise RemoteInferenceError(worker_error_text(output["error"]) or "", job_id, status)
    if output is None:
        raise RemoteInferenceError(
            f"RunPod job {job_id} completed without a result (RunPod drops results near its 20 MB limit: "
            "send fewer images per batch or use mask_format=polygons)",
            job_id,
            status,
        )
    try:
        return parse_response(output)
    except ValidationError as error:
        raise RemoteInferenceError(
            f"RunPod job {job_id} returned a result this backend cannot read ({error.error_count()} "
            "problems): does RUNPOD_ENDPOINT_OD_ANNOTATION run this project's worker?",
            job_id,
            status,
        ) from None


def _status_message(status: object, job_id: object) -> str:
    if status == "CANCELLED":
        return f"RunPod job {job_id} was cancelled"
    if status == "TIMED_OUT":
        return f"RunPod job {job_id} timed out on RunPod (it expired in the queue or its worker stopped responding)"
    return f"RunPod job {job_id} ended {status} without an error message"


def with_skipped(response: BatchResponse, request: BatchRequest, skipped: dict[int, str]) -> BatchResponse:
    """Put the batch images that never left this machine back in place, each with its read error."""
    if not skipped:
        return response
    if len(response.results) != len(request.images) - len(skipped):
        raise RemoteInferenceError(
            f"RunPod returned {len(response.results)} results for {len(request.images) - len(skipped)} images"
        )
    remote = iter(response.results)
    results = [
        BatchItem(id=image.id, error=skipped[index]) if index in skipped else next(remote)
        for index, image in enumerate(request.images)
    ]
    return response.model_copy(update={"results": results})


def retry_after_seconds(response: requests.Response) -> float | None:
    value = response.headers.get("Retry-After", "").strip()
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            seconds = parsedate_to_datetime(value).timestamp() - time.time()
        except (TypeError, ValueError):
            return None
    return min(max(seconds, 0.0), RETRY_AFTER_MAX_S)


# ---- the client ----


def restore_original_sizes(response: Response, packed: PackedInput) -> Response:
    """Scale the masks of images that were sent downscaled back to the original image size.

    Boxes and polygons are normalised and need nothing; masks and the reported size must match the
    image the caller has (Label Studio draws brush masks at the original size).
    """
    if not packed.original_sizes:
        return response
    if isinstance(response, BatchResponse):
        kept = [
            index
            for index in range(len(response.results) + len(packed.skipped))
            if index not in packed.skipped
        ]
        items = list(response.results)
        for position, index in enumerate(kept):
            if index in packed.original_sizes and items[position].image is not None:
                items[position] = _rescaled(items[position], packed.original_sizes[index])
        return response.model_copy(update={"results": items})
    size = packed.original_sizes.get(None)
    return _rescaled(response, size) if size else response


def _rescaled(result: Any, size: tuple[int, int]) -> Any:
    width, height = size
    if isinstance(result, EmbedResponse):
        return result.model_copy(update={"image": ImageSize(width=width, height=height)})
    regions = "masks" if isinstance(result, SegmentResponse) else "detections"
    scaled = [
        region.model_copy(update={"mask": encode_rle(resize_mask(decode_rle(region.mask), width, height))})
        if region.mask is not None
        else region
        for region in getattr(result, regions) or []
    ]
    return result.model_copy(update={regions: scaled, "image": ImageSize(width=width, height=height)})


FileIdentity = tuple[str, int, int]


def local_file(request: Request) -> FileIdentity | None:
    """(path, size, mtime) of a single-image request's local file: a changed file is another image."""
    path = getattr(request, "image_path", None)  # batches have none: their images go in full
    if not path:
        return None
    try:
        stat = Path(path).stat()
    except OSError:
        return None  # pack_input reports the missing file with its field name
    return (path, stat.st_size, stat.st_mtime_ns)


class SentImages:
    """Which bytes went to RunPod for which local file: a bounded, thread-safe LRU.

    One request at a time uploads a file: a click that arrives while its image is on the way (say,
    sent by a prewarm) waits for that upload and then sends the ref, instead of a second upload.
    """

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._items: OrderedDict[FileIdentity, SentImage] = OrderedDict()
        self._uploading: set[FileIdentity] = set()
        self._changed = threading.Condition()

    def ref_or_claim(self, file: FileIdentity, wait_s: float) -> SentImage | None:
        """What was sent for `file`; or None, and the caller uploads it and then calls `release`."""
        deadline = time.monotonic() + wait_s
        with self._changed:
            while file in self._uploading and self._changed.wait(max(deadline - time.monotonic(), 0.0)):
                pass
            if file in self._items:
                self._items.move_to_end(file)
                return self._items[file]
            self._uploading.add(file)
            return None

    def release(self, file: FileIdentity, sent: SentImage | None) -> None:
        """End the upload of `file`; `sent` is what the worker got, or None when the upload failed."""
        with self._changed:
            self._uploading.discard(file)
            if sent is not None:
                self._remember(file, sent)
            self._changed.notify_all()

    def remember(self, file: FileIdentity, sent: SentImage) -> None:
        with self._changed:
            self._remember(file, sent)

    def forget(self, file: FileIdentity) -> None:
        with self._changed:
            self._items.pop(file, None)

    def _remember(self, file: FileIdentity, sent: SentImage) -> None:
        self._items[file] = sent
        self._items.move_to_end(file)
        while len(self._items) > self.capacity:
            self._items.popitem(last=False)


class RemoteEngine:
    """Runs wire-contract requests on the RunPod endpoint; satisfies `engine.InferenceBackend`."""

    def __init__(
        self,
        settings: Settings,
        session: requests.Session | None = None,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = settings
        self.url = endpoint_url(settings)
        self.session = session or requests.Session()
        self.limits = ImageLimits.from_settings(settings)
        self._sleep = sleep
        self._clock = clock
        self._sent = SentImages(SENT_IMAGES_MAX)
        self._refs_accepted = True  # until a worker rejects the field itself (an image older than image_ref)

    # ---- public ----

    def run(self, request: Request, *, arrays: bool = False) -> Response:
        # `arrays` is for in-process engines; offloaded masks always arrive as the wire's RLE.
        file = local_file(request) if self._refs_accepted else None
        if file is None:
            return self._run_with_bytes(request)[0]
        sent = self._sent.ref_or_claim(file, self.settings.runpod_timeout_s + READ_MARGIN_S)
        if sent is None:
            try:
                response, sent = self._run_with_bytes(request)
            finally:
                self._sent.release(file, sent)
            return response
        try:
            return self._run_packed(request, pack_by_reference(request, sent))
        except RemoteInferenceError as error:
            if not self._ref_refused(error):
                raise
        self._sent.forget(file)
        response, resent = self._run_with_bytes(request)
        if resent is not None:
            self._sent.remember(file, resent)
        return response

    def run_async(self, request: Request) -> str:
        """Queue the request with `/run`; returns the job id for `wait`."""
        budget_mb = min(self.settings.runpod_max_payload_mb, ASYNC_PAYLOAD_MAX_MB)
        packed = pack_input(request, self.limits, int(budget_mb * MB))
        if packed.skipped:
            # the local read errors could not travel with the job id to whoever calls wait()
            raise RequestError("; ".join(packed.skipped.values()))
        job = self._post("run", self._clock() + self.settings.runpod_timeout_s, packed.payload)
        job_id = self._job_id(job)
        log.info("RunPod job %s queued (%s)", job_id, job.get("status"))
        return job_id

    def wait(self, job_id: str) -> Response:
        """Poll a job started by `run_async` until it ends (RUNPOD_TIMEOUT_S from now at most)."""
        deadline = self._clock() + self.settings.runpod_timeout_s
        return self._finish({"id": job_id, "status": "IN_QUEUE"}, deadline, poll_first=True)

    def describe(self) -> dict:
        return {
            "inference_mode": "runpod",
            "endpoint": self.settings.runpod_endpoint_od_annotation or "",
            "endpoint_url": self.url,
            "timeout_s": self.settings.runpod_timeout_s,
            "max_payload_mb": self.settings.runpod_max_payload_mb,
        }

    def _run_with_bytes(self, request: Request) -> tuple[Response, SentImage | None]:
        """Run with the local files' bytes; also what was sent for a single image, for its ref."""
        packed = pack_input(request, self.limits, int(self.settings.runpod_max_payload_mb * MB))
        return self._run_packed(request, packed), packed.sent

    def _run_packed(self, request: Request, packed: PackedInput) -> Response:
        deadline = self._clock() + self.settings.runpod_timeout_s
        job = self._post("runsync", deadline, packed.payload, wait=True)
        response = restore_original_sizes(self._finish(job, deadline), packed)
        if isinstance(request, BatchRequest) and isinstance(response, BatchResponse):
            return with_skipped(response, request, packed.skipped)
        return response

    def _ref_refused(self, error: RemoteInferenceError) -> bool:
        """Whether the worker turned the `image_ref` down (then the bytes go once more): it no longer
        holds the image, or it predates the field, after which only bytes are sent."""
        message = str(error)
        if error.status != "FAILED" or not message.startswith("image_ref"):
            return False
        if message.startswith(IMAGE_REF_MISS):
            log.info("RunPod worker no longer holds the image (job %s); sending it again", error.job_id)
        else:
            self._refs_accepted = False
            log.warning("RunPod worker does not accept image_ref (%s); sending images in full", message[:120])
        return True

    # ---- polling ----

    def _finish(self, job: dict[str, Any], deadline: float, poll_first: bool = False) -> Response:
        job_id = job.get("id")
        delay = 0.0 if poll_first else POLL_START_S
        try:
            while job.get("status") not in FINAL_STATES:
                job_id = self._job_id(job)
                remaining = deadline - self._clock()
                if remaining <= 0:
                    raise RemoteTimeoutError("deadline reached")
                if delay:
                    self._sleep(min(delay, remaining))
                job = self._post(f"status/{job_id}", deadline)
                delay = min(max(delay * 1.5, POLL_START_S), POLL_MAX_S)
        except RemoteTimeoutError:
            self._cancel(job_id)
            raise RemoteTimeoutError(
                f"RunPod did not finish within RUNPOD_TIMEOUT_S={self.settings.runpod_timeout_s:g}s "
                f"(job {job_id} cancelled); try again when the endpoint has warmed up, or raise RUNPOD_TIMEOUT_S",
                job_id,
                job.get("status"),
            ) from None
        log.info(
            "RunPod job %s %s (queued %s ms, ran %s ms)",
            job_id,
            job.get("status"),
            job.get("delayTime", "?"),
            job.get("executionTime", "?"),
        )
        return job_outcome(job)

    def _job_id(self, job: dict[str, Any]) -> str:
        job_id = job.get("id")
        if not isinstance(job_id, str) or not job_id:
            raise RemoteInferenceError(f"RunPod answered without a job id (status {job.get('status')})")
        return job_id

    def _cancel(self, job_id: str) -> None:
        try:
            response = self.session.post(
                f"{self.url}/cancel/{job_id}", headers=self._headers(), timeout=CANCEL_TIMEOUT_S
            )
            log.warning(
                "RunPod job %s over RUNPOD_TIMEOUT_S: cancel answered HTTP %d", job_id, response.status_code
            )
        except requests.RequestException as error:
            log.warning(
                "RunPod job %s over RUNPOD_TIMEOUT_S: cancel failed (%s)", job_id, type(error).__name__
            )

    # ---- HTTP with retries ----

    def _post(
        self, route: str, deadline: float, payload: dict[str, Any] | None = None, wait: bool = False
    ) -> dict[str, Any]:
        url = f"{self.url}/{route}"
        body = None if payload is None else dump_body(payload)
        if body is not None:
            log.debug("POST %s (%d bytes)", url, len(body))
        for attempt in range(1, MAX_TRIES + 1):
            remaining = max(deadline - self._clock(), 0.0)
            params = {"wait": _wait_ms(remaining)} if wait else None
            try:
                response = self.session.post(
                    url,
                    data=body,
                    params=params,
                    headers=self._headers(),
                    timeout=(CONNECT_TIMEOUT_S, remaining + READ_MARGIN_S),
                )
            except (requests.ConnectionError, requests.Timeout) as error:
                problem, pause = f"cannot reach RunPod at {url} ({type(error).__name__})", None
            except requests.RequestException as error:
                raise RemoteInferenceError(f"cannot call RunPod at {url} ({type(error).__name__})") from None
            else:
                if response.status_code != 429 and response.status_code < 500:
                    return self._read(response, route)
                problem, pause = f"RunPod answered HTTP {response.status_code}", retry_after_seconds(response)
            if attempt == MAX_TRIES:
                break
            pause = min(BACKOFF_START_S * 2 ** (attempt - 1), BACKOFF_MAX_S) if pause is None else pause
            if pause >= deadline - self._clock():
                raise RemoteTimeoutError(
                    f"{problem}; no time left to retry within RUNPOD_TIMEOUT_S={self.settings.runpod_timeout_s:g}s"
                )
            log.warning("%s; retry %d of %d in %.1f s", problem, attempt, MAX_TRIES - 1, pause)
            self._sleep(pause)
        raise RemoteInferenceError(f"{problem}; gave up after {MAX_TRIES} tries")

    def _read(self, response: requests.Response, route: str) -> dict[str, Any]:
        code = response.status_code
        if code in (401, 403):
            hint = "check RUNPOD_API_KEY" if self.settings.runpod_api_key else "RUNPOD_API_KEY is not set"
            raise RemoteInferenceError(f"RunPod refused the request (HTTP {code}): {hint}")
        if code == 404 and route.startswith("status/"):
            job_id = route.removeprefix("status/")
            raise RemoteInferenceError(
                f"RunPod job {job_id} expired or is unknown (HTTP 404): RunPod keeps results 1 minute "
                "after /runsync and 30 minutes after /run",
                job_id,
            )
        if code == 404:
            raise RemoteInferenceError(
                f"RunPod endpoint not found at {self.url} (HTTP 404): check RUNPOD_ENDPOINT_OD_ANNOTATION "
                "and RUNPOD_BASE_URL"
            )
        if code >= 400:
            raise RemoteInferenceError(f"RunPod rejected the request (HTTP {code}): {response.text[:300]}")
        try:
            job = response.json()
        except ValueError:
            job = None
        if not isinstance(job, dict):
            raise RemoteInferenceError(f"RunPod answered {route} with something that is not a JSON object")
        return job

    def _headers(self) -> dict[str, str]:
        headers = {"Content-Type": "application/json"}
        if self.settings.runpod_api_key is not None:
            headers["Authorization"] = f"Bearer {self.settings.runpod_api_key.get_secret_value()}"
        return headers


def _wait_ms(remaining_s: float) -> int:
    low, high = RUNSYNC_WAIT_MS
    return int(min(max(remaining_s * 1000, low), high))
