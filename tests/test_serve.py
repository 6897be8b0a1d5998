"""serve.py: the two thread pools behind one Waitress listener (watches, issue 13),
a real Waitress server with the plane's dispatcher driven over loopback; and the
control plane's start-up over a real redis."""

from __future__ import annotations

import contextlib
import http.client
import logging
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest
import waitress

from productionlab.procutil import free_port
from productionlab.redis_process import RedisProcess
from productionlab.secretgen import ensure_secrets
from productionlab.serve import SplitDispatcher, bootstrap_control_plane, watch_paths
from productionlab.shardmigrate import check_layout
from productionlab.store.layout import LAYOUT_KEY
from productionlab.wiring import build_services
from tests.inprocess import plane_settings

release = threading.Event()


def app(environ, start_response):
    """Answers the name of the thread it runs on; a watch path waits for ``release``."""
    if environ["PATH_INFO"].startswith("/v1/watch"):
        release.wait(60)
    body = threading.current_thread().name.encode()
    start_response("200 OK", [("Content-Length", str(len(body)))])
    return [body]


@contextlib.contextmanager
def serving(ordinary: int, watches: int) -> Iterator[int]:
    port = free_port()
    dispatcher = SplitDispatcher(
        ordinary_threads=ordinary, watch_threads=watches, paths=("/ops/v1/watch", "/v1/watch")
    )
    served = waitress.create_server(app, host="127.0.0.1", port=port, _dispatcher=dispatcher)
    thread = threading.Thread(target=served.run, daemon=True)
    thread.start()
    release.clear()
    try:
        yield port
    finally:
        release.set()
        served.close()
        dispatcher.shutdown(timeout=10)
        thread.join(10)


@pytest.fixture
def server() -> Iterator[int]:
    with serving(ordinary=1, watches=2) as port:
        yield port


def get(port: int, path: str) -> str:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        conn.request("GET", path)
        return conn.getresponse().read().decode()
    finally:
        conn.close()


def test_watches_run_on_their_own_threads_and_never_take_an_ordinary_one(server):
    assert get(server, "/read/k") == "waitress-0"
    with ThreadPoolExecutor(max_workers=3) as pool:
        parked = [pool.submit(get, server, f"/v1/watch/k{i}") for i in range(2)]
        # Both watch threads are now parked (or about to be): ordinary requests
        # still have their one thread, however many watches wait.
        queued = pool.submit(get, server, "/v1/watch/k-third")
        for _ in range(3):
            assert get(server, "/read/k") == "waitress-0"
            assert get(server, "/ops/read/k") == "waitress-0"
        assert not queued.done()  # the watch pool is full: it waits there, not here
        release.set()
        names = sorted(f.result(timeout=60) for f in [*parked, queued])
    assert all(name.startswith("waitress-watch-") for name in names), names
    assert get(server, "/ops/v1/watch/k").startswith("waitress-watch-")


def test_without_watch_threads_a_watch_is_an_ordinary_request():
    """PLAB_WATCH_MAX_PER_PROCESS=0: no watch pool; the route answers 429 at once."""
    with serving(ordinary=1, watches=0) as port:
        release.set()
        assert get(port, "/v1/watch/k") == "waitress-0"


def test_the_watch_pool_takes_the_watch_routes_each_plane_mounts(planes):
    """The dispatcher's paths come from the apps' own routes, so a plane that mounts
    the watch blueprint elsewhere sends those paths to the watch pool too."""
    assert watch_paths(planes.ap) == ("/v1/watch",)
    assert watch_paths(planes.cp) == ("/ops/v1/watch",)


def test_the_control_plane_finishes_a_migration_that_redis_cut_short(tmp_path, caplog):
    """A redis fault during the start-up migration (here: writes paused, so they time
    out) postpones it; the control plane tries again until the store is on the layout,
    rather than serving with its KV routes at 503 until someone restarts it."""
    server = RedisProcess(directory=tmp_path / "redis")
    control = server.start()
    try:
        ensure_secrets(tmp_path / "secrets")
        services = build_services(plane_settings(server, tmp_path, "cp"))
        services.users.ensure_admin(tmp_path / "secrets" / "admin.password")
        assert control.exists(LAYOUT_KEY) == 0
        control.execute_command("CLIENT", "PAUSE", 600_000, "WRITE")
        caplog.set_level(logging.WARNING, logger="productionlab.cp")
        bootstrap = threading.Thread(target=bootstrap_control_plane, args=(services,))
        try:
            bootstrap.start()
            deadline = time.monotonic() + 120
            while "data migration postponed" not in caplog.text:
                assert time.monotonic() < deadline, "the paused writes never failed the migration"
                time.sleep(0.2)
            assert bootstrap.is_alive()
            assert control.exists(LAYOUT_KEY) == 0
        finally:
            control.execute_command("CLIENT", "UNPAUSE")
        bootstrap.join(120)
        assert not bootstrap.is_alive()
        assert check_layout(control) is True
    finally:
        server.stop()
