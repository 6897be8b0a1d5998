"""Waiting for the local stack's parts to answer: redis (PING as a plane), a plane's
HTTP readiness, the edge over HTTPS, a file a plane writes; a component that died
while we waited is reported with the last line of its log."""

from __future__ import annotations

import ssl
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

import redis

from productionlab.processes import Component
from productionlab.stackconfig import StackConfig, StackError


class Readiness:
    """Mixed into the Supervisor: it provides ``config``, ``components``, ``log_dir``,
    ``tls_cert``, ``secret`` and ``redis_tls_options``."""

    config: StackConfig
    components: dict[str, Component]
    log_dir: Path
    tls_cert: Path

    def redis_client(self, plane: str = "cp") -> redis.Redis:
        return redis.Redis(
            host=self.config.bind,
            port=self.config.redis_port,
            username=f"plab-{plane}",
            password=self.secret(f"redis_{plane}_password"),
            socket_timeout=5,
            **self.redis_tls_options(plane),  # type: ignore[arg-type]
        )

    def wait_redis(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            self._check_alive("redis")
            try:
                client = self.redis_client()
                client.ping()
                client.close()
                return
            except redis.RedisError:
                if time.monotonic() > deadline:
                    raise StackError("redis did not start; see " + str(self.log_dir)) from None
                time.sleep(0.1)

    def wait_file(self, path: Path, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not path.exists():
            if time.monotonic() > deadline:
                raise StackError(f"{path} did not appear")
            time.sleep(0.1)

    def _check_alive(self, name: str) -> None:
        component = self.components.get(name)
        if component is not None and component.exited:
            lines = component.log_path.read_text(errors="replace").strip().splitlines()
            last = lines[-1].strip() if lines else "no output"
            raise StackError(
                f"{name} exited during start-up ({last[-300:]}); see {component.log_path}"
            )

    def wait_http(self, port: int, path: str, timeout: float) -> None:
        """A plane answers 200 on ``path``; any plane or nginx that died meanwhile is
        reported (redis is watched by ``wait_redis``)."""

        def check_alive() -> None:
            for name, component in self.components.items():
                if name != "redis" and component.exited:
                    self._check_alive(name)

        url = f"http://{self.config.bind}:{port}{path}"
        self._wait_200(url, None, check_alive, timeout, f"; see {self.log_dir}")

    def wait_https(self, path: str, timeout: float) -> None:
        """The edge answers 200 on ``path`` over TLS, verified with the stack's certificate."""
        context = ssl.create_default_context(cafile=str(self.tls_cert))
        url = f"https://{self.config.bind}:{self.config.https_port}{path}"
        self._wait_200(url, context, lambda: self._check_alive("nginx"), timeout, "")

    def _wait_200(
        self,
        url: str,
        context: ssl.SSLContext | None,
        check_alive: Callable[[], None],
        timeout: float,
        hint: str,
    ) -> None:
        deadline = time.monotonic() + timeout
        while True:
            check_alive()
            try:
                with urllib.request.urlopen(  # noqa: S310 - http(s) URLs we built  # nosec B310
                    url, timeout=2, context=context
                ) as response:
                    if response.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            if time.monotonic() > deadline:
                raise StackError(f"{url} did not answer 200 in {timeout}s{hint}")
            time.sleep(0.1)
