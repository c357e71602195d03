"""Where job progress lives: Redis (shared by every worker) or this process's memory.

Chunk states, per-task outcomes and the leases that mark a chunk as held by a live worker.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field
from typing import Any, Protocol

from ml_backend.jobs.spec import ChunkState

LEASE_TTL_S = 20
JOB_INDEX_KEY = "od-annotation:jobs"


class JobStore(Protocol):
    """Where job progress lives: Redis (shared by every worker) or this process's memory."""

    def create(self, job_id: str, meta: dict[str, Any], chunks: list[list[int]]) -> None: ...
    def meta(self, job_id: str) -> dict[str, Any] | None: ...
    def job_ids(self, limit: int) -> list[str]: ...
    def update(self, job_id: str, **fields: Any) -> None: ...
    def chunk(self, job_id: str, index: int) -> list[int]: ...
    def chunk_states(self, job_id: str) -> dict[int, ChunkState]: ...
    def set_chunk_state(self, job_id: str, index: int, state: ChunkState) -> None: ...
    def mark_done(self, job_id: str, task_id: int) -> None: ...
    def mark_failed(self, job_id: str, task_id: int, reason: str) -> None: ...
    def progress(self, job_id: str) -> tuple[int, dict[str, str]]: ...
    def acquire_lease(self, job_id: str, index: int, token: str) -> bool: ...
    def renew_lease(self, job_id: str, index: int, token: str) -> bool: ...
    def release_lease(self, job_id: str, index: int, token: str, linger_s: float = 0) -> None: ...
    def lease_alive(self, job_id: str, index: int) -> bool: ...


class RedisJobStore:
    def __init__(self, redis: Any) -> None:
        self.redis = redis

    def _key(self, job_id: str, part: str) -> str:
        return f"od-annotation:job:{job_id}:{part}"

    def create(self, job_id: str, meta: dict[str, Any], chunks: list[list[int]]) -> None:
        with self.redis.pipeline() as pipe:
            pipe.hset(
                self._key(job_id, "meta"), mapping={key: json.dumps(value) for key, value in meta.items()}
            )
            if chunks:  # Redis refuses an empty hash
                pipe.hset(
                    self._key(job_id, "chunks"),
                    mapping={str(i): json.dumps(chunk) for i, chunk in enumerate(chunks)},
                )
                pipe.hset(
                    self._key(job_id, "chunk_states"),
                    mapping={str(i): "queued" for i in range(len(chunks))},
                )
            pipe.zadd(JOB_INDEX_KEY, {job_id: float(meta.get("created_at", 0.0))})
            pipe.execute()

    def meta(self, job_id: str) -> dict[str, Any] | None:
        raw = self.redis.hgetall(self._key(job_id, "meta"))
        return {key.decode(): json.loads(value) for key, value in raw.items()} if raw else None

    def job_ids(self, limit: int) -> list[str]:
        return [job_id.decode() for job_id in self.redis.zrevrange(JOB_INDEX_KEY, 0, limit - 1)]

    def update(self, job_id: str, **fields: Any) -> None:
        self.redis.hset(
            self._key(job_id, "meta"), mapping={key: json.dumps(value) for key, value in fields.items()}
        )

    def chunk(self, job_id: str, index: int) -> list[int]:
        return json.loads(self.redis.hget(self._key(job_id, "chunks"), str(index)))

    def chunk_states(self, job_id: str) -> dict[int, ChunkState]:
        raw = self.redis.hgetall(self._key(job_id, "chunk_states"))
        return {int(key): value.decode() for key, value in raw.items()}

    def set_chunk_state(self, job_id: str, index: int, state: ChunkState) -> None:
        self.redis.hset(self._key(job_id, "chunk_states"), str(index), state)

    def mark_done(self, job_id: str, task_id: int) -> None:
        with self.redis.pipeline() as pipe:
            pipe.sadd(self._key(job_id, "done"), task_id)
            pipe.hdel(self._key(job_id, "failed"), task_id)
            pipe.execute()

    def mark_failed(self, job_id: str, task_id: int, reason: str) -> None:
        self.redis.hset(self._key(job_id, "failed"), str(task_id), reason)

    def is_done(self, job_id: str, task_id: int) -> bool:
        return bool(self.redis.sismember(self._key(job_id, "done"), task_id))

    def progress(self, job_id: str) -> tuple[int, dict[str, str]]:
        failed = self.redis.hgetall(self._key(job_id, "failed"))
        return self.redis.scard(self._key(job_id, "done")), {
            k.decode(): v.decode() for k, v in failed.items()
        }

    def acquire_lease(self, job_id: str, index: int, token: str) -> bool:
        return bool(self.redis.set(self._key(job_id, f"lease:{index}"), token, nx=True, ex=LEASE_TTL_S))

    def renew_lease(self, job_id: str, index: int, token: str) -> bool:
        key = self._key(job_id, f"lease:{index}")
        if self.redis.get(key) != token.encode():
            return False
        return bool(self.redis.expire(key, LEASE_TTL_S))

    def release_lease(self, job_id: str, index: int, token: str, linger_s: float = 0) -> None:
        key = self._key(job_id, f"lease:{index}")
        if self.redis.get(key) != token.encode():
            return
        if linger_s > 0:
            self.redis.pexpire(key, int(linger_s * 1000))
        else:
            self.redis.delete(key)

    def lease_alive(self, job_id: str, index: int) -> bool:
        return bool(self.redis.exists(self._key(job_id, f"lease:{index}")))


