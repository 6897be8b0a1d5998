"""The machinery of the compose end-to-end test: a Docker daemon, stand-in
base images built from the OS packages, the project's images, and compose.

No image registry is reachable in CI, so the base images are made here:
``debootstrap`` of Debian bookworm (the release of the official slim images)
with python3, nginx and redis-server, imported with ``docker import``. The
root filesystem is cached as a tarball (``PLAB_E2E_CACHE``, default
``/var/cache/productionlab``) and rebuilt from nothing when it is missing.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
RELEASE = "bookworm"
STANDIN_PACKAGES = ("python3", "python3-venv", "nginx", "redis-server")
# Bump when the stand-in recipe changes: the cached tarball's name holds it.
STANDIN_RECIPE = "2"
REDIS_UID = 999  # the official redis image's user, which the compose file runs as
DOCKER_BRIDGE_IP = "198.18.0.1/24"
DOCKER_ADDRESS_POOL = "base=198.19.0.0/16,size=24"


class HarnessError(RuntimeError):
    pass


def log(message: str) -> None:
    print(f"[e2e {time.strftime('%H:%M:%S')}] {message}", flush=True)


def run(
    argv: Sequence[str],
    *,
    env: Mapping[str, str] | None = None,
    check: bool = True,
    timeout: float = 600,
) -> subprocess.CompletedProcess:
    """``argv`` from the repository's root, its output captured as text; with
    ``check``, a non-zero exit raises HarnessError with the output's tail."""
    result = subprocess.run(  # noqa: S603 - argv built by this harness
        list(argv),
        env=dict(env) if env is not None else None,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if check and result.returncode != 0:
        raise HarnessError(
            f"{' '.join(argv)} exited {result.returncode}\n"
            f"--- stdout\n{result.stdout[-4000:]}\n--- stderr\n{result.stderr[-4000:]}"
        )
    return result


def free_port() -> int:
    """A free loopback port below the kernel's ephemeral range, so that no other
    program's ``bind(0)`` or outgoing connection takes it while the images build."""
    low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    for _ in range(200):
        port = random.randrange(20000, max(20001, min(low, 32768)))  # noqa: S311
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise HarnessError("no free loopback port found")


def binary(name: str) -> str:
    found = shutil.which(name) or next(
        (str(p) for d in ("/usr/sbin", "/usr/bin") if (p := Path(d) / name).exists()), None
    )
    if not found:
        raise HarnessError(f"{name} is missing: install docker.io, docker-compose and debootstrap")
    return found


# --- the daemon ---------------------------------------------------------------
@dataclass
class DockerDaemon:
    """A usable Docker daemon: the machine's own when one answers, else one we start."""

    env: dict[str, str] = field(default_factory=lambda: dict(os.environ))
    process: subprocess.Popen | None = None
    bridge_existed: bool = True
    root: Path | None = None
    log_path: Path | None = None

    @property
    def owned(self) -> bool:
        return self.process is not None

    def docker(self, *args: str, check: bool = True, timeout: float = 600, **kwargs):
        return run([binary("docker"), *args], env=self.env, check=check, timeout=timeout, **kwargs)

    def usable(self) -> bool:
        try:
            probe = self.docker("info", "--format", "{{.ServerVersion}}", check=False, timeout=30)
            return probe.returncode == 0
        except (HarnessError, subprocess.TimeoutExpired):
            return False

    def start(self) -> None:
        if os.environ.get("PLAB_E2E_OWN_DOCKERD") != "1" and self.usable():
            log("using the Docker daemon that answers")
            return
        if os.geteuid() != 0:
            raise HarnessError("no usable Docker daemon, and starting one needs root")
        dockerd = binary("dockerd")
        self.bridge_existed = Path("/sys/class/net/docker0").exists()
        self.root = Path(tempfile.mkdtemp(prefix="plab-e2e-docker-", dir="/var/tmp"))
        exec_root = Path(tempfile.mkdtemp(prefix="plab-e2e-", dir="/run"))
        socket_path = exec_root / "docker.sock"
        self.log_path = self.root / "dockerd.log"
        argv = [
            dockerd,
            "--storage-driver=vfs",
            f"--bip={DOCKER_BRIDGE_IP}",
            f"--default-address-pool={DOCKER_ADDRESS_POOL}",
            f"--data-root={self.root / 'data'}",
            f"--exec-root={exec_root / 'exec'}",
            f"--pidfile={exec_root / 'dockerd.pid'}",
            f"--host=unix://{socket_path}",
            "--log-level=warn",
        ]
        log(f"starting dockerd (vfs, {DOCKER_BRIDGE_IP}); log {self.log_path}")
        with open(self.log_path, "ab") as handle:
            self.process = subprocess.Popen(  # noqa: S603
                argv, stdout=handle, stderr=subprocess.STDOUT, start_new_session=True
            )
        self.exec_root = exec_root
        self.env = {**os.environ, "DOCKER_HOST": f"unix://{socket_path}"}
        deadline = time.monotonic() + 60
        while not self.usable():
            if self.process.poll() is not None or time.monotonic() > deadline:
                tail = self.log_path.read_text(errors="replace")[-3000:]
                self.stop()
                raise HarnessError(f"dockerd did not start:\n{tail}")
            time.sleep(0.5)

    def stop(self) -> None:
        if self.process is None:
            return
        log("stopping the dockerd we started")
        with contextlib.suppress(ProcessLookupError):
            self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(60)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(10)
        self.process = None
        if not self.bridge_existed and Path("/sys/class/net/docker0").exists():
            with contextlib.suppress(HarnessError):
                run([binary("ip"), "link", "delete", "docker0"], check=False)
        for path in (self.root, getattr(self, "exec_root", None)):
            if path is not None:
                shutil.rmtree(path, ignore_errors=True)

    def image_exists(self, tag: str) -> bool:
        return self.docker("image", "inspect", tag, check=False).returncode == 0

    def inspect(self, *ids: str) -> list[dict]:
        return json.loads(self.docker("inspect", *ids).stdout)


# --- the stand-in base image --------------------------------------------------
def debian_mirror() -> str:
    """The machine's own Debian mirror (from its apt sources), unless overridden."""
    if os.environ.get("PLAB_DEBIAN_MIRROR"):
        return os.environ["PLAB_DEBIAN_MIRROR"]
    sources = sorted(Path("/etc/apt/sources.list.d").glob("*.sources"))
    for path in sources:
        for stanza in path.read_text().split("\n\n"):
            lines = [line for line in stanza.splitlines() if re.match(r"^[A-Za-z-]+:", line)]
            fields = {k.strip(): v.strip() for k, v in (line.split(":", 1) for line in lines)}
            suites = fields.get("Suites", "").split()
            if RELEASE in suites and "main" in fields.get("Components", "").split():
                return fields["URIs"].split()[0]
    listing = Path("/etc/apt/sources.list")
    if listing.exists():
        for line in listing.read_text().splitlines():
            parts = line.split()
            if len(parts) >= 4 and parts[0] == "deb" and parts[2] == RELEASE:
                return parts[1]
    raise HarnessError(f"no {RELEASE} mirror in the apt sources; set PLAB_DEBIAN_MIRROR")


def standin_key() -> str:
    recipe = json.dumps([RELEASE, STANDIN_PACKAGES, STANDIN_RECIPE, REDIS_UID])
    return hashlib.sha256(recipe.encode()).hexdigest()[:12]


def cache_dir() -> Path:
    path = Path(os.environ.get("PLAB_E2E_CACHE", "/var/cache/productionlab"))
    path.mkdir(parents=True, exist_ok=True)
    return path


def build_standin_tarball() -> Path:
    """The stand-in root filesystem as a tarball; cached, else debootstrapped."""
    tarball = cache_dir() / f"standin-{RELEASE}-{standin_key()}.tar"
    if tarball.exists() and os.environ.get("PLAB_E2E_REBUILD_BASE") != "1":
        log(f"stand-in base: cached {tarball}")
        return tarball
    if os.geteuid() != 0:
        raise HarnessError("building the stand-in base image (debootstrap) needs root")
    debootstrap = binary("debootstrap")
    debs = cache_dir() / "debs"
    debs.mkdir(exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="plab-standin-", dir="/var/tmp"))
    try:
        root = work / "root"
        # Packages' maintainer scripts must not start services on this machine.
        (root / "usr/sbin").mkdir(parents=True)
        policy = root / "usr/sbin/policy-rc.d"
        policy.write_text("#!/bin/sh\nexit 101\n")
        policy.chmod(0o755)
        mirror = debian_mirror()
        log(f"stand-in base: debootstrap {RELEASE} with {', '.join(STANDIN_PACKAGES)}")
        run(
            [
                debootstrap,
                "--variant=minbase",
                f"--include={','.join(STANDIN_PACKAGES)}",
                f"--cache-dir={debs}",
                RELEASE,
                str(root),
                mirror,
            ],
            timeout=1500,
        )
        # Like the official images: no package lists or caches, /data for redis.
        for leftover in ("var/lib/apt/lists", "var/cache/apt/archives", "var/log/nginx"):
            for child in (root / leftover).glob("*"):
                if child.is_file():
                    child.unlink()
        data = root / "data"
        data.mkdir(mode=0o750, exist_ok=True)
        os.chown(data, REDIS_UID, REDIS_UID)
        partial = tarball.with_suffix(".partial")
        run([binary("tar"), "--numeric-owner", "-C", str(root), "-cf", str(partial), "."])
        partial.replace(tarball)
        log(f"stand-in base: cached as {tarball}")
        return tarball
    finally:
        shutil.rmtree(work, ignore_errors=True)


