"""Prewarm: compute a task image's SAM embedding before the annotator's first click.

Three signals start a prewarm. Label Studio calls `/predict` with exactly one task and no context
when an annotator opens a task that has no prediction yet; a call with `context: {"event": "prewarm"}`
asks for it outright; and after an interactive call on task T the next tasks of T's project (by id)
are likely to be opened next, while they give no signal of their own when a job already pre-labelled
them.

One worker thread per process works through a short queue that drops its oldest entry when full, so
prewarm never holds more embeddings than the cache keeps, and a click never queues behind it: clicks
run on their request threads. The prewarm sends the same `EmbedRequest(image_path=...)` of the same
local file a click resolves to, so a click on an image whose prewarm is in flight waits on the
embedding cache's per-image lock instead of computing the embedding a second time.
"""

from __future__ import annotations

import json
import logging
import threading
from collections import OrderedDict, deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import requests
from label_studio_sdk.label_interface import LabelInterface

from ml_backend.config import Settings
from ml_backend.engine import InferenceBackend
from ml_backend.labelstudio.access import LabelStudioAuth, LabelStudioAuthError
from ml_backend.logs import redact
from ml_backend.schemas import EmbedRequest

log = logging.getLogger(__name__)

PREWARM_EVENT = "prewarm"
SMART_SEGMENTING_TOOLS = frozenset({"KeyPointLabels", "RectangleLabels", "KeyPoint", "Rectangle"})
TRUE_VALUES = frozenset({"true", "1", "yes"})


def is_prewarm_event(context: Mapping[str, Any] | None) -> bool:
    """`{"event": "prewarm"}`: the form recent HumanSignal SAM backends accept ahead of a click."""
    return isinstance(context, Mapping) and context.get("event") == PREWARM_EVENT


def has_smart_segmenting(label_config: str | None) -> bool:
    """True when the config offers a smart keypoint or rectangle: only then will a click need SAM."""
    if not label_config:
        return False
    try:
        controls = LabelInterface(label_config).controls
    except Exception:  # an invalid config is reported by the predict call itself
        return False
    return any(
        control.tag in SMART_SEGMENTING_TOOLS
        and any(str(control.attr.get(name, "")).lower() in TRUE_VALUES for name in ("smart", "smartOnly"))
        for control in controls
    )


# ---- the next tasks of a project ----


class NextTasks:
    """The tasks of a project that follow one task by id, through Label Studio's task list API.

    The list API (not `GET /api/tasks/<id>`, which would make Label Studio call `/predict` for each
    task) with `resolve_uri=false` gives the task data exactly as Label Studio sends it to `/predict`.
    """

    def __init__(self, auth: LabelStudioAuth, timeout_s: float) -> None:
        self._auth = auth
        self._timeout_s = timeout_s

    @property
    def available(self) -> bool:
        return self._auth.url is not None and self._auth.key_kind != "none"

    def after(self, project: int, task_id: int, count: int) -> list[dict[str, Any]]:
        if not self.available:
            raise LabelStudioAuthError("the next tasks need LABEL_STUDIO_URL and LABEL_STUDIO_API_KEY")
        url = f"{self._auth.url}/api/tasks"
        query = {
            "filters": {
                "conjunction": "and",
                "items": [
                    {"filter": "filter:tasks:id", "operator": "greater", "type": "Number", "value": task_id}
                ],
            },
            "ordering": ["tasks:id"],
        }
        params = {
            "project": project,
            "page": 1,
            "page_size": count,
            "resolve_uri": "false",
            "query": json.dumps(query),
        }
        response = requests.get(
            url, params=params, headers=self._auth.headers_for(url), timeout=self._timeout_s
        )
        if response.status_code == 401 and self._auth.key_kind == "personal":
            self._auth.invalidate()
            response = requests.get(
                url, params=params, headers=self._auth.headers_for(url), timeout=self._timeout_s
            )
        response.raise_for_status()
        body = response.json()
        tasks = body.get("tasks", []) if isinstance(body, dict) else body
        return [task for task in tasks if isinstance(task, dict)][:count]


