"""A real network partition of the Sentinel primary, measured (issue 12, item 1).

``run_in_namespace(mode)`` runs this file in a private network namespace
(``unshare --net``: its own loopback, its own firewall; nothing on the host's
network or firewall changes). There it brings ``lo`` up, starts the Sentinel
topology with one loopback address per process (tests/sentinel_kit.py,
``separate_addresses``) and both planes in process on 127.0.0.1, and puts the
write and read load through them. Then iptables rules drop every packet
between the primary's address and the replicas' and sentinels' addresses, both
ways, while the planes still reach all of them: the classic split brain. The
sentinels promote a replica; the planes' open connections still lead to the
old primary. After ``PARTITION_SECONDS`` the rules are removed: the sentinels
turn the old primary into a replica of the new one ("last failover wins"), and
the planes, refused with READONLY there, find the new primary.

Measured: every answer during the partition and after it, the writes
acknowledged while partitioned, and which acknowledged writes the final
primary lacks. The result is one ``PARTITION {json}`` line on stdout.
"""

from __future__ import annotations

import collections
import json
import os
import subprocess  # iptables and ip, in our own namespace  # nosec B404
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PARTITION_SECONDS = 12.0  # past min-replicas-max-lag (10 s): the old primary then refuses too
HEAL_LIMIT = 45.0
AFTER_HEAL = 2.0


def firewall(action: str, primary: str, others: list[str]) -> None:
    """``-A`` (cut) or ``-D`` (heal): drop everything between the primary and ``others``."""
    for other in others:
        for source, destination in ((primary, other), (other, primary)):
            subprocess.run(
                ["iptables", action, "INPUT", "-s", source, "-d", destination, "-j", "DROP"],
                check=True,
            )


def message(body: str) -> str:
    """The error message of a JSON error answer (its request id left out)."""
    try:
        return json.loads(body)["error"]["message"]
    except (ValueError, KeyError, TypeError):
        return body[:80]


def measure(durability: str) -> dict:
    from sentinel_kit import ADDRESSES, SentinelTopology, close_planes, planes_over, warmed_load

    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)  # nosec
    topology = SentinelTopology(
        min_replicas=1 if durability == "replicated" else 0, separate_addresses=True
    ).start()
    planes = load = None
    others = [a for name, a in ADDRESSES.items() if name != "primary"]
    cut = False
    try:
        old = topology.primary
        assert old is not None and old.client is not None
        planes = planes_over(old, topology.url, {"PLAB_DURABILITY": durability})
        load = warmed_load(planes)
        acked_before = load.acked_count()
        firewall("-A", ADDRESSES["primary"], others)
        cut, cut_at = True, time.monotonic()  # answers before this count as "before"
        new_port = topology.wait_for_new_master(old.port, PARTITION_SECONDS)
        promoted_after = time.monotonic() - cut_at if new_port else None
        time.sleep(max(0.0, PARTITION_SECONDS - (time.monotonic() - cut_at)))
        firewall("-D", ADDRESSES["primary"], others)
        cut, healed_at = False, time.monotonic()
        # Writes acknowledged after the old primary became a replica went to the new one.
        back = rejoined = None
        deadline = healed_at + HEAL_LIMIT
        while back is None and time.monotonic() < deadline:
            time.sleep(0.1)
            if rejoined is None and old.client.info("replication").get("role") == "slave":
                rejoined = time.monotonic()
            if rejoined is not None:
                back = load.first_write_back(rejoined)
        time.sleep(AFTER_HEAL)
        load.halt()
        final_port = topology.master_port()
        roles = {
            n.host: {
                k: v
                for k, v in n.client.info("replication").items()
                if k in ("role", "connected_slaves", "min_slaves_good_slaves", "master_link_status")
                or k.startswith("slave")
            }
            for n in topology.data_nodes()
        }
        assert final_port is not None and final_port != old.port, (final_port, old.port, roles)
        final = topology.node_at(final_port).client
        assert final is not None
        lost = load.lost_on(final)
        acked_index = {key: n for n, (key, _v) in enumerate(load.acked)}

        def window(a) -> str:
            if a.started < cut_at:
                return "before"
            return "partitioned" if a.started < healed_at else "healed"

        return {
            "durability": durability,
            "partition_s": PARTITION_SECONDS,
            "promoted_after_s": round(promoted_after, 2) if promoted_after else None,
            "acked_before_partition": acked_before,
            "acked_sent_while_partitioned": sum(
                1
                for a in load.answers
                if a.kind == "write" and a.status < 300 and window(a) == "partitioned"
            ),
            "acked_total": len(load.acked),
            "lost_acked": len(lost),
            "lost_acked_before_partition": sum(1 for k in lost if acked_index[k] < acked_before),
            "writes_on_new_primary_after_heal_s": round(back.ended - healed_at, 2)
            if back
            else None,
            "roles_at_end": roles,
            "old_primary_a_replica_after_heal_s": round(rejoined - healed_at, 2)
            if rejoined
            else None,
            "answers": {
                w: dict(
                    collections.Counter(
                        f"{a.kind} {a.status}" for a in load.answers if window(a) == w
                    )
                )
                for w in ("before", "partitioned", "healed")
            },
            "refusals_after_heal": dict(
                collections.Counter(
                    f"{a.kind} {a.status} {message(a.body)}"
                    for a in load.answers
                    if a.status >= 400 and window(a) == "healed"
                ).most_common(4)
            ),
            "bad": [
                (a.kind, a.status, a.body)
                for a in load.answers
                if a.status not in (200, 201, 503, 404) or (a.status == 503 and not a.retry_after)
            ][:20],
        }
    finally:
        if cut:
            firewall("-D", ADDRESSES["primary"], others)
        if load is not None:
            load.halt()
        if planes is not None:
            close_planes(planes)
        topology.stop()


def run_in_namespace(durability: str, timeout: float = 85.0) -> dict:
    """This file under ``unshare --net`` (root in a new user namespace when not root)."""
    unshare = ["unshare", "--net"] + ([] if os.geteuid() == 0 else ["--map-root-user"])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "tests")])}
    done = subprocess.run(
        [*unshare, sys.executable, __file__, durability],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        cwd=ROOT,
    )
    for line in done.stdout.splitlines():
        if line.startswith("PARTITION "):
            return json.loads(line.removeprefix("PARTITION "))
    raise AssertionError(
        f"the partition run ended with {done.returncode} and no result:\n"
        f"{done.stdout[-2000:]}\n{done.stderr[-4000:]}"
    )


if __name__ == "__main__":
    print("PARTITION " + json.dumps(measure(sys.argv[1])), flush=True)
