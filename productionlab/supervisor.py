"""The local stack without Docker: redis, the control plane, N app-plane
processes and nginx, supervised in the foreground.

``make run`` uses it with the defaults README.md documents; the test suite uses the
same class with free ports and a temporary state directory, so the tests run
the system the way users do.

The parts live in their own modules and are importable from here as before:
``stackconfig`` (StackConfig, StackError), ``processes`` (Component and the host
helpers), ``accounts`` (the service users as root), ``stacklayout`` (the files the
stack writes, the planes' environment), ``readiness`` (waiting for each part).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import signal
import subprocess  # the local stack runs its own processes  # nosec B404
import sys
import time

from productionlab import stackfile
from productionlab.accounts import (
    EDGE_USER,
    FALLBACK_USER,
    SERVICE_USER,
    Account,
    chown_tree,
    system_account,
    traversable_by_others,
)
from productionlab.processes import (
    Component,
    die_with_parent,
    find_binary,
    free_port,
    port_free,
    process_group_members,
)
from productionlab.readiness import Readiness
from productionlab.stackconfig import CONSOLE_VARIABLES, StackConfig, StackError
from productionlab.stacklayout import (
    FORMAT_FILE,
    RUNTIME_ROOT,
    SERVICE_DATA_ROOT,
    STATE_FORMAT,
    StackLayout,
)

__all__ = [
    "CONSOLE_VARIABLES",
    "EDGE_USER",
    "FALLBACK_USER",
    "FORMAT_FILE",
    "LOCK_FILE",
    "RUNTIME_ROOT",
    "SERVICE_DATA_ROOT",
    "SERVICE_USER",
    "STATE_FORMAT",
    "Account",
    "Component",
    "StackConfig",
    "StackError",
    "Supervisor",
    "chown_tree",
    "die_with_parent",
    "find_binary",
    "free_port",
    "port_free",
    "process_group_members",
    "system_account",
    "traversable_by_others",
]

LOCK_FILE = "run.lock"


class Supervisor(StackLayout, Readiness):
    """Starts, watches and stops the stack's components: redis, the control plane,
    the app-plane processes and nginx (the files they need: ``StackLayout``)."""

    def __init__(self, config: StackConfig):
        super().__init__(config)
        self.components: dict[str, Component] = {}
        self._stopping = False
        self._lock: int | None = None

    def _add(
        self,
        name: str,
        argv: list[str],
        env: dict[str, str],
        restart: bool,
        stop_signal: int = signal.SIGTERM,
        ports: tuple[int, ...] = (),
        account: Account | None = None,
    ) -> Component:
        component = Component(
            name,
            argv,
            env,
            self.log_dir / f"{name}.log",
            restart,
            stop_signal=stop_signal,
            ports=ports,
            bind=self.config.bind,
            account=account,
        )
        self.components[name] = component
        return component

    def _plane_argv(self, plane: str, port: int) -> list[str]:
        argv = [sys.executable, "-m", "productionlab", "serve", plane]
        argv += ["--host", self.config.bind, "--port", str(port)]
        if self.service is not None:
            # started as root so it can read root's secrets and the code (which may
            # sit under a 0700 home); it drops to the service user before serving
            argv += ["--run-as", self.service.name]
        return argv

    def check_ports(self) -> None:
        """Every port the stack listens on is free, or one line naming its variable."""
        for port, variable in self.config.port_variables().items():
            if not port_free(self.config.bind, port):
                raise StackError(
                    f"port {port} on {self.config.bind} is already in use (Address already "
                    f"in use): set {variable} to a free port, or stop what holds it"
                )

    def acquire_lock(self) -> None:
        """One supervisor per state dir: a second `make run` in a checkout says who runs."""
        self.state.mkdir(parents=True, exist_ok=True)
        path = self.state / LOCK_FILE
        descriptor = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(descriptor, 32).decode(errors="replace").strip() or "?"
            os.close(descriptor)
            raise StackError(
                f"a stack from this checkout is already running (pid {holder}); stop it "
                f"with Ctrl-C in its terminal or kill {holder}"
            ) from None
        os.ftruncate(descriptor, 0)
        os.write(descriptor, f"{os.getpid()}\n".encode())
        self._lock = descriptor

    def release_lock(self) -> None:
        if self._lock is not None:
            with contextlib.suppress(OSError):
                os.ftruncate(self._lock, 0)
            os.close(self._lock)
            self._lock = None

    def start(self, timeout: float = 60.0) -> None:
        redis_server, nginx = find_binary("redis-server"), find_binary("nginx")
        missing = [n for n, b in (("redis-server", redis_server), ("nginx", nginx)) if not b]
        if missing:
            raise StackError(
                f"missing {', '.join(missing)}: install the Debian packages with "
                f"`sudo apt-get install {' '.join(missing)}` (make run does it when run as root)"
            )
        self._stopping = False
        self.acquire_lock()
        try:
            self.check_ports()
            self.prepare()
            stackfile.write(self.state, self.plane_env("cp"), self.url, os.getpid())
        except BaseException:
            self._remove_runtime_dir()
            self.release_lock()
            raise
        assert redis_server is not None and nginx is not None  # checked above  # nosec B101
        try:
            self._add(
                "redis",
                [redis_server, str(self.redis_dir / "redis.conf")],
                dict(os.environ),
                self.config.restart_redis,
                ports=(self.config.redis_port,),
                account=self.service,
            ).start()
            self.wait_redis(timeout)
            self._add(
                "cp",
                self._plane_argv("cp", self.config.cp_port),
                self.plane_env("cp"),
                self.config.restart_apps,
                ports=(self.config.cp_port,),
            ).start()
            self.wait_http(self.config.cp_port, self.config.ready_path, timeout)
            self.wait_file(self.admin_password_file, timeout)
            for index, port in enumerate(self.config.ap_ports):
                self._add(
                    f"ap{index + 1}",
                    self._plane_argv("ap", port),
                    self.plane_env("ap"),
                    self.config.restart_apps,
                    ports=(port,),
                ).start()
            for port in self.config.ap_ports:
                self.wait_http(port, self.config.ready_path, timeout)
            conf = str(self.nginx_dir / "nginx.conf")
            prefix = str(self.nginx_dir)
            check = subprocess.run(  # noqa: S603 - nginx -t on our config  # nosec B603
                [nginx, "-t", "-q", "-p", prefix, "-c", conf],
                capture_output=True,
                text=True,
                check=False,
            )
            if check.returncode != 0:
                first = (check.stderr.strip().splitlines() or ["no message"])[0]
                raise StackError(f"nginx rejected its configuration: {first}")
            self._add(
                "nginx",
                [nginx, "-p", prefix, "-c", conf],
                dict(os.environ),
                True,
                stop_signal=signal.SIGQUIT,
                ports=(self.config.https_port, self.config.http_port),
            ).start()
            self.wait_https("/health", timeout)
        except BaseException:
            self.stop()
            raise

    def stop(self) -> list[str]:
        """Stop every component's whole process group; return what is left (a live
        process or a held port, one line each: empty when the stop was clean)."""
        self._stopping = True
        for name in ["nginx", *[n for n in self.components if n.startswith("ap")], "cp", "redis"]:
            component = self.components.get(name)
            if component is not None:
                component.stop()
        left = self.leftovers()
        self._remove_runtime_dir()
        self.release_lock()
        return left

    def _remove_runtime_dir(self) -> None:
        if self.as_root and self.runtime_dir != self.state:
            shutil.rmtree(self.runtime_dir, ignore_errors=True)

    def leftovers(self) -> list[str]:
        left = []
        for component in self.components.values():
            left += [f"{component.name}: process {pid} still runs" for pid in component.members()]
            left += [f"{component.name}: port {port} still held" for port in component.held_ports()]
        return left

    def supervise_once(self) -> list[str]:
        """Restart every component that died on its own; return their names.

        What the dead leader left in its process group (nginx's workers after their
        master was killed) is killed first, and its ports must be free before the new
        one starts: no orphan keeps answering with an old configuration.

        Call it from the thread that lives as long as the stack (``run_forever`` uses
        the main thread): a child gets SIGTERM when the thread that started it ends.
        """
        restarted: list[str] = []
        if self._stopping:
            return restarted
        for component in list(self.components.values()):
            if not component.restart or not (component.exited or component.pending_restart):
                continue
            component.stop(timeout=5.0, signum=signal.SIGKILL)
            if component.held_ports():
                print(
                    f"productionlab: {component.name} cannot restart yet: port(s) "
                    f"{component.held_ports()} still held",
                    file=sys.stderr,
                )
                component.pending_restart = True  # the next tick tries again
                continue
            component.pending_restart = False
            component.restarts += 1
            component.start()
            restarted.append(component.name)
        return restarted

    def run_forever(self) -> None:
        stop = {"flag": False}

        def request_stop(signum: int, _frame: object) -> None:
            stop["flag"] = True

        signal.signal(signal.SIGINT, request_stop)
        signal.signal(signal.SIGTERM, request_stop)
        started = False
        try:
            self.start()
            started = True
            for notice in self.notices:
                print(f"productionlab: {notice}", file=sys.stderr)
            self.print_banner()
            while not stop["flag"]:
                for name in self.supervise_once():
                    print(f"productionlab: {name} exited; restarted it", file=sys.stderr)
                time.sleep(0.5)
        finally:
            if started:
                print("productionlab: stopping", file=sys.stderr)
                left = self.stop()
                for line in left:
                    print(f"productionlab: left behind: {line}", file=sys.stderr)
                print("productionlab: stopped", file=sys.stderr)

    def print_banner(self) -> None:
        url = f"https://{self.config.bind}:{self.config.https_port}"
        print(json.dumps({"event": "ready", "url": url}), flush=True)
        print(
            f"""
productionlab is running at {url}  (self-signed certificate: {self.tls_cert})
  admin password:  {self.admin_password_file}
  try:             curl --cacert {self.tls_cert} -u admin:$(cat {self.admin_password_file}) \\
                        -X POST {url}/write/hello/world
  console:         {url}/console/  (sign in as admin; PLAB_CONSOLE=off turns it off)
  logs:            {self.log_dir}/
Ctrl-C stops everything.""",
            flush=True,
        )
