"""Crash durability: kill -9 redis under a concurrent write load through the
edge, restart it, and compare what was acknowledged with what the AOF holds.

The final image is inspected by loading a copy of the AOF (taken after a last
kill -9) into a private redis without ACLs, so every key can be scanned.
"""

from __future__ import annotations

import os
import time

import pytest
from faultkit import (
    Load,
    audit_entries,
    kv_state,
    partial_state,
    record,
    scratch_redis,
    wait_until,
)

from productionlab.audit_archive import Archive
from productionlab.audit_chains import verify_every_chain
from productionlab.audit_checkpoint import CheckpointFile
from tests.supervisor_kit import kill, restart

MIN_ACKED = int(os.environ.get("PLAB_DURABILITY_MIN_ACKED", "8000"))
KILLS = 4
RUN_LIMIT = 150.0  # seconds per mode, whatever the machine's speed


def writes_succeed(stack, auth) -> bool:
    import requests

    response = requests.put(
        f"{stack.url}/v1/kv/probe-{time.monotonic_ns()}",
        data=b"x",
        auth=auth,
        verify=str(stack.tls_cert),
        timeout=5,
    )
    return response.status_code in (200, 201)


@pytest.mark.parametrize("durability", ["strict", "everysec"])
def test_kill_9_redis_under_write_load_loses_no_acknowledged_write(
    stack_factory, tmp_path, durability
):
    stack = stack_factory(
        durability=durability,
        edge_rate=100_000,
        edge_burst=100_000,
        user_rate="10000000/minute",
    )
    rendered = (stack.redis_dir / "redis.conf").read_text()
    fsync = "always" if durability == "strict" else "everysec"
    assert f"appendfsync {fsync}" in rendered
    auth = ("admin", stack.admin_password_file.read_text().strip())

    started = time.monotonic()
    downtime = []
    recoveries = []
    kills = 0
    with Load(stack, auth, threads=12) as load:
        per_kill = MIN_ACKED / (KILLS + 1)
        while kills < KILLS and time.monotonic() - started < RUN_LIMIT:
            target = (kills + 1) * per_kill
            wait_until(lambda t=target: load.acked_count() >= t, RUN_LIMIT / (KILLS + 1), 0.1)
            kill(stack, "redis")  # SIGKILL, then reaped
            killed_at = time.monotonic()
            kills += 1
            time.sleep(1.0)  # the load keeps writing into a dead store
            restart(stack, "redis")
            downtime.append(round(time.monotonic() - killed_at, 2))
            back = wait_until(lambda: writes_succeed(stack, auth), 30, 0.05)
            assert back is not None, "writes did not resume after redis came back"
            recoveries.append(round(back, 2))
        wait_until(
            lambda: load.acked_count() >= MIN_ACKED,
            max(5.0, RUN_LIMIT - (time.monotonic() - started)),
        )
    elapsed = time.monotonic() - started
    tally = load.tally

    # The crash image: one last kill -9 with nothing flushed on purpose.
    kill(stack, "redis")
    with scratch_redis(stack.redis_dir / "appendonly", tmp_path) as image:
        items = kv_state(image)
        lost = [
            a
            for a in tally.acked
            if a.key not in items
            or items[a.key].get(b"v", b"").decode() != a.value
            or int(items[a.key].get(b"ver", b"0")) != a.version
        ]
        problems = partial_state(image)
        entries = audit_entries(image)
        # Every chain: the main one and each shard's (where the KV changes are).
        chains = verify_every_chain(
            image,
            lambda name: Archive(tmp_path / "no-archive" / name),
            CheckpointFile(tmp_path / "none.jsonl"),
            {},
        )

    figures = {
        "durability": durability,
        "appendfsync": fsync,
        "kills": kills,
        "seconds": round(elapsed, 1),
        "acknowledged": len(tally.acked),
        "lost": len(lost),
        "statuses": {str(k): v for k, v in sorted(tally.statuses.items(), key=str)},
        "failed_writes": tally.errors,
        "redis_down_seconds": downtime,
        "writes_resumed_after_restart_s": recoveries,
        "audit_entries": len(entries),
        "audit_chains_ok": all(result.ok for result in chains.values()),
        "partial_state": {k: len(v) for k, v in problems.items()},
    }
    record(f"durability-{durability}", figures)

    assert kills == KILLS
    assert len(tally.acked) >= MIN_ACKED, figures
    assert lost == [], f"{len(lost)} acknowledged writes lost, e.g. {lost[:3]}"
    assert tally.bad == [], f"answers other than 2xx/503: {tally.bad[:5]}"
    assert set(tally.statuses) <= {200, 201, 503, "conn"}, figures
    assert tally.missing_retry_after == 0
    assert all(not v for v in problems.values()), {k: v[:5] for k, v in problems.items()}
    failing = {name: r.as_dict() for name, r in chains.items() if not r.ok}
    assert not failing, failing
