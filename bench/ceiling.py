"""The ceiling system of `make bench` (issue 16): the hardened stack's topology with
nothing but an empty Flask route behind it.

An nginx with the edge's TLS, keepalive and proxy settings - copied line by line
from the hardened edge's rendered config in the same run (``edge_lines``) - but no
auth, no rate limit, no key regex, no access log and no security headers, in front
of the same number of Waitress processes and threads as the hardened stack, each
serving ``bench/ceiling_app.py``. Loopback only, free ports, a temp dir.
"""

from __future__ import annotations

import contextlib
import http.client
import os
import re
import signal
import ssl
import subprocess
import sys
import time
from pathlib import Path

import harness
import jinja2

TEMPLATE = harness.BENCH_DIR / "ceiling_nginx.conf.j2"

# Which of the edge's directives the ceiling copies, by the block they sit in. The
# rest (auth_basic, limit_req/limit_conn, maps, access_log, add_header, locations)
# is the edge's own work, which the ceiling leaves out.
EDGE_MAIN = {"worker_processes", "pcre_jit"}
EDGE_EVENTS = {"worker_connections"}
EDGE_HTTP = {
    "sendfile",
    "tcp_nodelay",
    "keepalive_timeout",
    "keepalive_requests",
    "client_header_timeout",
    "client_body_timeout",
    "send_timeout",
    "client_header_buffer_size",
    "large_client_header_buffers",
    "client_max_body_size",
    "client_body_buffer_size",
    "merge_slashes",
    "server_tokens",
    "proxy_http_version",
    "proxy_set_header",
    "proxy_connect_timeout",
    "proxy_send_timeout",
    "proxy_read_timeout",
    "proxy_request_buffering",
    "proxy_buffering",
    "ssl_protocols",
    "ssl_ciphers",
    "ssl_prefer_server_ciphers",
    "ssl_session_cache",
    "ssl_session_timeout",
    "ssl_session_tickets",
    "ssl_ecdh_curve",
}
EDGE_UPSTREAM = {"keepalive", "keepalive_requests", "keepalive_timeout"}
# Without these the ceiling would not be the edge's TLS and keepalive upstream:
# when the edge's template changes shape, fail rather than measure something else.
REQUIRED = {
    "http": {"ssl_protocols", "ssl_ciphers", "ssl_session_cache", "proxy_http_version"},
    "upstream": {"keepalive"},
}
QUOTED = re.compile(r"'[^']*'|\"[^\"]*\"")


def edge_lines(edge_conf: str, upstream: str = "plab_ap") -> dict[str, list[str]]:
    """The directives the ceiling shares with the rendered edge config, by block:
    ``main``, ``events``, ``http`` (top level of the http block) and ``upstream``
    (the app plane's upstream). Lines that use the edge's own variables
    (``$plab_...``, defined by its maps) are skipped."""
    found: dict[str, list[str]] = {"main": [], "events": [], "http": [], "upstream": []}
    wanted = {"main": EDGE_MAIN, "events": EDGE_EVENTS, "http": EDGE_HTTP}
    blocks: list[str] = []  # the header of every open block, outermost first
    for raw in edge_conf.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        bare = QUOTED.sub("''", line)  # braces inside quoted strings are not blocks
        if bare.endswith("{"):
            blocks.append(bare[:-1].strip())
            continue
        if bare == "}":
            blocks.pop()
            continue
        directive = bare.split()[0]
        if "$plab_" in line:
            continue
        if not blocks:
            block = "main"
        elif blocks == ["events"]:
            block = "events"
        elif blocks == ["http"]:
            block = "http"
        elif blocks == ["http", f"upstream {upstream}"]:
            block = "upstream"
            if directive in EDGE_UPSTREAM:
                found[block].append(line)
            continue
        else:
            continue
        if directive in wanted[block]:
            found[block].append(line)
    if blocks:
        raise ValueError(f"unbalanced braces in the edge config: {blocks} left open")
    for block, names in REQUIRED.items():
        have = {line.split()[0] for line in found[block]}
        missing = names - have
        if missing:
            raise ValueError(f"the edge config has no {', '.join(sorted(missing))} in {block}")
    return found


def render_conf(
    edge_conf: str,
    servers: list[str],
    listen: str,
    tls_cert: Path,
    tls_key: Path,
    tmp: Path,
    user: str | None = None,
) -> str:
    lines = edge_lines(edge_conf)
    template = jinja2.Template(TEMPLATE.read_text(), undefined=jinja2.StrictUndefined)
    return template.render(
        user=user,
        edge_main=lines["main"],
        edge_events=lines["events"],
        edge_http=lines["http"],
        edge_upstream=lines["upstream"],
        servers=servers,
        listen=listen,
        tls_cert=tls_cert,
        tls_key=tls_key,
        tmp=tmp,
    )


