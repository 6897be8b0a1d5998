"""monitoring/alerts.yml: promtool checks the rules and runs the unit tests in
monitoring/alerts_test.yml (each alert fed the series that must fire it and the
series that must not). promtool comes from Debian's ``prometheus`` package;
a missing promtool is a failure, never a skip."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

MONITORING = Path(__file__).resolve().parent.parent / "monitoring"


def promtool() -> str:
    found = shutil.which("promtool")
    assert found, "promtool is missing: apt-get install prometheus (make test does it as root)"
    return found


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [promtool(), *args], cwd=MONITORING, capture_output=True, text=True, timeout=300
    )


def test_rules_are_valid():
    result = run("check", "rules", "alerts.yml")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 8 rules found" in result.stdout + result.stderr


def test_every_alert_fires_on_its_series_and_only_on_them():
    result = run("test", "rules", "alerts_test.yml")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout + result.stderr


def test_every_alert_has_a_unit_test():
    import yaml

    rules = yaml.safe_load((MONITORING / "alerts.yml").read_text())
    names = {r["alert"] for g in rules["groups"] for r in g["rules"]}
    tests = yaml.safe_load((MONITORING / "alerts_test.yml").read_text())["tests"]
    tested = {
        case["alertname"] for t in tests for case in t["alert_rule_test"] if case["exp_alerts"]
    }
    assert names == tested


def test_a_broken_threshold_is_caught(tmp_path):
    """The unit tests can fail: a threshold moved 10x makes promtool report it."""
    shutil.copy(MONITORING / "alerts_test.yml", tmp_path)
    text = (MONITORING / "alerts.yml").read_text()
    broken = text.replace(
        "rate(plab_auth_failures_total[5m])) > 1", "rate(plab_auth_failures_total[5m])) > 10"
    )
    assert broken != text
    (tmp_path / "alerts.yml").write_text(broken)
    result = subprocess.run(
        [promtool(), "test", "rules", "alerts_test.yml"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode != 0 and "PlabFailedLoginsHigh" in result.stdout + result.stderr
