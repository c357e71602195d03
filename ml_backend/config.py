"""Every environment variable the project reads, in one typed settings object.

`from ml_backend.config import settings` gives the process-wide instance. Invalid values fail at
import with a message that names the variable, so a bad deployment dies at start, not on the first
request. The README's environment table documents each field below.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

MODEL_NAMES = ("grounding_dino", "sam2", "sam3", "florence2")
ModelName = Literal["grounding_dino", "sam2", "sam3", "florence2"]
DEFAULT_RUNPOD_BASE_URL = "https://api.runpod.ai/v2"


class ConfigError(RuntimeError):
    """An environment variable has a value the service cannot run with."""


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_file=None, extra="ignore", case_sensitive=False, env_ignore_empty=True
    )

    # Runtime
    device: Literal["auto", "cuda", "cpu"] = "auto"
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    hf_token: SecretStr | None = None
    preload_models: Annotated[list[ModelName], NoDecode] = Field(default_factory=list)

    # Models and inference defaults
    grounding_dino_model: str = "IDEA-Research/grounding-dino-base"
    sam2_model: str = "facebook/sam2.1-hiera-large"
    sam3_model: str = "facebook/sam3"
    florence2_model: str = "florence-community/Florence-2-large"
    default_box_threshold: float = Field(0.3, ge=0.0, le=1.0)
    default_text_threshold: float = Field(0.25, ge=0.0, le=1.0)
    embedding_cache_size: int = Field(16, ge=0)
    max_batch_images: int = Field(64, ge=1)

    # Image loading
    max_image_bytes: int = Field(30 * 1024 * 1024, gt=0)
    max_image_pixels: int = Field(80_000_000, gt=0)
    image_timeout_s: float = Field(20.0, gt=0)
    allow_private_urls: bool = False

    # Label Studio backend
    label_studio_url: str | None = None
    label_studio_public_url: str | None = None
    label_studio_api_key: SecretStr | None = None
    interactive_segmenter: Literal["sam2", "sam3"] = "sam2"
    text_prompt_model: Literal["grounding_dino", "sam3", "florence2"] = "grounding_dino"
    basic_auth_user: str | None = None
    basic_auth_pass: SecretStr | None = None
    image_cache_dir: str = "/tmp/od-annotation/images"
    image_cache_mb: int = Field(2048, ge=0)
    local_files_document_root: str | None = None
    prewarm: bool = True
    prewarm_next_tasks: int = Field(2, ge=0, le=16)
    predict_time_budget_s: float = Field(80.0, gt=0)
    auto_annotate_on_import: bool = False

    # Polygons (PolygonLabels results and `mask_format: polygons`)
    polygon_tolerance: float = Field(0.001, ge=0.0, le=0.1)
    polygon_max_points: int = Field(200, ge=3)
    polygon_min_area: float = Field(0.0001, ge=0.0, le=1.0)

    # RunPod offload
    inference_mode: Literal["local", "runpod"] = "local"
    runpod_api_key: SecretStr | None = None
    runpod_endpoint_od_annotation: str | None = None
    runpod_base_url: str = DEFAULT_RUNPOD_BASE_URL
    runpod_timeout_s: float = Field(300.0, gt=0)
    runpod_max_payload_mb: float = Field(18.0, gt=0)

    # Background jobs
    redis_url: str | None = None
    job_chunk_size: int = Field(16, ge=1)
    job_retries: int = Field(3, ge=0)

    @field_validator("preload_models", mode="before")
    @classmethod
    def _split_model_list(cls, value: object) -> object:
        if not isinstance(value, str):
            return value
        names = [name.strip().lower() for name in value.split(",") if name.strip()]
        return list(MODEL_NAMES) if names == ["all"] else names

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper_log_level(cls, value: object) -> object:
        return value.upper() if isinstance(value, str) else value

    @model_validator(mode="after")
    def _runpod_mode_needs_endpoint(self) -> Settings:
        public_api = self.runpod_base_url.rstrip("/") == DEFAULT_RUNPOD_BASE_URL
        if self.inference_mode == "runpod" and public_api and not self.runpod_endpoint_od_annotation:
            raise ValueError("INFERENCE_MODE=runpod needs RUNPOD_ENDPOINT_OD_ANNOTATION")
        return self

    def model_id(self, model: ModelName) -> str:
        return getattr(self, f"{model}_model")


def describe_validation_error(error: ValidationError) -> str:
    parts = []
    for item in error.errors():
        name = ".".join(str(part) for part in item["loc"]).upper() or "configuration"
        parts.append(f"{name}: {item['msg']}")
    return "; ".join(parts)


def load_settings(**overrides: object) -> Settings:
    """Read the environment (plus explicit overrides); raise ConfigError naming the bad variable."""
    try:
        return Settings(**overrides)
    except ValidationError as error:
        raise ConfigError(f"Invalid environment: {describe_validation_error(error)}") from None


settings = load_settings()