def import_standin(daemon: DockerDaemon) -> str:
    tag = f"productionlab-standin:{RELEASE}-{standin_key()}"
    if daemon.image_exists(tag):
        log(f"stand-in base: image {tag} is present")
        return tag
    tarball = build_standin_tarball()
    log(f"stand-in base: docker import as {tag}")
    daemon.docker(
        "import",
        "--change",
        "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        "--change",
        "ENV LANG=C.UTF-8",
        "--change",
        'CMD ["bash"]',
        str(tarball),
        tag,
        timeout=900,
    )
    return tag


def python_version(python: str) -> str | None:
    probe = run(
        [python, "-c", "import platform, pip; print(platform.python_version())"], check=False
    )
    return probe.stdout.strip() if probe.returncode == 0 else None


def prepare_wheels(daemon: DockerDaemon, base: str, pythons: Sequence[str]) -> Path:
    """Every runtime dependency as a wheel in the build context (docker/wheels/).

    pip evaluates environment markers (``python_full_version < "3.11.3"``) for
    the interpreter it runs in, so the wheels are prepared by a host Python of
    the same version as the base image's.
    """
    target = daemon.docker(
        "run",
        "--rm",
        "--network=none",
        "--entrypoint",
        "python3",
        base,
        "-c",
        "import platform; print(platform.python_version())",
    ).stdout.strip()
    versions = {python: python_version(python) for python in pythons}
    python = next((p for p, v in versions.items() if v == target), None)
    if python is None:
        raise HarnessError(
            f"the base image has Python {target}; no host Python with pip matches it: {versions}"
        )
    wheels = REPO / "docker" / "wheels"
    for stale in wheels.glob("*.whl"):
        stale.unlink()
    log(f"wheels: {python} -m pip wheel -r requirements.txt into docker/wheels/")
    run(
        [
            python,
            "-m",
            "pip",
            "wheel",
            "--quiet",
            "--wheel-dir",
            str(wheels),
            "-r",
            str(REPO / "requirements.txt"),
            "setuptools>=68",
        ],
        timeout=900,
    )
    return wheels


