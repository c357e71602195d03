"""Lazy, load-once model registry.

Each model family loads on first use (or at start through PRELOAD_MODELS), exactly once, behind a
per-model lock, so concurrent first requests wait for one load instead of starting several.
"""

from __future__ import annotations

import importlib
import logging
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from ml_backend.config import ModelName, Settings
from ml_backend.models.base import Runtime, resolve_device, resolve_dtype

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LoaderSpec:
    module: str
    function: str
    family: ModelName


# Registry keys → where their loader lives. "sam3" is the text model, "sam3_tracker" the
# point/box model; both read the same SAM3_MODEL checkpoint.
LOADERS: dict[str, LoaderSpec] = {
    "grounding_dino": LoaderSpec("ml_backend.models.grounding_dino", "load", "grounding_dino"),
    "sam2": LoaderSpec("ml_backend.models.sam2", "load", "sam2"),
    "sam3": LoaderSpec("ml_backend.models.sam3", "load", "sam3"),
    "sam3_tracker": LoaderSpec("ml_backend.models.sam3", "load_tracker", "sam3"),
    "florence2": LoaderSpec("ml_backend.models.florence2", "load", "florence2"),
}
PRELOAD_KEYS: dict[str, tuple[str, ...]] = {"sam3": ("sam3", "sam3_tracker")}


class ModelRegistry:
    def __init__(self, settings: Settings, runtime: Runtime | None = None) -> None:
        self.settings = settings
        self._runtime = runtime
        self._models: dict[str, Any] = {}
        self._locks = {key: threading.Lock() for key in LOADERS}

    @property
    def runtime(self) -> Runtime:
        if self._runtime is None:
            device = resolve_device(self.settings.device)
            token = self.settings.hf_token.get_secret_value() if self.settings.hf_token else None
            self._runtime = Runtime(
                device=device,
                dtype=resolve_dtype(self.settings.dtype, device),
                hf_token=token,
                embedding_cache_size=self.settings.embedding_cache_size,
            )
        return self._runtime

    def get(self, key: str) -> Any:
        if key in self._models:
            return self._models[key]
        if key not in LOADERS:
            raise KeyError(f"unknown model {key!r}; known: {', '.join(LOADERS)}")
        with self._locks[key]:
            if key not in self._models:
                self._models[key] = self._load(key)
        return self._models[key]

    def model_id(self, key: str) -> str:
        return self.settings.model_id(LOADERS[key].family)

    def loaded(self) -> list[str]:
        return sorted(self._models)

    def preload(self, families: Iterable[str]) -> None:
        for family in families:
            for key in PRELOAD_KEYS.get(family, (family,)):
                self.get(key)

    def free_memory(self) -> None:
        """Drop every cached embedding and release the CUDA allocator's cache (after an OOM)."""
        for model in self._models.values():
            cache = getattr(model, "cache", None)  # SAM adapters keep their image embeddings here
            if cache is not None:
                cache.clear()
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    def _load(self, key: str) -> Any:
        spec = LOADERS[key]
        model_id = self.model_id(key)
        started = time.perf_counter()
        loader = getattr(importlib.import_module(spec.module), spec.function)
        model = loader(model_id, self.runtime)
        log.info(
            "loaded %s (%s) on %s in %.1fs", key, model_id, self.runtime.device, time.perf_counter() - started
        )
        return model
