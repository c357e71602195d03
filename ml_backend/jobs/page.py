"""The jobs page: every background job of this backend in a browser, with start and cancel.

`GET /jobs` answers HTML when the client prefers it (a browser) and JSON otherwise. The page is
rendered here (Jinja, which Flask ships); a little JavaScript re-fetches the job list as an HTML
fragment (`/jobs?fragment=list`) while a job runs and posts the start and cancel calls to the JSON
routes. Assets are files of this package: no build step, no CDN. The page holds no secret: the
browser calls the backend with its own basic-auth credentials, and the backend talks to Label Studio.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import get_args

import httpx
from flask import Response, request, send_from_directory
from jinja2 import Environment, FileSystemLoader, select_autoescape
from label_studio_sdk.core.api_error import ApiError

from ml_backend.config import Settings
from ml_backend.jobs.manager import JobManager
from ml_backend.jobs.spec import AnnotateSpec, JobStatus, JobsUnavailableError

HERE = Path(__file__).resolve().parent
STATIC_DIR = HERE / "static"
TEMPLATES = Environment(loader=FileSystemLoader(HERE / "templates"), autoescape=select_autoescape(["html"]))
PROJECTS_TTL_S = 30.0
SOURCE_NAMES = {
    "api": "API",
    "cli": "command line",
    "page": "jobs page",
    "retrieve": "Retrieve predictions",
    "import": "import",
}
ACTIVE_STATES = ("queued", "running")


def wants_html() -> bool:
    """A browser (Accept prefers text/html) gets the page; API clients (`*/*`, JSON, none) get JSON."""
    return request.accept_mimetypes.best_match(["application/json", "text/html"]) == "text/html"


def annotate_models() -> list[str]:
    """The models a job can run, as `AnnotateSpec.model` declares them."""
    (literal, _none) = get_args(AnnotateSpec.model_fields["model"].annotation)
    return list(get_args(literal))


def duration_text(seconds: float | None) -> str:
    if seconds is None:
        return "—"
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


def clock_text(timestamp: float | None) -> str:
    return datetime.fromtimestamp(timestamp, UTC).strftime("%H:%M:%S UTC") if timestamp else "—"


@dataclass(frozen=True)
class FailedTask:
    task_id: str
    reason: str
    link: str | None


@dataclass(frozen=True)
class JobView:
    """One job as the page shows it."""

    status: JobStatus
    project_title: str | None
    label_studio_url: str | None

    @property
    def active(self) -> bool:
        return self.status.state in ACTIVE_STATES

    @property
    def processed(self) -> int:
        return self.status.done + len(self.status.failed)

    @property
    def percent(self) -> int:
        total = self.status.total
        return 100 if total == 0 else min(100, self.processed * 100 // total)

    def share(self, count: int) -> float:
        return 0.0 if self.status.total == 0 else round(100 * count / self.status.total, 2)

    @property
    def done_share(self) -> float:
        return 100.0 if self.status.total == 0 else self.share(self.status.done)

    @property
    def failed_share(self) -> float:
        return self.share(len(self.status.failed))

    @property
    def source_name(self) -> str:
        return SOURCE_NAMES.get(self.status.source, self.status.source)

    @property
    def project_link(self) -> str | None:
        return (
            f"{self.label_studio_url}/projects/{self.status.project}/data" if self.label_studio_url else None
        )

    @property
    def rate_text(self) -> str:
        return f"{self.status.images_per_s:.2f} images/s" if self.status.images_per_s else "— images/s"

    @property
    def eta_text(self) -> str:
        return duration_text(self.status.eta_s) if self.status.state == "running" else "—"

    @property
    def elapsed_text(self) -> str:
        started = self.status.started_at
        if started is None:
            return "not started"
        return duration_text((self.status.finished_at or time.time()) - started)

    @property
    def created_text(self) -> str:
        return clock_text(self.status.created_at)

    @property
    def failed_tasks(self) -> list[FailedTask]:
        def link(task_id: str) -> str | None:
            if not self.label_studio_url:
                return None
            return f"{self.label_studio_url}/projects/{self.status.project}/data?task={task_id}"

        ordered = sorted(
            self.status.failed.items(), key=lambda item: int(item[0]) if item[0].isdigit() else 0
        )
        return [FailedTask(task_id, reason, link(task_id)) for task_id, reason in ordered]


class JobsPage:
    """Renders the page and the list fragment; keeps the project list for a short while."""

    def __init__(self, settings: Settings, manager: Callable[[], JobManager]) -> None:
        self.settings = settings
        self.manager = manager
        # Links are followed by the annotator's browser, which may reach Label Studio at another address.
        public_url = settings.label_studio_public_url or settings.label_studio_url
        self.label_studio_url = (public_url or "").rstrip("/") or None
        self._projects_lock = threading.Lock()
        self._projects: tuple[float, list[tuple[int, str]]] | None = None

    def response(self) -> Response:
        """The whole page, or only the job list when the page's script asks for it."""
        if request.args.get("fragment") == "list":
            return self._html(self._render("jobs_list.html", fresh_projects=False))
        return self._html(self._render("jobs_page.html", fresh_projects=True, models=annotate_models()))

    def asset(self, name: str) -> Response:
        return send_from_directory(STATIC_DIR, name, max_age=60)

    def _render(self, template: str, fresh_projects: bool, **extra: object) -> str:
        projects, projects_error = self._project_list(fresh_projects)
        jobs, jobs_error = self._job_views(dict(projects))
        return TEMPLATES.get_template(template).render(
            jobs=jobs,
            jobs_error=jobs_error,
            active=any(job.active for job in jobs),
            projects=projects,
            projects_error=projects_error,
            default_model=self.settings.text_prompt_model,
            label_studio_url=self.label_studio_url,
            **extra,
        )

    def _job_views(self, titles: dict[int, str]) -> tuple[list[JobView], str | None]:
        try:
            statuses = self.manager().list()
        except JobsUnavailableError as error:
            return [], str(error)
        views = [JobView(status, titles.get(status.project), self.label_studio_url) for status in statuses]
        return views, None

    def _project_list(self, fresh: bool) -> tuple[list[tuple[int, str]], str | None]:
        """The form needs the current list; the list fragment (polled) only needs titles."""
        with self._projects_lock:
            cached = self._projects
            if not fresh and cached is not None and time.monotonic() - cached[0] < PROJECTS_TTL_S:
                return cached[1], None
            try:
                projects = self.manager().project.projects()
            except JobsUnavailableError as error:
                return [], str(error)
            except ApiError as error:
                return (
                    [],
                    f"Label Studio answered {error.status_code} to the project list: check LABEL_STUDIO_API_KEY",
                )
            except httpx.HTTPError as error:
                return [], f"Label Studio at LABEL_STUDIO_URL is unreachable ({error.__class__.__name__})"
            self._projects = (time.monotonic(), projects)
            return projects, None

    @staticmethod
    def _html(body: str) -> Response:
        response = Response(body, mimetype="text/html")
        response.headers["Cache-Control"] = "no-store"
        response.headers["Vary"] = "Accept"
        return response