# --- compose ------------------------------------------------------------------
@dataclass
class Compose:
    daemon: DockerDaemon
    project: str
    variables: dict[str, str]
    # Global options before the command, e.g. ``--env-file secrets/ha.env`` (the ha profile).
    options: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        env = {k: v for k, v in self.daemon.env.items() if not k.startswith("PLAB_")}
        env.update(self.variables)
        self.env = env
        probe = run([binary("docker"), "compose", "version"], env=env, check=False)
        if probe.returncode == 0:
            self.argv = [binary("docker"), "compose"]
        else:
            self.argv = [binary("docker-compose")]

    def __call__(self, *args: str, check: bool = True, timeout: float = 900):
        return run(
            [
                *self.argv,
                "--project-name",
                self.project,
                "--file",
                "docker-compose.yml",
                *self.options,
                *args,
            ],
            env=self.env,
            check=check,
            timeout=timeout,
        )

    def container_ids(self, service: str | None = None, all_states: bool = False) -> list[str]:
        filters = ["--filter", f"label=com.docker.compose.project={self.project}"]
        if service:
            filters += ["--filter", f"label=com.docker.compose.service={service}"]
        args = ["ps", "--quiet", "--no-trunc", *filters]
        if all_states:
            args.insert(1, "--all")
        return self.daemon.docker(*args).stdout.split()

    def container(self, service: str) -> str:
        ids = self.container_ids(service)
        if not ids:
            raise HarnessError(f"no running container for {service}")
        return ids[0]

    def exec(self, service_or_id: str, *argv: str, check: bool = True):
        target = service_or_id if len(service_or_id) == 64 else self.container(service_or_id)
        return self.daemon.docker("exec", target, *argv, check=check, timeout=120)

    def wait_healthy(self, service: str, count: int = 1, timeout: float = 240) -> list[str]:
        deadline = time.monotonic() + timeout
        while True:
            ids = self.container_ids(service)
            states = [c["State"] for c in self.daemon.inspect(*ids)] if ids else []
            healthy = [s for s in states if s.get("Health", {}).get("Status") == "healthy"]
            if len(ids) >= count and len(healthy) == len(ids):
                return ids
            if time.monotonic() > deadline:
                raise HarnessError(f"{service}: {len(healthy)}/{count} healthy after {timeout}s")
            time.sleep(1)

    def logs(self) -> str:
        result = self("logs", "--no-color", "--timestamps", check=False, timeout=120)
        return result.stdout + result.stderr


def scan_for_secrets(daemon: DockerDaemon, image: str, secrets: Sequence[bytes]) -> list[str]:
    """Which of the secrets appear anywhere in the image's saved layers and config."""
    found: set[bytes] = set()
    overlap = max(len(s) for s in secrets)
    with subprocess.Popen(  # noqa: S603
        [binary("docker"), "save", image], env=daemon.env, stdout=subprocess.PIPE
    ) as process:
        assert process.stdout is not None
        tail = b""
        for chunk in iter(lambda: process.stdout.read(1 << 20), b""):
            window = tail + chunk
            found.update(s for s in secrets if s in window)
            tail = window[-overlap:]
    if process.returncode != 0:
        raise HarnessError(f"docker save {image} failed")
    return sorted(s.decode(errors="replace")[:8] + "..." for s in found)


def processes_of(container_id: str) -> Iterator[tuple[int, dict[str, str]]]:
    """Every process of a container (by its cgroup), with its /proc status fields."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if container_id not in (entry / "cgroup").read_text():
                continue
            status = dict(
                line.split(":", 1) for line in (entry / "status").read_text().splitlines()
            )
        except (OSError, ValueError):
            continue
        yield int(entry.name), {k: v.strip() for k, v in status.items()}