@dataclass(frozen=True)
class ProjectImages:
    """How to reach one project's task images (per project: /setup may give each its own credentials)."""

    image_of: Callable[[Mapping], str]
    resolve: Callable[[str, int | None], str]
    next_tasks: NextTasks | None = None


# ---- queue entries ----


@dataclass(frozen=True)
class WarmTask:
    task: Mapping[str, Any]
    images: ProjectImages

    @property
    def task_id(self) -> Any:
        return self.task.get("id")


@dataclass(frozen=True)
class WarmNextTasks:
    project: int
    after_task_id: int
    images: ProjectImages


QueueEntry = WarmTask | WarmNextTasks


class Prewarmer:
    """The process's prewarm queue, its single worker thread and its counters.

    `done`: embeddings a prewarm computed; `dropped`: entries pushed out of the full queue; `hit`:
    clicks on an image whose prewarm had finished (or was in flight, so the click waited for it);
    `failed`: prewarms that raised (image unreachable, model error), logged and otherwise ignored.
    """

    def __init__(self, backend: InferenceBackend, settings: Settings) -> None:
        self._backend = backend
        self._model = settings.interactive_segmenter
        self.next_task_count = settings.prewarm_next_tasks
        self.enabled = settings.prewarm and settings.embedding_cache_size > 0
        # Room for the image the annotator is on: prewarms must never evict its embedding.
        self.capacity = max(1, min(settings.prewarm_next_tasks + 1, settings.embedding_cache_size - 1))
        self._cache_size = max(1, settings.embedding_cache_size)
        self._queue: deque[QueueEntry] = deque()
        self._lock = threading.Lock()
        self._wakeup = threading.Condition(self._lock)
        self._warm: OrderedDict[str, None] = OrderedDict()  # prewarmed paths no click has used yet
        self._clicked: OrderedDict[str, None] = OrderedDict()  # paths clicks embedded: nothing to prewarm
        self._busy = False  # an entry (a lookup, a download or an embedding) is being worked on
        self._in_flight: str | None = None
        self._in_flight_claimed = False
        self._last_next: tuple[int, int] | None = None
        self._counts = {"done": 0, "dropped": 0, "hit": 0, "failed": 0}
        self._worker: threading.Thread | None = None
        self._closed = False

    # ---- signals (request threads; never block, never raise) ----

    def warm_tasks(self, tasks: Sequence[Mapping[str, Any]], images: ProjectImages) -> None:
        for task in tasks:
            self._push(WarmTask(task, images))

    def warm_next_tasks(self, project: str | int | None, task_id: object, images: ProjectImages) -> None:
        if self.next_task_count == 0 or images.next_tasks is None or not images.next_tasks.available:
            return
        try:
            key = (int(str(project)), int(str(task_id)))
        except ValueError:
            return
        with self._lock:
            if key == self._last_next:  # an annotator clicks many times on one task: look up once
                return
            self._last_next = key
        self._push(WarmNextTasks(key[0], key[1], images))

    def note_click(self, task: Mapping[str, Any], path: str) -> None:
        """A click on `path` is about to run: count a hit, and drop a queued prewarm it makes useless."""
        if not self.enabled:
            return
        with self._lock:
            if path == self._in_flight and not self._in_flight_claimed:
                self._in_flight_claimed = True
                self._counts["hit"] += 1
            elif path in self._warm:
                del self._warm[path]
                self._counts["hit"] += 1
            self._remember(self._clicked, path)
            queued = [entry for entry in self._queue if isinstance(entry, WarmTask)]
            for entry in queued:
                if entry.task_id == task.get("id"):
                    self._queue.remove(entry)

    # ---- observation ----

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            return {
                "enabled": self.enabled,
                **self._counts,
                "queued": len(self._queue),
                "in_flight": self._busy,
            }

    def close(self, timeout_s: float = 5.0) -> None:
        """Stop the worker after the entry in flight (tests and shutdown); queued entries are dropped."""
        with self._lock:
            self._closed = True
            self._queue.clear()
            self._wakeup.notify_all()
        if self._worker is not None:
            self._worker.join(timeout_s)

    # ---- queue ----

    def _push(self, entry: QueueEntry) -> None:
        if not self.enabled:
            return
        with self._lock:
            if self._closed or self._already_queued(entry):
                return
            self._queue.append(entry)
            while len(self._queue) > self.capacity:
                dropped = self._queue.popleft()
                self._counts["dropped"] += 1
                log.debug("prewarm queue full: dropped %s", _describe(dropped))
            self._start_worker()
            self._wakeup.notify()

    def _already_queued(self, entry: QueueEntry) -> bool:
        if isinstance(entry, WarmTask):
            return any(isinstance(e, WarmTask) and e.task_id == entry.task_id for e in self._queue)
        return entry in self._queue

    def _start_worker(self) -> None:
        if self._worker is None:
            self._worker = threading.Thread(target=self._work, name="prewarm", daemon=True)
            self._worker.start()

    def _take(self) -> QueueEntry | None:
        with self._lock:
            while not self._queue and not self._closed:
                self._wakeup.wait()
            if self._closed:
                return None
            self._busy = True
            return self._queue.popleft()

    # ---- worker ----

    def _work(self) -> None:
        while (entry := self._take()) is not None:
            try:
                if isinstance(entry, WarmTask):
                    self._warm_task(entry)
                else:
                    self._queue_next_tasks(entry)
            except Exception as error:
                with self._lock:
                    self._counts["failed"] += 1
                log.warning(
                    "prewarm of %s failed: %s", _describe(entry), redact(str(error)) or type(error).__name__
                )
            finally:
                with self._lock:
                    self._busy = False

    def _queue_next_tasks(self, entry: WarmNextTasks) -> None:
        assert entry.images.next_tasks is not None
        tasks = entry.images.next_tasks.after(entry.project, entry.after_task_id, self.next_task_count)
        log.debug("prewarm: next tasks of project %s after %s: %s", entry.project, entry.after_task_id,
                  [task.get("id") for task in tasks])  # fmt: skip
        self.warm_tasks(tasks, entry.images)

    def _warm_task(self, entry: WarmTask) -> None:
        task_id = entry.task_id
        path = entry.images.resolve(entry.images.image_of(entry.task), task_id)
        with self._lock:
            if path in self._warm or path in self._clicked:
                return
            self._in_flight, self._in_flight_claimed = path, False
        try:
            self._backend.run(EmbedRequest(image_path=path, model=self._model))
        except Exception:
            with self._lock:
                if self._in_flight_claimed:  # the waiting click computed the embedding itself after all
                    self._counts["hit"] -= 1
                self._in_flight = None
            raise
        with self._lock:
            if not self._in_flight_claimed:
                self._remember(self._warm, path)
            self._in_flight = None
            self._counts["done"] += 1
        log.debug("prewarmed the image of task %s", task_id)

    def _remember(self, paths: OrderedDict[str, None], path: str) -> None:
        """Most recent last, as many as the embedding cache keeps (older ones it has evicted too)."""
        paths[path] = None
        paths.move_to_end(path)
        while len(paths) > self._cache_size:
            paths.popitem(last=False)


def _describe(entry: QueueEntry) -> str:
    if isinstance(entry, WarmTask):
        return f"task {entry.task_id}"
    return f"the tasks after {entry.after_task_id} in project {entry.project}"


# ---- the process-wide instance ----

_prewarmer: Prewarmer | None = None
_prewarmer_lock = threading.Lock()


def get_prewarmer(settings: Settings, backend: Callable[[], InferenceBackend]) -> Prewarmer:
    """One prewarmer (one worker thread) per process, over the process's inference backend."""
    global _prewarmer
    if _prewarmer is None:
        with _prewarmer_lock:
            if _prewarmer is None:
                _prewarmer = Prewarmer(backend(), settings)
                if settings.prewarm and not _prewarmer.enabled:
                    log.info("prewarm is off: EMBEDDING_CACHE_SIZE=0 keeps no embedding")
    return _prewarmer