class Ceiling(harness.System):
    """nginx (the edge's TLS and upstream settings) -> N Waitress x T threads of an
    empty Flask route; N, T, the edge config and the TLS certificate are the
    hardened stack's in the same run."""

    def __init__(
        self,
        edge_conf: str,
        ap_workers: int,
        threads: int,
        tls_cert: Path,
        tls_key: Path,
        auth_header: str | None = None,
    ) -> None:
        tmp = harness.temp_dir("plab-bench-ceiling-")
        self.workers: list[subprocess.Popen] = []
        self.nginx: subprocess.Popen | None = None
        self.tmp = tmp
        try:
            nginx = harness.find_binary("nginx")
            if nginx is None:
                raise RuntimeError("nginx is missing: apt-get install nginx")
            ports = self._start_workers(ap_workers, threads)
            self._start_nginx(nginx, edge_conf, ports, tls_cert, tls_key)
        except BaseException:
            self.stop()
            raise
        # The ceiling gets the same request bytes as the hardened stack: wrk sends the
        # same Authorization header (nothing checks it) and nginx adds X-Request-ID.
        super().__init__(
            "ceiling",
            f"ceiling ({ap_workers} Waitress x {threads} threads, empty Flask route, "
            "edge TLS, no auth)",
            f"https://127.0.0.1:{self.port}",
            env={"BENCH_AUTH": auth_header} if auth_header else {},
            tmp=tmp,
        )

    @classmethod
    def matching(cls, hardened: harness.Hardened) -> Ceiling:
        """The ceiling for ``hardened``: its process and thread counts, its rendered
        edge config, its certificate and its client's Authorization header."""
        stack = hardened.stack
        return cls(
            edge_conf=(stack.nginx_dir / "nginx.conf").read_text(),
            ap_workers=stack.config.ap_workers,
            threads=stack.config.threads,
            tls_cert=stack.tls_cert,
            tls_key=stack.tls_cert.with_name("tls.key"),
            auth_header=hardened.env.get("BENCH_AUTH"),
        )

    def _start_workers(self, ap_workers: int, threads: int) -> list[int]:
        """``ap_workers`` Waitress processes of the empty route, each on a port of its
        own; returns the ports once every one accepts connections."""
        tmp = self.tmp
        ports = []
        for _ in range(ap_workers):
            port = harness.free_port()
            ports.append(port)
            self.workers.append(
                subprocess.Popen(
                    [
                        sys.executable,
                        str(harness.BENCH_DIR / "ceiling_app.py"),
                        "--port",
                        str(port),
                        "--threads",
                        str(threads),
                    ],
                    stdout=open(tmp / f"ap{len(self.workers) + 1}.log", "ab"),
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            )
        for port in ports:
            harness.wait_port(port)
        return ports

    def _start_nginx(
        self, nginx: str, edge_conf: str, ports: list[int], tls_cert: Path, tls_key: Path
    ) -> None:
        """The edge-like nginx in front of ``ports``, ready when both paths answer."""
        tmp = self.tmp
        self.port = harness.free_port()
        # nginx's master reads the certificate and key (the hardened stack's, so the
        # handshake and record layer are the same); as root its workers run as the
        # edge's account, or nobody.
        user = None
        if os.geteuid() == 0:
            from productionlab.supervisor import EDGE_USER, system_account

            account = system_account(EDGE_USER)
            user = f"{account.name} {account.group}"
        (tmp / "temp").mkdir()
        conf = render_conf(
            edge_conf,
            [f"127.0.0.1:{p}" for p in ports],
            f"127.0.0.1:{self.port}",
            tls_cert,
            tls_key,
            tmp,
            user,
        )
        (tmp / "nginx.conf").write_text(conf)
        argv = [nginx, "-p", str(tmp), "-c", str(tmp / "nginx.conf")]
        check = subprocess.run([*argv, "-t", "-q"], capture_output=True, text=True, check=False)
        if check.returncode != 0:
            raise RuntimeError(f"the ceiling's nginx rejected its config: {check.stderr[-500:]}")
        self.nginx = subprocess.Popen(
            argv,
            stdout=open(tmp / "nginx.log", "ab"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.context = ssl.create_default_context(cafile=str(tls_cert))
        self._wait_ready()

    def _wait_ready(self, timeout: float = 20.0) -> None:
        """Both paths answer 200 through nginx, or fail with what was seen."""
        deadline = time.monotonic() + timeout
        last = "nothing answered"
        while time.monotonic() < deadline:
            try:
                statuses = []
                for method, path in (("GET", "/read/bench-0"), ("POST", "/write/bench-0/v")):
                    conn = http.client.HTTPSConnection(
                        "127.0.0.1", self.port, context=self.context, timeout=2
                    )
                    conn.request(method, path)
                    response = conn.getresponse()
                    response.read()
                    conn.close()
                    statuses.append(response.status)
                if statuses == [200, 200]:
                    return
                last = f"statuses {statuses}"
            except OSError as exc:
                last = str(exc)
            if self.nginx is not None and self.nginx.poll() is not None:
                break
            time.sleep(0.1)
        log = (self.tmp / "error.log").read_text(errors="replace")[-500:]
        raise RuntimeError(f"the ceiling did not come up: {last}; nginx: {log}")

    def processes(self) -> dict[str, int]:
        found: dict[str, int] = {}
        if self.nginx is not None:
            found["nginx-master"] = self.nginx.pid
            for index, child in enumerate(sorted(harness.children_of(self.nginx.pid))):
                found[f"nginx-worker{index + 1}"] = child
        for index, worker in enumerate(self.workers):
            found[f"ap{index + 1}"] = worker.pid
        return found

    def stop(self) -> None:
        """nginx first (graceful: SIGQUIT, its master waits for its workers), then the
        Waitress processes; a process still there after 10 s is killed with its
        process group (each leads a session of its own)."""
        for process, signum in [
            *([(self.nginx, signal.SIGQUIT)] if self.nginx is not None else []),
            *[(w, signal.SIGTERM) for w in self.workers],
        ]:
            if process.poll() is not None:
                continue
            process.send_signal(signum)
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                # still alive, so not reaped: its session's group id is still ours
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                process.wait(5)
        super().stop()
