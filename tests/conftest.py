"""Shared fixtures.

The environment block runs when pytest loads this file, before any test module imports transformers or
huggingface_hub (both read these variables at import time). Subprocesses started by tests inherit it.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# ---- offline Hugging Face cache holding the tiny models (git-ignored, reused across runs) ----

TINY_HF_HOME = ROOT / ".cache" / "tiny-hf"
TINY_HUB_CACHE = TINY_HF_HOME / "hub"

os.environ.update(
    HF_HUB_OFFLINE="1",
    TRANSFORMERS_OFFLINE="1",
    HF_HOME=str(TINY_HF_HOME),
    HF_HUB_CACHE=str(TINY_HUB_CACHE),
)
TINY_HUB_CACHE.mkdir(parents=True, exist_ok=True)


@pytest.fixture(scope="session")
def tiny_hf_cache() -> Path:
    """The hub cache with every tiny model installed under its production hub id."""
    from tests.fixtures.tiny_models import build_hf_cache  # lazily: it imports torch and transformers

    build_hf_cache(TINY_HUB_CACHE)
    return TINY_HUB_CACHE


@pytest.fixture(scope="session")
def tiny_hub_ids(tiny_hf_cache: Path) -> dict[str, str]:
    """{family: hub id} of the installed tiny models, e.g. {"sam3": "facebook/sam3", ...}."""
    from tests.fixtures.tiny_models import DEFAULT_HUB_IDS

    return dict(DEFAULT_HUB_IDS)
