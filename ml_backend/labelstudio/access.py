"""Access to Label Studio: credentials for its URLs, and task image references turned into local files.

Label Studio 1.23 accepts two kinds of API key. A legacy key goes out as `Authorization: Token <key>`
(off by default for new organisations). A Personal Access Token is a refresh JWT that Label Studio
rejects on data URLs: it has to be exchanged at POST /api/token/refresh/ for a 300 s access token,
sent as `Authorization: Bearer <access>`. Credentials only ever go to Label Studio's own origin.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import hashlib
import io
import json
import logging
import os
import posixpath
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal
from urllib.parse import parse_qs, parse_qsl, urlsplit, urlunsplit

import requests
from PIL import Image, UnidentifiedImageError

from ml_backend.config import Settings
from ml_backend.images import ImageError, ImageLimits, fetch_url
from ml_backend.schemas import RequestError

log = logging.getLogger(__name__)

REFRESH_MARGIN_S = 30.0
ACCESS_TOKEN_FALLBACK_TTL_S = 300.0  # what Label Studio 1.23 issues, used when a token has no `exp`
CLOUD_SCHEMES = ("s3://", "gs://", "azure-blob://")
LOCAL_FILES_PATH = "/data/local-files"
VISIBLE_QUERY_PARAMS = frozenset({"d", "filepath"})
AUTH_HINT = (
    "set LABEL_STUDIO_API_KEY; Label Studio 1.23 disables legacy tokens by default: "
    "use a Personal Access Token or enable legacy tokens"
)
FORBIDDEN_HINT = "the user of LABEL_STUDIO_API_KEY has no access to this project's files"
KeyKind = Literal["none", "legacy", "access", "personal"]


class LabelStudioAuthError(RequestError):
    """Label Studio refused to exchange the Personal Access Token, or could not be reached for it."""


class ImageAccessError(ImageError):
    """A task image could not be resolved or downloaded; the message names the URL and the reason."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


# ---- URLs and tokens ----


Origin = tuple[str, str, int]


def origin_of(url: str) -> Origin | None:
    """scheme, host, port of an http(s) URL (default ports filled in); None for anything else."""
    parsed = urlsplit(url)
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        return None
    try:
        port = parsed.port or (443 if parsed.scheme == "https" else 80)
    except ValueError:
        return None
    return parsed.scheme, parsed.hostname.lower(), port


def describe_url(url: str) -> str:
    """The URL for messages and logs: no user info, and query values hidden except file paths."""
    parsed = urlsplit(url)
    netloc = parsed.netloc.rpartition("@")[2]
    query = "&".join(
        f"{name}={value if name in VISIBLE_QUERY_PARAMS else '…'}"
        for name, value in parse_qsl(parsed.query, keep_blank_values=True)
    )
    return urlunsplit((parsed.scheme, netloc, parsed.path, query, ""))


def jwt_claims(token: str) -> dict[str, Any] | None:
    """The unverified payload of a JWT, or None when `token` is not one."""
    parts = token.split(".")
    if len(parts) != 3:
        return None
    try:
        claims = json.loads(base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4)))
    except (ValueError, binascii.Error):
        return None
    return claims if isinstance(claims, dict) else None


def key_kind(api_key: str | None) -> KeyKind:
    if not api_key:
        return "none"
    claims = jwt_claims(api_key)
    if claims is None:
        return "legacy"
    return "personal" if claims.get("token_type") == "refresh" else "access"


# ---- credentials ----


