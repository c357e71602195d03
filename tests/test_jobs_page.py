"""The jobs page without a browser: content negotiation, basic auth, no secret in the page, escaping,
and the numbers a job card shows. The browser test against a real Label Studio is tests/e2e/test_jobs_page.py.
"""

from __future__ import annotations

import time

from flask import Flask

from ml_backend.config import load_settings
from ml_backend.jobs.page import TEMPLATES, JobView, duration_text
from ml_backend.jobs.routes import create_jobs_blueprint
from ml_backend.jobs.spec import JobStatus
from ml_backend.labelstudio.base import LabelStudioMLBase, create_app
from tests.support import free_port

BROWSER_ACCEPT = "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"
LS_KEY = "ls-key-that-must-never-reach-the-page"


def jobs_app(**overrides: object) -> Flask:
    settings = load_settings(
        redis_url=None, **{"label_studio_url": None, "label_studio_api_key": None, **overrides}
    )
    app = Flask(__name__)
    app.register_blueprint(create_jobs_blueprint(settings))
    return app


def status(**fields: object) -> JobStatus:
    base = {
        "job_id": "abc123",
        "state": "running",
        "source": "page",
        "project": 7,
        "model": "grounding_dino",
        "prompt": None,
        "model_version": "od-annotation/grounding_dino:IDEA-Research/grounding-dino-base",
        "total": 8,
        "done": 5,
        "failed": {"12": "image_url: download failed with HTTP 404", "3": "not an image"},
        "images_per_s": 2.5,
        "eta_s": 0.4,
        "created_at": time.time() - 10,
        "started_at": time.time() - 9,
        "finished_at": None,
    }
    return JobStatus.model_validate(base | fields)


def test_browsers_get_the_page_and_api_clients_get_json() -> None:
    client = jobs_app().test_client()
    page = client.get("/jobs", headers={"Accept": BROWSER_ACCEPT})
    assert page.status_code == 200 and page.mimetype == "text/html"
    html = page.get_data(as_text=True)
    assert "background jobs need LABEL_STUDIO_URL and LABEL_STUDIO_API_KEY" in html
    assert '<select name="project" required disabled>' in html
    for accept in ("*/*", "application/json", None):
        answer = client.get("/jobs", headers={"Accept": accept} if accept else {})
        assert answer.mimetype == "application/json" and answer.get_json() == {"jobs": []}, accept
    fragment = client.get("/jobs?fragment=list", headers={"Accept": "text/html"}).get_data(as_text=True)
    assert fragment.startswith('<div id="jobs"') and 'data-active="false"' in fragment
    assert client.get("/jobs/static/jobs.css").mimetype == "text/css"
    assert client.get("/jobs/static/..%2Fpage.py").status_code == 404  # no way out of static/


def test_the_page_needs_the_backends_basic_auth_and_holds_no_secret() -> None:
    settings = load_settings(
        redis_url=None, label_studio_url=f"http://127.0.0.1:{free_port()}", label_studio_api_key=LS_KEY
    )
    app = create_app(LabelStudioMLBase, basic_auth_user="annotator", basic_auth_pass="backend-pass")
    app.register_blueprint(create_jobs_blueprint(settings))
    client = app.test_client()
    for path in ("/jobs", "/jobs/static/jobs.js", "/jobs?fragment=list"):
        assert client.get(path, headers={"Accept": BROWSER_ACCEPT}).status_code == 401, path
    page = client.get("/jobs", headers={"Accept": BROWSER_ACCEPT}, auth=("annotator", "backend-pass"))
    html = page.get_data(as_text=True)
    assert page.status_code == 200
    assert "Label Studio at LABEL_STUDIO_URL is unreachable" in html
    assert LS_KEY not in html and "backend-pass" not in html


def test_a_client_cannot_claim_the_backends_own_sources() -> None:
    answer = jobs_app().test_client().post("/jobs/annotate", json={"project": 1, "source": "retrieve"})
    assert answer.status_code == 422
    assert answer.get_json()["message"] == "source: 'api' or 'page'"


def test_a_job_card_shows_progress_shares_and_links_to_the_failed_tasks() -> None:
    view = JobView(status(), "Shelf photos", "http://ls.example:8080")
    assert (view.processed, view.percent, view.done_share, view.failed_share) == (7, 87, 62.5, 25.0)
    assert [(f.task_id, f.link) for f in view.failed_tasks] == [
        ("3", "http://ls.example:8080/projects/7/data?task=3"),
        ("12", "http://ls.example:8080/projects/7/data?task=12"),
    ]
    assert (view.rate_text, view.eta_text, view.source_name) == ("2.50 images/s", "0 s", "jobs page")
    finished = JobView(status(state="finished", eta_s=None), None, None)
    assert finished.eta_text == "—" and finished.project_link is None
    assert all(f.link is None for f in finished.failed_tasks)
    empty = JobView(status(state="finished", total=0, done=0, failed={}), None, None)
    assert (empty.percent, empty.done_share) == (100, 100.0)


def test_job_text_is_escaped() -> None:
    view = JobView(
        status(prompt="<script>alert(1)</script>", failed={"5": "<img src=x onerror=alert(1)>"}), "<b>", None
    )
    html = TEMPLATES.get_template("jobs_list.html").render(jobs=[view], active=True)
    assert "<script>" not in html and "<img" not in html and "<b>" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert 'data-active="true"' in html and 'data-cancel="abc123"' in html


def test_durations_read_naturally() -> None:
    assert [duration_text(s) for s in (None, 0.4, 59, 65, 3725)] == [
        "—",
        "0 s",
        "59 s",
        "1 min 05 s",
        "1 h 02 min",
    ]
