"""Docker for the image tests: a daemon, a Debian base image made with debootstrap, builds and containers.

When no daemon answers on the default socket, `docker_daemon()` starts Debian's `dockerd` on a private
socket, data root and exec root, and stops it afterwards. The data root and the debootstrap root file
system stay under CACHE_ROOT (outside the git clone), so later runs reuse the base image and the build
cache; a lock file keeps two test runs from sharing one private daemon at a time.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

CACHE_ROOT = Path(os.environ.get("OD_ANNOTATION_CACHE", "/var/cache/od-annotation"))
# Sockets and the exec root, per cache root (unix socket paths must stay short).
RUN_ROOT = Path("/run") / f"od-annotation-{hashlib.sha256(str(CACHE_ROOT).encode()).hexdigest()[:8]}"
DEBIAN_SUITE = "bookworm"  # its python3.11 matches the project's Python
DEBIAN_MIRROR = "http://deb.debian.org/debian"
BASE_PACKAGES = ("python3.11", "python3-venv", "python3-pip")
HOST_CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
BASE_CA_PATH = "/etc/od-annotation/host-ca.crt"
# Debian's client matches Debian's daemon and builds with BuildKit without the buildx plugin.
DOCKER_CLIENTS = ("/usr/bin/docker", "docker")


class DockerUnavailable(RuntimeError):
    """Docker or debootstrap is missing or does not start here."""


@dataclass(frozen=True)
class Docker:
    client: str
    host: str | None  # DOCKER_HOST; None for the default socket

    def env(self) -> dict[str, str]:
        env = {**os.environ, "DOCKER_BUILDKIT": "1"}
        if self.host:
            env["DOCKER_HOST"] = self.host
        return env

    def __call__(
        self, *args: str, timeout: float = 120, check: bool = True, stdin: bytes | None = None
    ) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [self.client, *args],
            env=self.env(),
            capture_output=True,
            timeout=timeout,
            input=stdin.decode() if stdin is not None else None,
            text=True,
        )
        if check and result.returncode != 0:
            raise RuntimeError(f"docker {' '.join(args[:3])} failed:\n{result.stderr[-4000:]}")
        return result

    def answers(self) -> bool:
        try:
            return self("version", "--format", "{{.Server.Version}}", timeout=20, check=False).returncode == 0
        except subprocess.TimeoutExpired:
            return False

    def has_image(self, tag: str) -> bool:
        return self("image", "inspect", tag, check=False).returncode == 0


def find_client() -> str:
    for candidate in DOCKER_CLIENTS:
        path = shutil.which(candidate)
        if path:
            return path
    raise DockerUnavailable("no docker client: `make apt-deps` installs Debian's docker.io")


@contextmanager
def cache_lock(name: str) -> Iterator[None]:
    CACHE_ROOT.mkdir(parents=True, exist_ok=True)
    with (CACHE_ROOT / f"{name}.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


@contextmanager
def docker_daemon() -> Iterator[Docker]:
    """A Docker daemon for the `with` block: the running one, else a private dockerd."""
    client = find_client()
    existing = Docker(client, None)
    if existing.answers():
        yield existing
        return
    if shutil.which("dockerd") is None:
        raise DockerUnavailable("no dockerd: `make apt-deps` installs Debian's docker.io")
    with cache_lock("dockerd"), private_dockerd(client) as docker:
        yield docker


@contextmanager
def private_dockerd(client: str) -> Iterator[Docker]:
    RUN_ROOT.mkdir(parents=True, exist_ok=True)
    stop_leftover_dockerd(RUN_ROOT / "docker.pid")
    socket = RUN_ROOT / "docker.sock"
    log_path = CACHE_ROOT / "dockerd.log"
    command = [
        "dockerd",
        "--host", f"unix://{socket}",
        "--data-root", str(CACHE_ROOT / "docker"),
        "--exec-root", str(RUN_ROOT / "exec"),
        "--pidfile", str(RUN_ROOT / "docker.pid"),
        # Containers use the host network: no bridge, no iptables rules on the host.
        "--bridge", "none", "--iptables=false", "--ip6tables=false",
    ]  # fmt: skip
    with log_path.open("wb") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    docker = Docker(client, f"unix://{socket}")
    try:
        wait_until(docker.answers, timeout=60, what="dockerd", log=log_path, process=process)
        yield docker
    finally:
        process.terminate()
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        for namespace in (RUN_ROOT / "exec" / "netns").glob("*"):  # dockerd leaves its host netns mounted
            subprocess.run(["umount", str(namespace)], capture_output=True, check=False)


def stop_leftover_dockerd(pidfile: Path) -> None:
    """A dockerd a killed earlier run left on our private root would hold its pid file and data root."""
    try:
        pid = int(pidfile.read_text().strip())
        alive = Path(f"/proc/{pid}/comm").read_text().strip() == "dockerd"
    except (OSError, ValueError):
        return
    if not alive:
        return
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 60
    while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
        time.sleep(0.5)


def wait_until(ready, timeout: float, what: str, log: Path, process: subprocess.Popen) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        if process.poll() is not None or time.monotonic() > deadline:
            tail = log.read_text(errors="replace")[-3000:] if log.exists() else ""
            raise DockerUnavailable(f"{what} did not start:\n{tail}")
        time.sleep(0.5)


# ---- the Debian base image (debootstrap, cached between runs) ----


def debian_arch() -> str:
    return subprocess.run(
        ["dpkg", "--print-architecture"], capture_output=True, text=True, check=True
    ).stdout.strip()


def debian_rootfs(suite: str = DEBIAN_SUITE) -> Path:
    """A minimal Debian root file system with Python 3.11, pip and venv, made once per suite and arch."""
    target = CACHE_ROOT / "debootstrap" / f"{suite}-{debian_arch()}"
    if target.is_dir():
        return target
    if shutil.which("debootstrap") is None:
        raise DockerUnavailable("no debootstrap: `make apt-deps` installs it")
    partial = target.with_name(target.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.parent.mkdir(parents=True, exist_ok=True)
    command = [
        "debootstrap", "--variant=minbase", f"--include={','.join(BASE_PACKAGES)}",
        suite, str(partial), DEBIAN_MIRROR,
    ]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, timeout=1200)
    if result.returncode != 0:
        raise DockerUnavailable(f"debootstrap failed:\n{result.stdout[-3000:]}{result.stderr[-3000:]}")
    for package in (partial / "var" / "cache" / "apt" / "archives").glob("*.deb"):
        package.unlink()
    partial.rename(target)  # atomic: a present target is always complete
    return target


def base_image(docker: Docker, suite: str = DEBIAN_SUITE) -> str:
    """The debootstrap root imported as an image that trusts the host's CA bundle.

    The host reaches the registries through a certificate that only its own bundle holds, and
    installing ca-certificates in a build regenerates /etc/ssl/certs, so the bundle lies beside it
    as its own file. The tag names the bundle's hash: an unchanged one reuses the image (a fresh
    import would change the image id and void the build cache).
    """
    with cache_lock("debootstrap"):
        rootfs = debian_rootfs(suite)
    bundle = HOST_CA_BUNDLE.read_bytes()
    tag = f"od-annotation-test-base:{rootfs.name}-{hashlib.sha256(bundle).hexdigest()[:12]}"
    if docker.has_image(tag):
        return tag
    ca_file = rootfs / BASE_CA_PATH.lstrip("/")
    ca_file.parent.mkdir(parents=True, exist_ok=True)
    ca_file.write_bytes(bundle)
    changes = [
        "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        f"ENV PIP_CERT={BASE_CA_PATH}",
        f"ENV SSL_CERT_FILE={BASE_CA_PATH}",
        f"ENV REQUESTS_CA_BUNDLE={BASE_CA_PATH}",
        'CMD ["/bin/bash"]',
    ]
    tar = subprocess.Popen(["tar", "-C", str(rootfs), "-c", "."], stdout=subprocess.PIPE)
    command = [docker.client, "import", *(f"--change={change}" for change in changes), "-", tag]
    result = subprocess.run(command, stdin=tar.stdout, env=docker.env(), capture_output=True, timeout=600)
    tar.wait()
    if result.returncode != 0 or tar.returncode != 0:
        raise DockerUnavailable(f"docker import failed:\n{result.stderr.decode(errors='replace')[-3000:]}")
    return tag


def build_image(docker: Docker, context: Path, target: str, tag: str, build_args: dict[str, str]) -> None:
    args = [f"--build-arg={name}={value}" for name, value in build_args.items()]
    docker("build", "--network", "host", "--target", target, "-t", tag, *args, str(context), timeout=3600)


def image_size_bytes(docker: Docker, tag: str) -> int:
    return int(docker("image", "inspect", "--format", "{{.Size}}", tag).stdout.strip())


# ---- containers ----


@dataclass(frozen=True)
class Container:
    docker: Docker
    name: str

    def logs(self) -> str:
        result = self.docker("logs", self.name, check=False)
        return result.stdout + result.stderr

    def python_log(self) -> str:
        """stderr alone: where Python's logging writes (the RunPod SDK prints to stdout)."""
        return self.docker("logs", self.name, check=False).stderr

    def running(self) -> bool:
        result = self.docker("inspect", "--format", "{{.State.Running}}", self.name, check=False)
        return result.stdout.strip() == "true"


@contextmanager
def run_container(
    docker: Docker,
    image: str,
    name: str,
    command: Sequence[str] = (),
    env: dict[str, str] | None = None,
    volumes: dict[Path, str] | None = None,
) -> Iterator[Container]:
    """A detached container on the host network, removed after the `with` block."""
    docker("rm", "-f", name, check=False)
    options = ["--network", "host", "--name", name]
    for key, value in (env or {}).items():
        options += ["-e", f"{key}={value}"]
    for host_path, container_path in (volumes or {}).items():
        options += ["-v", f"{host_path}:{container_path}"]
    docker("run", "-d", *options, image, *command)
    try:
        yield Container(docker, name)
    finally:
        docker("rm", "--force", "--volumes", name, check=False)
