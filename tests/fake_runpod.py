"""A simulated RunPod cloud API for one endpoint, on 127.0.0.1, scripted per test.

Routes (POST, under `/{endpoint_id}`): `/runsync`, `/run`, `/status/{id}`, `/cancel/{id}`. Every
request is recorded. A job walks through `progress` (the first state is the answer to /runsync or
/run, each /status poll takes the next), then ends with `outcome(input)`: by default the result of
`handler({"id", "input"})` mapped the way the RunPod SDK maps it (`{"error": str}` → FAILED).
`stall=True` keeps every job IN_PROGRESS forever; `fail_next(route, ...)` serves canned replies
(429, 500, ...) before the normal behaviour of that route.
"""

from __future__ import annotations

import json
import threading
import uuid
from collections import defaultdict, deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from typing import Any
from urllib.parse import parse_qs, urlparse

from tests.support import running_server

Job = dict[str, Any]


@dataclass
class Reply:
    status: int
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class Recorded:
    route: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def sdk_outcome(result: Any) -> Job:
    """What the RunPod SDK makes of a handler's return value (see notes/runpod.md §1.3)."""
    if isinstance(result, dict) and "error" in result:
        return {"status": "FAILED", "error": result["error"]}
    return {"status": "COMPLETED", "output": result}


@dataclass
class FakeRunPod:
    endpoint_id: str = "odannot123"
    api_key: str = "rp-test-key"
    handler: Callable[[Job], Any] = lambda job: {"echo": job["input"]}
    progress: list[str] = field(default_factory=list)
    stall: bool = False
    port: int = 0
    requests: list[Recorded] = field(default_factory=list)
    jobs: dict[str, Job] = field(default_factory=dict)
    _canned: dict[str, deque[Reply]] = field(default_factory=lambda: defaultdict(deque))
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def endpoint_url(self) -> str:
        return f"{self.base_url}/{self.endpoint_id}"

    def fail_next(self, route: str, *replies: Reply) -> None:
        """Serve these replies to the next calls of `route` ("runsync", "run", "status", "cancel")."""
        self._canned[route].extend(replies)

    def fail_with(self, error: Any) -> None:
        self.handler = lambda job: {"error": error}

    def complete_with(self, output: Any) -> None:
        self.handler = lambda job: output

    def forget_jobs(self) -> None:
        """RunPod deletes a job when its TTL or result retention expires; status then answers 404."""
        with self._lock:
            self.jobs.clear()

    def seen(self, route: str) -> list[Recorded]:
        return [request for request in self.requests if request.route == route]

    # ---- request handling ----

    def answer(self, method: str, raw_path: str, headers: dict[str, str], body: bytes) -> Reply:
        parsed = urlparse(raw_path)
        prefix, _, rest = parsed.path.lstrip("/").partition("/")
        route, _, job_id = rest.partition("/")
        with self._lock:
            self.requests.append(Recorded(route, parsed.path, parse_qs(parsed.query), headers, body))
            if prefix != self.endpoint_id or route not in ("runsync", "run", "status", "cancel"):
                return Reply(404, {"error": "not found"})
            if method != "POST":
                return Reply(405, {"detail": "Method Not Allowed"})
            if headers.get("Authorization") != f"Bearer {self.api_key}":
                return Reply(401, {"error": "Unauthorized"})
            if self._canned[route]:
                return self._canned[route].popleft()
            if route in ("runsync", "run"):
                return Reply(200, self._submit(json.loads(body), sync=route == "runsync"))
            if job_id not in self.jobs:
                return Reply(404, {"error": "job not found"})
            if route == "cancel":
                self.jobs[job_id]["state"] = "CANCELLED"
                return Reply(200, {"id": job_id, "status": "CANCELLED"})
            return Reply(200, self._advance(job_id))

    def _submit(self, body: dict[str, Any], sync: bool) -> Job:
        job_id = f"{'sync-' if sync else ''}{uuid.uuid4()}"
        self.jobs[job_id] = {"input": body["input"], "pending": deque(self.progress), "state": None}
        if not sync:
            return {"id": job_id, "status": "IN_QUEUE"}
        return self._advance(job_id)

    def _advance(self, job_id: str) -> Job:
        job = self.jobs[job_id]
        if job["state"] == "CANCELLED":
            return {"id": job_id, "status": "CANCELLED"}
        if self.stall:
            return {"id": job_id, "status": "IN_PROGRESS"}
        if job["pending"]:
            return {"id": job_id, "status": job["pending"].popleft()}
        result = sdk_outcome(self.handler({"id": job_id, "input": job["input"]}))
        return {"id": job_id, "delayTime": 12, "executionTime": 34, **result}


@contextmanager
def fake_runpod(**options: Any) -> Iterator[FakeRunPod]:
    fake = FakeRunPod(**options)

    class Handler(BaseHTTPRequestHandler):
        def _serve(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            reply = fake.answer(self.command, self.path, dict(self.headers), self.rfile.read(length))
            data = json.dumps(reply.body).encode()
            self.send_response(reply.status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            for name, value in reply.headers.items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(data)

        do_POST = do_GET = _serve

        def log_message(self, *args: object) -> None:
            return

    with running_server(Handler) as port:
        fake.port = port
        yield fake
