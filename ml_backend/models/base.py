"""What every model family shares: result types, the protocols the engine calls, runtime helpers
(device, dtype) and the image-embedding cache.

Adapters speak normalised coordinates ([0, 1] of the original image) in and out, and return masks
as boolean arrays of the original image size, so the engine never sees a processor's geometry.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Generic, Protocol, TypeVar

import numpy as np

from ml_backend.gpu import cuda_problem, gather_facts

if TYPE_CHECKING:
    import torch

    from ml_backend.images import RGBImage

log = logging.getLogger(__name__)

BoxXYXY = tuple[float, float, float, float]


@dataclass(frozen=True)
class Detection:
    label: str
    score: float
    box: BoxXYXY
    mask: np.ndarray | None = None


@dataclass(frozen=True)
class SegmentMask:
    score: float
    mask: np.ndarray


@dataclass(frozen=True)
class SegmentPrompt:
    """Points with labels (1 positive, 0 negative) and/or one box, all normalised."""

    points: Sequence[tuple[float, float]] = ()
    labels: Sequence[int] = ()
    box: BoxXYXY | None = None


class TextDetector(Protocol):
    model_id: str

    def detect(
        self, image: RGBImage, phrases: Sequence[str], *, box_threshold: float, text_threshold: float
    ) -> list[Detection]: ...


class PromptSegmenter(Protocol):
    model_id: str

    def segment(self, image: RGBImage, prompt: SegmentPrompt, *, multimask: bool) -> list[SegmentMask]: ...

    def segment_boxes(self, image: RGBImage, boxes: Sequence[BoxXYXY]) -> list[SegmentMask]: ...


# ---- geometry helpers shared by the adapters ----


def clamp_unit(value: float) -> float:
    return min(1.0, max(0.0, float(value)))


def normalise_box(box: Sequence[float], width: int, height: int) -> BoxXYXY:
    """Pixel xyxy → [0, 1] xyxy, clamped to the image and ordered."""
    x1, y1, x2, y2 = (float(v) for v in box)
    nx1, nx2 = sorted((clamp_unit(x1 / width), clamp_unit(x2 / width)))
    ny1, ny2 = sorted((clamp_unit(y1 / height), clamp_unit(y2 / height)))
    return (nx1, ny1, nx2, ny2)


def has_area(box: BoxXYXY) -> bool:
    x1, y1, x2, y2 = box
    return x2 > x1 and y2 > y1


def to_pixels(points: Sequence[tuple[float, float]], width: int, height: int) -> list[list[float]]:
    return [[float(x) * width, float(y) * height] for x, y in points]


def box_to_pixels(box: BoxXYXY, width: int, height: int) -> list[float]:
    x1, y1, x2, y2 = box
    return [x1 * width, y1 * height, x2 * width, y2 * height]


# ---- runtime ----


@dataclass(frozen=True)
class Runtime:
    """Where and how adapters run: device, dtype, hub token, embedding-cache size."""

    device: torch.device
    dtype: torch.dtype
    hf_token: str | None = None
    embedding_cache_size: int = 16

    def load_kwargs(self) -> dict:
        """Keyword arguments for `from_pretrained` of a model (processors take only `token`)."""
        return {"token": self.hf_token, "dtype": self.dtype}


def resolve_device(setting: str) -> torch.device:
    """DEVICE → torch device; a GPU torch cannot use fails DEVICE=cuda and is logged as an error for auto."""
    import torch

    if setting == "cpu":
        return torch.device("cpu")
    if torch.cuda.is_available():
        return torch.device("cuda")
    problem = cuda_problem(setting, gather_facts())
    if problem:
        log.error(problem)
    if setting == "cuda":
        raise RuntimeError(problem)
    return torch.device("cpu")


def resolve_dtype(setting: str, device: torch.device) -> torch.dtype:
    import torch

    if setting == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return getattr(torch, setting)


# ---- embedding cache ----

V = TypeVar("V")


class EmbeddingCache(Generic[V]):
    """A bounded, thread-safe LRU keyed by image content hash.

    `get_or_compute` computes each key at most once even when several threads ask for it at the
    same moment, while different keys compute in parallel.
    """

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._items: OrderedDict[Hashable, V] = OrderedDict()
        self._lock = threading.Lock()
        self._key_locks: dict[Hashable, threading.Lock] = {}
        self.hits = 0
        self.misses = 0

    def get_or_compute(self, key: Hashable, compute: Callable[[], V]) -> V:
        cached = self._lookup(key)
        if cached is not None:
            return cached
        with self._lock:
            key_lock = self._key_locks.setdefault(key, threading.Lock())
        try:
            with key_lock:
                cached = self._lookup(key, count=False)
                if cached is not None:
                    return cached
                value = compute()
                self._store(key, value)
        finally:
            with self._lock:
                self._key_locks.pop(key, None)
        return value

    def clear(self) -> None:
        with self._lock:
            self._items.clear()

    def __len__(self) -> int:
        return len(self._items)

    def _lookup(self, key: Hashable, count: bool = True) -> V | None:
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                self.hits += count
                return self._items[key]
            self.misses += count
            return None

    def _store(self, key: Hashable, value: V) -> None:
        if self.capacity <= 0:
            return
        with self._lock:
            self._items[key] = value
            self._items.move_to_end(key)
            while len(self._items) > self.capacity:
                self._items.popitem(last=False)
