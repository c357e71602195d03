"""HTTP routes for background jobs on the backend: POST /jobs/annotate, GET and DELETE /jobs/<id>.

They sit behind the backend's basic auth like every other route.
"""

from __future__ import annotations

import threading

from flask import Blueprint, jsonify, request
from pydantic import ValidationError

from ml_backend.config import Settings
from ml_backend.jobs.manager import JobManager
from ml_backend.jobs.spec import AnnotateSpec, JobsUnavailableError
from ml_backend.schemas import describe_errors


def create_jobs_blueprint(settings: Settings) -> Blueprint:
    jobs = Blueprint("jobs", __name__)
    manager_lock = threading.Lock()
    managers: list[JobManager] = []

    def manager() -> JobManager:
        with manager_lock:
            if not managers:
                managers.append(JobManager(settings))
            return managers[0]

    @jobs.errorhandler(JobsUnavailableError)
    def unavailable(error: JobsUnavailableError):
        return jsonify(status="error", message=str(error)), 503

    @jobs.post("/jobs/annotate")
    def annotate():
        body = request.get_json(silent=True)
        if not isinstance(body, dict):
            return jsonify(status="error", message='body: send a JSON object like {"project": 7}'), 400
        try:
            spec = AnnotateSpec.model_validate(body)
        except ValidationError as error:
            return jsonify(status="error", message=describe_errors(error)), 422
        job_id = manager().submit(spec)
        return jsonify(job_id=job_id), 202

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
