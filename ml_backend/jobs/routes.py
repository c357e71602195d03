"""HTTP routes for background jobs on the backend: POST /jobs/annotate, GET /jobs (JSON, or the jobs
page for a browser, `ml_backend.jobs.page`), GET and DELETE /jobs/<id>.

They sit behind the backend's basic auth like every other route.
"""

from __future__ import annotations

import threading

from flask import Blueprint, jsonify, request
from pydantic import ValidationError

from ml_backend.config import Settings
from ml_backend.jobs.manager import JobManager
from ml_backend.jobs.page import JobsPage, wants_html
from ml_backend.jobs.spec import AnnotateSpec, JobsUnavailableError
from ml_backend.schemas import describe_errors

# The sources a client may claim in POST /jobs/annotate; the others are the backend's own.
CLIENT_SOURCES = ("api", "page")


def create_jobs_blueprint(settings: Settings, shared_manager: JobManager | None = None) -> Blueprint:
    """`shared_manager`: the one the backend's own handoffs use (without Redis, jobs live in its memory)."""
    jobs = Blueprint("jobs", __name__)
    manager_lock = threading.Lock()
    managers: list[JobManager] = [shared_manager] if shared_manager is not None else []

    def manager() -> JobManager:
        with manager_lock:
            if not managers:
                managers.append(JobManager(settings))
            return managers[0]

    page = JobsPage(settings, manager)
    jobs.add_url_rule("/jobs/static/<path:name>", "asset", page.asset)

    @jobs.errorhandler(JobsUnavailableError)
    def unavailable(error: JobsUnavailableError):
        return jsonify(status="error", message=str(error)), 503

    @jobs.post("/jobs/annotate")
    def annotate():
        body = request.get_json(silent=True)
        if not isinstance(body, dict):
            return jsonify(status="error", message='body: send a JSON object like {"project": 7}'), 400
        source = body.pop("source", "api")
        if source not in CLIENT_SOURCES:
            return jsonify(status="error", message="source: 'api' or 'page'"), 422
        try:
            spec = AnnotateSpec.model_validate(body)
        except ValidationError as error:
            return jsonify(status="error", message=describe_errors(error)), 422
        job_id = manager().submit(spec, source=source)
        return jsonify(job_id=job_id), 202

    @jobs.get("/jobs")
    def listing():
        if wants_html():
            return page.response()
        return jsonify(jobs=[found.model_dump() for found in manager().list()])

    @jobs.get("/jobs/<job_id>")
    def status(job_id: str):
        found = manager().status(job_id)
        if found is None:
            return jsonify(status="error", message=f"no job {job_id}"), 404
        return jsonify(found.model_dump())

    @jobs.delete("/jobs/<job_id>")
    def cancel(job_id: str):
        found = manager().cancel(job_id)
        if found is None:
            return jsonify(status="error", message=f"no job {job_id}"), 404
        return jsonify(found.model_dump())

    return jobs
