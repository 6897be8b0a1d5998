"""bench/report.py's bulk-write breakdown (the open finding of bench/levers.md): each
round's answers by status class and what redis held after it, from a round's kept
results; rounds measured before the breakdown was kept show nothing."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
report = importlib.import_module("report")


def bulk_round(rep: int, status: dict | None, used: int, audit: int) -> dict:
    return {
        "workload": "bulk-write",
        "rep": rep,
        "rps": 250.0 + rep,
        "status": status,
        "redis_after": {"used_memory": used, "maxmemory": 256 * 2**20, "audit_entries": audit},
    }


def test_each_bulk_write_round_shows_its_answers_and_redis_after_it():
    full = {"2xx": 14_980, "4xx": 0, "429": 0, "503": 297, "other": 0}
    runs = [
        bulk_round(0, full, 256 * 2**20, 1_034_201),
        bulk_round(1, {"2xx": 2_602}, 48 * 2**20, 185_901),
        {**bulk_round(2, full, 0, 0), "workload": "bulk-read"},
    ]
    lines = report.bulk_status_lines(runs)
    table = [line for line in lines if line.startswith("| ")]
    assert table[0] == (
        "| round | req/s | 2xx | 4xx | 429 | 503 | other | redis used MiB / maxmemory MiB "
        "| audit entries |"
    )
    assert table[1:] == [
        "| 1 | 250 | 14,980 | 0 | 0 | 297 | 0 | 256 / 256 | 1,034,201 |",
        "| 2 | 251 | 2,602 | 0 | 0 | 0 | 0 | 48 / 256 | 185,901 |",
    ]


def test_rounds_without_a_breakdown_show_none():
    assert report.bulk_status_lines([bulk_round(0, None, 1, 1)]) == []
