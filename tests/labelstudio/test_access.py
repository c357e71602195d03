"""Label Studio access against a real HTTP server on 127.0.0.1 that plays Label Studio 1.23's auth rules."""

from __future__ import annotations

import base64
import json
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest

from ml_backend.config import load_settings
from ml_backend.images import ImageLimits
from ml_backend.labelstudio.access import (
    AUTH_HINT,
    ImageAccessError,
    ImageCache,
    LabelStudioAuth,
    TaskImageResolver,
    describe_url,
    key_kind,
)
from tests.support import ImageServer, make_image, running_server, serve_images

LEGACY_KEY = "6d418fe93567d01a6d8bf550920ae1edfef6a1d4"
START = 1_900_000_000.0
ACCESS_TTL_S = 300
PNG = make_image(32, 24)
OTHER_PNG = make_image(20, 10)


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def make_jwt(claims: dict[str, object]) -> str:
    header = b64url(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    return f"{header}.{b64url(json.dumps(claims).encode())}.{b64url(b'not-checked')}"


PAT = make_jwt({"token_type": "refresh", "exp": 8_000_000_000, "jti": "pat-1", "user_id": 1})


class FakeClock:
    def __init__(self) -> None:
        self.now = START

    def __call__(self) -> float:
        return self.now


@dataclass
class FakeLabelStudio:
    """Label Studio's auth as observed: Token <legacy> when enabled, Bearer <access JWT> until it expires."""

    clock: FakeClock
    files: dict[str, bytes] = field(default_factory=dict)
    legacy_enabled: bool = True
    cloud_base: str = ""
    issued: dict[str, float] = field(default_factory=dict)
    refreshes: int = 0
    seen: list[tuple[str, str, dict[str, str]]] = field(default_factory=list)
    port: int = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def downloads_of(self, path: str) -> int:
        return sum(1 for method, seen_path, _ in self.seen if method == "GET" and seen_path == path)

    def authorised(self, header: str | None) -> bool:
        kind, _, credential = (header or "").partition(" ")
        if kind == "Token":
            return self.legacy_enabled and credential == LEGACY_KEY
        if kind == "Bearer":
            return self.issued.get(credential, 0.0) > self.clock()
        return False

    def issue_access_token(self) -> str:
        self.refreshes += 1
        expires = self.clock() + ACCESS_TTL_S
        token = make_jwt({"token_type": "access", "exp": int(expires), "jti": f"access-{self.refreshes}"})
        self.issued[token] = expires
        return token


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def label_studio(clock: FakeClock) -> Iterator[FakeLabelStudio]:
    state = FakeLabelStudio(clock)

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            state.seen.append(("POST", self.path, dict(self.headers)))
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            if self.path != "/api/token/refresh/" or body.get("refresh") != PAT:
                self.reply(401, b'{"detail": "Token is invalid or expired"}', "application/json")
                return
            answer = json.dumps({"access": state.issue_access_token()}).encode()
            self.reply(200, answer, "application/json")

        def do_GET(self) -> None:
            state.seen.append(("GET", self.path, dict(self.headers)))
            if not state.authorised(self.headers.get("Authorization")):
                self.reply(
                    401, b'{"detail": "Authentication credentials were not provided."}', "application/json"
                )
            elif self.path.startswith("/tasks/"):
                self.redirect_to_cloud()
            elif self.path in state.files:
                self.reply(200, state.files[self.path], "image/png")
            else:
                self.reply(404, b"not found", "text/plain")

        def redirect_to_cloud(self) -> None:
            encoded = parse_qs(urlsplit(self.path).query)["fileuri"][0]
            uri = base64.urlsafe_b64decode(encoded).decode()
            self.send_response(303)
            self.send_header("Location", f"{state.cloud_base}/{uri.split('://', 1)[1]}?X-Amz-Signature=s3sig")
            self.send_header("Content-Length", "0")
            self.end_headers()

        def reply(self, status: int, body: bytes, content_type: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            return

    with running_server(Handler) as port:
        state.port = port
        yield state


@pytest.fixture
def other_host() -> Iterator[ImageServer]:
    with serve_images() as server:
        yield server


def limits(allow_private: bool = True) -> ImageLimits:
    return ImageLimits(
        max_bytes=1_000_000, max_pixels=10_000_000, timeout_s=5, allow_private_urls=allow_private
    )


def resolver_for(
    auth: LabelStudioAuth, cache_dir: Path, *, local_root: Path | None = None, allow_private: bool = True
) -> TaskImageResolver:
    cache = ImageCache(cache_dir, max_bytes=10_000_000)
    return TaskImageResolver(auth, limits(allow_private), cache, str(local_root) if local_root else None)


def pat_auth(label_studio: FakeLabelStudio, clock: FakeClock) -> LabelStudioAuth:
    return LabelStudioAuth(label_studio.url, PAT, clock=clock)


def authorizations(server_seen: list[tuple[str, dict[str, str]]]) -> list[str | None]:
    return [headers.get("Authorization") for _, headers in server_seen]


# ---- key kinds and credentials ----


@pytest.mark.parametrize(
    ("key", "kind"),
    [
        (None, "none"),
        ("", "none"),
        (LEGACY_KEY, "legacy"),
        (PAT, "personal"),
        (make_jwt({"token_type": "access", "exp": 1}), "access"),
        ("a.b.c", "legacy"),
    ],
)
def test_key_kind(key: str | None, kind: str) -> None:
    assert key_kind(key) == kind


def test_personal_access_token_is_exchanged_and_refreshed_after_expiry(
    label_studio: FakeLabelStudio, clock: FakeClock, tmp_path: Path
) -> None:
    label_studio.files = {
        "/data/upload/1/a.png": PNG,
        "/data/upload/1/b.png": PNG,
        "/data/upload/1/c.png": PNG,
    }
    resolver = resolver_for(pat_auth(label_studio, clock), tmp_path)

    resolver.local_path("/data/upload/1/a.png")
    clock.now += 100
    resolver.local_path("/data/upload/1/b.png")
    assert label_studio.refreshes == 1  # the access token is reused while valid

    clock.now += ACCESS_TTL_S  # the first access token has expired on the server
    path = resolver.local_path("/data/upload/1/c.png")
    assert label_studio.refreshes == 2
    assert Path(path).read_bytes() == PNG
    sent = [headers.get("Authorization") for method, _, headers in label_studio.seen if method == "GET"]
    assert sent[0] == sent[1] != sent[2]
    assert all(header.startswith("Bearer ") and PAT not in header for header in sent)


def test_access_token_rejected_early_is_exchanged_once_more(
    label_studio: FakeLabelStudio, clock: FakeClock, tmp_path: Path
) -> None:
    label_studio.files = {"/data/upload/1/a.png": PNG, "/data/upload/1/b.png": PNG}
    resolver = resolver_for(pat_auth(label_studio, clock), tmp_path)
    resolver.local_path("/data/upload/1/a.png")
    label_studio.issued.clear()  # revoked, e.g. after a Label Studio restart with a new secret
    assert Path(resolver.local_path("/data/upload/1/b.png")).read_bytes() == PNG
    assert label_studio.refreshes == 2


def test_legacy_key_is_sent_as_token(label_studio: FakeLabelStudio, tmp_path: Path) -> None:
    label_studio.files = {"/data/upload/1/a.png": PNG}
    resolver = resolver_for(LabelStudioAuth(label_studio.url, LEGACY_KEY), tmp_path)
    assert Path(resolver.local_path("/data/upload/1/a.png")).read_bytes() == PNG
    assert label_studio.seen[-1][2]["Authorization"] == f"Token {LEGACY_KEY}"
    assert label_studio.refreshes == 0


def test_credentials_only_go_to_label_studios_origin(
    label_studio: FakeLabelStudio, clock: FakeClock, other_host: ImageServer, tmp_path: Path
) -> None:
    auth = pat_auth(label_studio, clock)
    port = label_studio.port
    assert auth.headers_for(f"http://127.0.0.1:{port}/data/upload/1/a.png")["Authorization"].startswith(
        "Bearer "
    )
    for foreign in (
        f"http://127.0.0.1:{other_host.port}/data/upload/1/a.png",
        f"https://127.0.0.1:{port}/data/upload/1/a.png",
        f"http://localhost:{port}/data/upload/1/a.png",
        "http://evil.example/data/upload/1/a.png",
        "/data/upload/1/a.png",
    ):
        assert auth.headers_for(foreign) == {}

    url = other_host.add("/public.png", PNG)
    assert Path(resolver_for(auth, tmp_path).local_path(url)).read_bytes() == PNG
    assert authorizations(other_host.requests_seen) == [None]


def test_absolute_url_on_label_studio_gets_credentials(label_studio: FakeLabelStudio, tmp_path: Path) -> None:
    label_studio.files = {"/data/upload/1/a.png": PNG}
    resolver = resolver_for(LabelStudioAuth(label_studio.url, LEGACY_KEY), tmp_path)
    assert Path(resolver.local_path(f"{label_studio.url}/data/upload/1/a.png")).read_bytes() == PNG


def test_cloud_uri_is_presigned_through_label_studio_without_leaking_credentials(
    label_studio: FakeLabelStudio, clock: FakeClock, other_host: ImageServer, tmp_path: Path
) -> None:
    label_studio.cloud_base = other_host.url("")
    other_host.add("/bucket/img/fruit.png?X-Amz-Signature=s3sig", OTHER_PNG)
    resolver = resolver_for(pat_auth(label_studio, clock), tmp_path)

    path = resolver.local_path("s3://bucket/img/fruit.png", task_id=7)

    assert Path(path).read_bytes() == OTHER_PNG
    encoded = base64.urlsafe_b64encode(b"s3://bucket/img/fruit.png").decode()
    assert label_studio.seen[-1][1] == f"/tasks/7/presign/?fileuri={encoded}"
    assert authorizations(other_host.requests_seen) == [None]
    assert resolver.local_path("s3://bucket/img/fruit.png", task_id=7) == path  # keyed by the URI
    assert len(other_host.requests_seen) == 1


def test_cloud_uri_without_task_id_is_refused(label_studio: FakeLabelStudio, tmp_path: Path) -> None:
    resolver = resolver_for(LabelStudioAuth(label_studio.url, LEGACY_KEY), tmp_path)
    with pytest.raises(ImageAccessError, match=r"gs://bucket/a\.png: a cloud storage URI needs the task id"):
        resolver.local_path("gs://bucket/a.png")


# ---- errors ----


def test_401_names_the_url_and_gives_the_token_hint(label_studio: FakeLabelStudio, tmp_path: Path) -> None:
    label_studio.legacy_enabled = False  # Label Studio 1.23's default for a new organisation
    label_studio.files = {"/data/upload/1/a.png": PNG}
    resolver = resolver_for(LabelStudioAuth(label_studio.url, LEGACY_KEY), tmp_path)
    with pytest.raises(ImageAccessError) as raised:
        resolver.local_path("/data/upload/1/a.png")
    message = str(raised.value)
    assert raised.value.status == 401
    assert "/data/upload/1/a.png" in message
    assert "HTTP 401" in message
    assert message.endswith(AUTH_HINT)
    assert LEGACY_KEY not in message
    assert not list(tmp_path.iterdir())  # nothing cached


def test_rejected_personal_access_token_is_a_clear_error(
    label_studio: FakeLabelStudio, clock: FakeClock, tmp_path: Path
) -> None:
    revoked = make_jwt({"token_type": "refresh", "exp": 8_000_000_000, "jti": "revoked"})
    resolver = resolver_for(LabelStudioAuth(label_studio.url, revoked, clock=clock), tmp_path)
    with pytest.raises(ImageAccessError, match=r"refused the Personal Access Token.*HTTP 401") as raised:
        resolver.local_path("/data/upload/1/a.png")
    assert revoked not in str(raised.value)


def test_public_url_errors_name_the_url_without_query_secrets(
    other_host: ImageServer, tmp_path: Path
) -> None:
    other_host.add("/gone.png?sig=topsecret", b"", status=404)
    resolver = resolver_for(LabelStudioAuth(None, None), tmp_path)
    with pytest.raises(ImageAccessError) as raised:
        resolver.local_path(other_host.url("/gone.png?sig=topsecret"))
    assert raised.value.status == 404
    assert f"127.0.0.1:{other_host.port}/gone.png" in str(raised.value)
    assert "HTTP 404" in str(raised.value)
    assert "topsecret" not in str(raised.value)
    assert "LABEL_STUDIO_API_KEY" not in str(raised.value)  # the hint is for Label Studio's files only


def test_private_guard_applies_to_public_urls_but_not_to_label_studio(
    label_studio: FakeLabelStudio, other_host: ImageServer, tmp_path: Path
) -> None:
    label_studio.files = {"/data/upload/1/a.png": PNG}
    resolver = resolver_for(LabelStudioAuth(label_studio.url, LEGACY_KEY), tmp_path, allow_private=False)
    assert Path(resolver.local_path("/data/upload/1/a.png")).read_bytes() == PNG
    with pytest.raises(ImageAccessError, match="non-public address"):
        resolver.local_path(other_host.add("/x.png", PNG))
    assert other_host.requests_seen == []


def test_label_studio_path_without_label_studio_url(tmp_path: Path) -> None:
    resolver = resolver_for(LabelStudioAuth(None, LEGACY_KEY), tmp_path)
    with pytest.raises(ImageAccessError, match="needs LABEL_STUDIO_URL"):
        resolver.local_path("/data/upload/1/a.png")
    with pytest.raises(ImageAccessError, match="expected an http"):
        resolver.local_path("ftp://example.com/a.png")


def test_a_body_that_is_not_an_image_is_refused_and_not_cached(
    other_host: ImageServer, tmp_path: Path
) -> None:
    url = other_host.add("/login", b"<html>please log in</html>", content_type="text/html")
    resolver = resolver_for(LabelStudioAuth(None, None), tmp_path)
    for _ in range(2):
        with pytest.raises(ImageAccessError, match="is not an image"):
            resolver.local_path(url)
    assert len(other_host.requests_seen) == 2


def test_tokens_never_reach_the_logs(
    label_studio: FakeLabelStudio, clock: FakeClock, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    label_studio.files = {"/data/upload/1/a.png": PNG}
    resolver = resolver_for(pat_auth(label_studio, clock), tmp_path)
    resolver.local_path("/data/upload/1/a.png")
    with pytest.raises(ImageAccessError):
        resolver.local_path("/data/upload/1/missing.png")
    legacy = resolver_for(LabelStudioAuth(label_studio.url, LEGACY_KEY), tmp_path / "legacy")
    label_studio.legacy_enabled = False
    with pytest.raises(ImageAccessError):
        legacy.local_path("/data/upload/1/a.png")

    assert "access token obtained" in caplog.text  # the exchange was logged
    for secret in (PAT, LEGACY_KEY, *label_studio.issued):
        assert secret not in caplog.text


# ---- cache and local files ----


def test_disk_cache_avoids_a_second_download(label_studio: FakeLabelStudio, tmp_path: Path) -> None:
    label_studio.files = {"/data/upload/1/a.png": PNG}
    resolver = resolver_for(LabelStudioAuth(label_studio.url, LEGACY_KEY), tmp_path / "cache")
    first = resolver.local_path("/data/upload/1/a.png")
    second = resolver.local_path("/data/upload/1/a.png")
    assert first == second
    assert Path(first).parent == tmp_path / "cache"
    assert label_studio.downloads_of("/data/upload/1/a.png") == 1

    fresh = resolver_for(LabelStudioAuth(label_studio.url, LEGACY_KEY), tmp_path / "cache")
    assert fresh.local_path("/data/upload/1/a.png") == first  # survives a restart
    assert label_studio.downloads_of("/data/upload/1/a.png") == 1


def test_cache_evicts_the_least_recently_used(tmp_path: Path) -> None:
    cache = ImageCache(tmp_path, max_bytes=250)
    first = cache.put("a", b"a" * 100)
    second = cache.put("b", b"b" * 100)
    old = Path(first).stat().st_mtime - 100
    os.utime(first, (old - 50, old - 50))
    os.utime(second, (old, old))
    assert cache.get("a") == first  # a hit makes "a", the oldest write, the most recent use
    cache.put("c", b"c" * 100)
    assert cache.get("b") is None
    assert cache.get("a") == first
    assert sorted(path.name for path in tmp_path.iterdir()) == sorted(
        Path(path).name for path in (first, cache.get("c"))
    )


def test_cache_with_no_budget_still_returns_the_new_file(tmp_path: Path) -> None:
    cache = ImageCache(tmp_path, max_bytes=0)
    first = cache.put("a", b"a" * 10)
    second = cache.put("b", b"b" * 10)
    assert Path(second).read_bytes() == b"b" * 10
    assert not Path(first).exists()


def test_local_files_are_read_from_the_document_root(label_studio: FakeLabelStudio, tmp_path: Path) -> None:
    root = tmp_path / "localfiles"
    (root / "img").mkdir(parents=True)
    (root / "img" / "fruit_local.png").write_bytes(PNG)
    resolver = resolver_for(
        LabelStudioAuth(label_studio.url, LEGACY_KEY), tmp_path / "cache", local_root=root
    )

    path = resolver.local_path("/data/local-files/?d=img/fruit_local.png")

    assert Path(path) == (root / "img" / "fruit_local.png").resolve()
    assert label_studio.seen == []
    with pytest.raises(ImageAccessError, match="leaves LOCAL_FILES_DOCUMENT_ROOT"):
        resolver.local_path("/data/local-files/?d=../../etc/passwd")


def test_local_files_missing_on_disk_are_downloaded_from_label_studio(
    label_studio: FakeLabelStudio, tmp_path: Path
) -> None:
    label_studio.files = {"/data/local-files/?d=img/elsewhere.png": PNG}
    resolver = resolver_for(
        LabelStudioAuth(label_studio.url, LEGACY_KEY), tmp_path / "cache", local_root=tmp_path / "empty"
    )
    path = resolver.local_path("/data/local-files/?d=img/elsewhere.png")
    assert Path(path).read_bytes() == PNG
    assert label_studio.seen[-1][2]["Authorization"] == f"Token {LEGACY_KEY}"


# ---- settings ----


def test_auth_from_settings_prefers_the_environment_over_setup(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("LABEL_STUDIO_URL", "LABEL_STUDIO_API_KEY"):
        monkeypatch.delenv(name, raising=False)
    from_setup = LabelStudioAuth.from_settings(
        load_settings(), hostname="http://localhost:8080", access_token=LEGACY_KEY
    )
    assert from_setup.url == "http://localhost:8080"
    assert from_setup.headers_for("http://localhost:8080/data/upload/1/a.png") == {
        "Authorization": f"Token {LEGACY_KEY}"
    }

    configured = load_settings(label_studio_url="http://ls:8080/", label_studio_api_key=PAT)
    auth = LabelStudioAuth.from_settings(
        configured, hostname="http://localhost:8080", access_token=LEGACY_KEY
    )
    assert auth.url == "http://ls:8080"
    assert auth.key_kind == "personal"


def test_describe_url_hides_secrets_but_keeps_file_paths() -> None:
    assert describe_url(
        "https://user:pw@b.s3.amazonaws.com/x.png?X-Amz-Signature=abc&X-Amz-Credential=def"
    ) == ("https://b.s3.amazonaws.com/x.png?X-Amz-Signature=…&X-Amz-Credential=…")
    assert describe_url("/data/local-files/?d=img/a.png") == "/data/local-files/?d=img/a.png"


def test_cache_hit_keeps_the_modification_time(tmp_path) -> None:
    """The engine keys decoded images on (path, size, mtime): a cache hit must not look like new content."""
    import os

    from ml_backend.labelstudio.access import ImageCache

    cache = ImageCache(tmp_path, 10_000)
    path = cache.put("http://example.test/a.png", b"x" * 10)
    before = os.stat(path)
    assert cache.get("http://example.test/a.png") == path
    after = os.stat(path)
    assert after.st_mtime_ns == before.st_mtime_ns
    assert after.st_atime_ns >= before.st_atime_ns