class LabelStudioAuth:
    """Authorization headers for Label Studio's own URLs, exchanging a Personal Access Token as needed."""

    def __init__(
        self,
        url: str | None,
        api_key: str | None,
        *,
        timeout_s: float = 10.0,
        refresh_margin_s: float = REFRESH_MARGIN_S,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.url = url.rstrip("/") if url else None
        self._origin = origin_of(self.url) if self.url else None
        self._api_key = api_key or None
        self.key_kind = key_kind(self._api_key)
        self._timeout_s = timeout_s
        self._refresh_margin_s = refresh_margin_s
        self._clock = clock
        self._lock = threading.Lock()
        self._access_token: str | None = None
        self._access_valid_until = 0.0

    @classmethod
    def from_settings(
        cls, settings: Settings, hostname: str | None = None, access_token: str | None = None
    ) -> LabelStudioAuth:
        """LABEL_STUDIO_URL and LABEL_STUDIO_API_KEY, each falling back to what /setup sent."""
        configured_key = settings.label_studio_api_key
        api_key = configured_key.get_secret_value() if configured_key else access_token
        return cls(settings.label_studio_url or hostname, api_key, timeout_s=settings.image_timeout_s)

    def owns(self, url: str) -> bool:
        """True when `url` is on Label Studio's origin (scheme, host and port all equal)."""
        return self._origin is not None and origin_of(url) == self._origin

    def headers_for(self, url: str) -> dict[str, str]:
        if self.key_kind == "none" or not self.owns(url):
            return {}
        return {"Authorization": self._authorization()}

    def invalidate(self) -> None:
        """Forget the cached access token (Label Studio rejected it), so the next call exchanges anew."""
        with self._lock:
            self._access_token = None

    def _authorization(self) -> str:
        if self.key_kind == "legacy":
            return f"Token {self._api_key}"
        if self.key_kind == "access":
            return f"Bearer {self._api_key}"
        return f"Bearer {self._fresh_access_token()}"

    def _fresh_access_token(self) -> str:
        with self._lock:
            if self._access_token is None or self._clock() >= self._access_valid_until:
                self._access_token, self._access_valid_until = self._exchange_personal_token()
            return self._access_token

    def _exchange_personal_token(self) -> tuple[str, float]:
        endpoint = f"{self.url}/api/token/refresh/"
        try:
            response = requests.post(endpoint, json={"refresh": self._api_key}, timeout=self._timeout_s)
        except requests.RequestException as error:
            raise LabelStudioAuthError(
                f"cannot reach Label Studio at {describe_url(endpoint)} to exchange the Personal Access "
                f"Token ({type(error).__name__})"
            ) from None
        access = _access_token_in(response)
        if access is None:
            raise LabelStudioAuthError(
                f"Label Studio refused the Personal Access Token in LABEL_STUDIO_API_KEY (HTTP "
                f"{response.status_code} from {describe_url(endpoint)}): create a new one under "
                "Account & Settings → Personal Access Token"
            )
        now = self._clock()
        expires = (jwt_claims(access) or {}).get("exp")
        expires_at = float(expires) if isinstance(expires, int | float) else now + ACCESS_TOKEN_FALLBACK_TTL_S
        log.info("Label Studio access token obtained, valid for %.0f s", expires_at - now)
        return access, expires_at - self._refresh_margin_s


def _access_token_in(response: requests.Response) -> str | None:
    if response.status_code != 200:
        return None
    try:
        access = response.json().get("access")
    except (ValueError, AttributeError):
        return None
    return access if isinstance(access, str) and access else None


# ---- on-disk cache ----


class ImageCache:
    """Downloaded images on disk, named by a hash of their URL; least recently used go past max_bytes.

    The file just written is never evicted, so a zero budget still yields a usable path.
    """

    def __init__(self, directory: str | Path, max_bytes: int) -> None:
        self.directory = Path(directory)
        self.max_bytes = max_bytes
        self._lock = threading.Lock()

    def get(self, key: str) -> str | None:
        path = self._path(key)
        try:
            # A hit counts as recent use: the access time orders eviction. The modification time stays,
            # so it keeps meaning "content changed" (the engine's decoded-image cache keys on it).
            os.utime(path, ns=(time.time_ns(), path.stat().st_mtime_ns))
        except FileNotFoundError:
            return None
        return str(path)

    def put(self, key: str, data: bytes) -> str:
        self.directory.mkdir(parents=True, exist_ok=True)
        path = self._path(key)
        with tempfile.NamedTemporaryFile(dir=self.directory, suffix=".part", delete=False) as partial:
            partial.write(data)
        os.replace(partial.name, path)  # readers never see a half-written file
        self._evict(keep=path)
        return str(path)

    def _path(self, key: str) -> Path:
        return self.directory / f"{hashlib.sha256(key.encode()).hexdigest()[:40]}.img"

    def _evict(self, keep: Path) -> None:
        with self._lock:
            entries = sorted(_existing_entries(self.directory), key=lambda entry: entry[1].st_atime)
            total = sum(stat.st_size for _, stat in entries)
            for path, stat in entries:
                if total <= self.max_bytes:
                    break
                if path != keep:
                    path.unlink(missing_ok=True)
                    total -= stat.st_size


def _existing_entries(directory: Path) -> list[tuple[Path, os.stat_result]]:
    entries = []
    for path in directory.glob("*.img"):
        try:
            entries.append((path, path.stat()))
        except FileNotFoundError:  # evicted by another worker meanwhile
            continue
    return entries


# ---- task images ----


class TaskImageResolver:
    """Turns a task's image value into a local file path, downloading (once) when needed.

    Handles Label Studio uploads and local files (`/data/...`), cloud URIs presigned through Label
    Studio, and plain http(s) URLs (no credentials, private addresses refused unless allowed).
    """

    def __init__(
        self,
        auth: LabelStudioAuth,
        limits: ImageLimits,
        cache: ImageCache,
        local_files_root: str | None = None,
    ) -> None:
        self._auth = auth
        self._limits = limits
        self._cache = cache
        self._local_files_root = _usable_root(local_files_root)

    @classmethod
    def from_settings(
        cls, settings: Settings, auth: LabelStudioAuth, local_files_root: str | None = None
    ) -> TaskImageResolver:
        """LOCAL_FILES_DOCUMENT_ROOT: set it to Label Studio's own value to read local files from disk."""
        return cls(
            auth,
            ImageLimits.from_settings(settings),
            ImageCache(settings.image_cache_dir, settings.image_cache_mb * 1024 * 1024),
            local_files_root or settings.local_files_document_root,
        )

    def local_path(self, task_image_value: str, task_id: int | None = None) -> str:
        reference = task_image_value.strip()
        if not reference:
            raise ImageAccessError("image: the task's image value is empty")
        if reference.startswith(CLOUD_SCHEMES):
            return self._cloud_file(reference, task_id)
        if self._is_local_files_reference(reference):
            on_disk = self._local_file(reference)
            if on_disk is not None:
                return on_disk
        url = self._absolute_url(reference)
        if self._auth.owns(url):
            return self._cached(url, lambda: self._download_from_label_studio(url, reference))
        return self._cached(url, lambda: self._download_public(url, reference))

    # -- kinds of reference --

    def _cloud_file(self, uri: str, task_id: int | None) -> str:
        if task_id is None:
            raise ImageAccessError(
                f"image {describe_url(uri)}: a cloud storage URI needs the task id to presign"
            )
        encoded = base64.urlsafe_b64encode(uri.encode()).decode()
        presign_url = self._absolute_url(f"/tasks/{task_id}/presign/?fileuri={encoded}", shown=uri)
        return self._cached(uri, lambda: self._download_from_label_studio(presign_url, uri))

    def _is_local_files_reference(self, reference: str) -> bool:
        on_label_studio = reference.startswith("/") or self._auth.owns(reference)
        return on_label_studio and urlsplit(reference).path.rstrip("/") == LOCAL_FILES_PATH

    def _local_file(self, reference: str) -> str | None:
        """The file on this machine when LOCAL_FILES_DOCUMENT_ROOT is set and has it, else None."""
        if self._local_files_root is None:
            return None
        relative = (parse_qs(urlsplit(reference).query).get("d") or [""])[-1]
        if not relative:
            raise ImageAccessError(f"image {describe_url(reference)}: a local-files URL needs ?d=<path>")
        candidate = (self._local_files_root / posixpath.normpath(relative).lstrip("/")).resolve()
        if not candidate.is_relative_to(self._local_files_root):
            raise ImageAccessError(f"image {describe_url(reference)}: path leaves LOCAL_FILES_DOCUMENT_ROOT")
        return str(candidate) if candidate.is_file() else None

    def _absolute_url(self, reference: str, shown: str | None = None) -> str:
        if reference.startswith(("http://", "https://")):
            return reference
        if not reference.startswith("/"):
            raise ImageAccessError(
                f"image {describe_url(reference)}: expected an http(s) URL, a Label Studio path "
                "(/data/...) or an s3://, gs:// or azure-blob:// URI"
            )
        if self._auth.url is None:
            raise ImageAccessError(
                f"image {describe_url(shown or reference)}: a Label Studio file needs LABEL_STUDIO_URL "
                "(or the hostname Label Studio sends to /setup)"
            )
        return self._auth.url + reference

    # -- downloads --

    def _cached(self, key: str, download: Callable[[], bytes]) -> str:
        cached = self._cache.get(key)
        if cached is not None:
            return cached
        return self._cache.put(key, download())

    def _download_public(self, url: str, shown: str) -> bytes:
        return self._download(url, shown, self._limits, headers={}, from_label_studio=False)

    def _download_from_label_studio(self, url: str, shown: str) -> bytes:
        # Label Studio's own host is trusted even on a private network, and so are its redirects
        # (a presigned URL of a MinIO next to it); credentials never follow a redirect.
        limits = dataclasses.replace(self._limits, allow_private_urls=True)
        try:
            return self._download(url, shown, limits, self._label_studio_headers(url, shown), True)
        except ImageAccessError as error:
            if error.status != 401 or self._auth.key_kind != "personal":
                raise
        self._auth.invalidate()  # the access token was revoked early; exchange once more
        return self._download(url, shown, limits, self._label_studio_headers(url, shown), True)

    def _label_studio_headers(self, url: str, shown: str) -> dict[str, str]:
        try:
            return self._auth.headers_for(url)
        except LabelStudioAuthError as error:
            raise ImageAccessError(f"image {describe_url(shown)}: {error}") from None

    def _download(
        self, url: str, shown: str, limits: ImageLimits, headers: dict[str, str], from_label_studio: bool
    ) -> bytes:
        status = _LastStatus()
        with requests.Session() as session:
            session.hooks["response"].append(status.record)
            try:
                data = fetch_url(
                    url, limits, field=f"image {describe_url(shown)}", session=session, headers=headers
                )
            except ImageError as error:
                message = _with_hint(str(error), status.value) if from_label_studio else str(error)
                raise ImageAccessError(message, status.value) from None
        _ensure_image(data, shown)
        log.debug("downloaded %s (%d bytes)", describe_url(shown), len(data))
        return data


class _LastStatus:
    def __init__(self) -> None:
        self.value: int | None = None

    def record(self, response: requests.Response, *args: object, **kwargs: object) -> requests.Response:
        self.value = response.status_code
        return response


def _with_hint(message: str, status: int | None) -> str:
    hint = {401: AUTH_HINT, 403: FORBIDDEN_HINT}.get(status or 0)
    return f"{message}: {hint}" if hint else message


def _ensure_image(data: bytes, shown: str) -> None:
    """Refuse to cache a login page or an error body served with HTTP 200."""
    try:
        with Image.open(io.BytesIO(data)):
            pass
    except (UnidentifiedImageError, OSError):
        raise ImageAccessError(
            f"image {describe_url(shown)}: the download ({len(data)} bytes) is not an image"
        ) from None


def _usable_root(root: str | None) -> Path | None:
    if not root:
        return None
    resolved = Path(root).resolve()
    return None if resolved == Path(resolved.anchor) else resolved  # "/" would expose every file
