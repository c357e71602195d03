"""What a job is asked to do and what its status reports: the types every part of `jobs` shares."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

JobState = Literal["queued", "running", "finished", "cancelled"]
# Who started a job: the HTTP API, the CLI, the jobs page, a "Retrieve predictions" that outran its
# time budget, or a TASKS_CREATED webhook (imports and storage syncs).
JobSource = Literal["api", "cli", "page", "retrieve", "import"]
ChunkState = Literal["queued", "running", "done", "failed"]


class JobsUnavailableError(RuntimeError):
    """Redis (or Label Studio) cannot be reached: background jobs cannot start or report."""


class TransientTaskError(RuntimeError):
    """A task failed for a reason that may pass (Label Studio 5xx, a download timeout): retry the chunk."""


class AnnotateSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    project: int = Field(gt=0)
    task_ids: list[int] | None = None
    model: Literal["grounding_dino", "sam3", "florence2"] | None = None
    prompt: str | None = None
    with_masks: bool | None = None
    overwrite: bool = False
    polygon_tolerance: float | None = Field(None, ge=0.0, le=0.1)
    polygon_max_points: int | None = Field(None, ge=3, le=100_000)
    polygon_min_area: float | None = Field(None, ge=0.0, le=1.0)


class JobStatus(BaseModel):
    job_id: str
    state: JobState
    source: JobSource = "api"
    project: int
    model: str | None = None
    prompt: str | None = None
    model_version: str
    total: int
    done: int
    failed: dict[str, str]
    images_per_s: float | None
    eta_s: float | None
    created_at: float
    started_at: float | None
    finished_at: float | None