@dataclass
class _MemoryJob:
    meta: dict[str, Any]
    chunks: list[list[int]]
    chunk_states: dict[int, ChunkState]
    done: set[int] = field(default_factory=set)
    failed: dict[str, str] = field(default_factory=dict)
    leases: dict[int, str] = field(default_factory=dict)


class MemoryJobStore:
    """Single-process store for the embedded mode (no REDIS_URL); leases never lapse there."""

    def __init__(self) -> None:
        self._jobs: dict[str, _MemoryJob] = {}
        self._lock = threading.Lock()

    def create(self, job_id: str, meta: dict[str, Any], chunks: list[list[int]]) -> None:
        with self._lock:
            self._jobs[job_id] = _MemoryJob(dict(meta), chunks, dict.fromkeys(range(len(chunks)), "queued"))

    def meta(self, job_id: str) -> dict[str, Any] | None:
        job = self._jobs.get(job_id)
        return dict(job.meta) if job else None

    def job_ids(self, limit: int) -> list[str]:
        with self._lock:
            newest_first = sorted(
                self._jobs, key=lambda job_id: -self._jobs[job_id].meta.get("created_at", 0.0)
            )
        return newest_first[:limit]

    def update(self, job_id: str, **fields: Any) -> None:
        with self._lock:
            self._jobs[job_id].meta.update(fields)

    def chunk(self, job_id: str, index: int) -> list[int]:
        return list(self._jobs[job_id].chunks[index])

    def chunk_states(self, job_id: str) -> dict[int, ChunkState]:
        return dict(self._jobs[job_id].chunk_states)

    def set_chunk_state(self, job_id: str, index: int, state: ChunkState) -> None:
        with self._lock:
            self._jobs[job_id].chunk_states[index] = state

    def mark_done(self, job_id: str, task_id: int) -> None:
        with self._lock:
            self._jobs[job_id].done.add(task_id)
            self._jobs[job_id].failed.pop(str(task_id), None)

    def mark_failed(self, job_id: str, task_id: int, reason: str) -> None:
        with self._lock:
            self._jobs[job_id].failed[str(task_id)] = reason

    def progress(self, job_id: str) -> tuple[int, dict[str, str]]:
        job = self._jobs[job_id]
        return len(job.done), dict(job.failed)

    def acquire_lease(self, job_id: str, index: int, token: str) -> bool:
        with self._lock:
            return self._jobs[job_id].leases.setdefault(index, token) == token

    def renew_lease(self, job_id: str, index: int, token: str) -> bool:
        return self._jobs[job_id].leases.get(index) == token

    def release_lease(self, job_id: str, index: int, token: str, linger_s: float = 0) -> None:
        with self._lock:  # nothing lapses here (no rq to requeue a chunk), so no lingering either
            if self._jobs[job_id].leases.get(index) == token:
                del self._jobs[job_id].leases[index]

    def lease_alive(self, job_id: str, index: int) -> bool:
        return True
