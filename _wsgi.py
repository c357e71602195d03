"""WSGI entry point of the Label Studio ML backend.

Production: `gunicorn -b 0.0.0.0:9090 --threads 8 _wsgi:app`.
Development: `python _wsgi.py --host 0.0.0.0 --port 9090 --log-level INFO` (Flask's threaded server).
"""

from __future__ import annotations

import argparse
import logging
import threading

from ml_backend.config import settings
from ml_backend.jobs.handoff import handoff_for
from ml_backend.jobs.manager import JobManager
from ml_backend.jobs.routes import create_jobs_blueprint
from ml_backend.labelstudio.base import TasksCreatedHook, create_app
from ml_backend.labelstudio.imports import ImportBatcher
from ml_backend.logs import configure_logging
from model import ODAnnotationModel

log = logging.getLogger("_wsgi")
configure_logging(settings.log_level)

# Background jobs serve the job routes, a retrieve that outruns PREDICT_TIME_BUDGET_S, and imports.
jobs = JobManager(settings)
handoff = handoff_for(settings, jobs)


def _import_hook() -> TasksCreatedHook | None:
    if not settings.auto_annotate_on_import:
        return None
    if handoff is None:
        log.warning(
            "AUTO_ANNOTATE_ON_IMPORT needs LABEL_STUDIO_URL and LABEL_STUDIO_API_KEY to write predictions; "
            "imported tasks are not annotated"
        )
        return None
    return ImportBatcher(handoff).add


app = create_app(
    ODAnnotationModel,
    basic_auth_user=settings.basic_auth_user,
    basic_auth_pass=settings.basic_auth_pass.get_secret_value() if settings.basic_auth_pass else None,
    health_details=getattr(ODAnnotationModel, "health_details", None),
    metrics_details=getattr(ODAnnotationModel, "metrics_details", None),
    background=handoff,
    on_tasks_created=_import_hook(),
)
app.register_blueprint(create_jobs_blueprint(settings, jobs))


def _preload_models() -> None:
    try:
        ODAnnotationModel.preload()
    except Exception:
        log.exception("preloading PRELOAD_MODELS failed; models load on first use instead")


# In the background, so /health answers (and Label Studio can connect) while weights load.
if hasattr(ODAnnotationModel, "preload"):
    threading.Thread(target=_preload_models, name="preload-models", daemon=True).start()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Label Studio ML backend (development server)")
    parser.add_argument("--host", default="0.0.0.0")
    parser.add_argument("--port", type=int, default=9090)
    parser.add_argument("--log-level", choices=["DEBUG", "INFO", "WARNING", "ERROR"], type=str.upper)
    args = parser.parse_args(argv)
    if args.log_level:
        configure_logging(args.log_level)
    app.run(host=args.host, port=args.port, threaded=True)


if __name__ == "__main__":
    main()
