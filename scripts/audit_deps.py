#!/usr/bin/env python3
"""pip-audit on the pinned requirements, failing loudly unless every package
was really checked.

pip-audit exits 0 and prints "No known vulnerabilities found" even when its
vulnerability service could not be reached and every package was skipped
("Dependency not found on PyPI and could not be audited"). That is not a clean
result, so this wrapper reads pip-audit's JSON and exits:

  0  every pinned package was checked and none has a known vulnerability
  1  known vulnerabilities (listed)
  2  UNVERIFIED: some or all packages could not be checked (service unreachable)

Usage: audit_deps.py REQUIREMENTS_FILE...   (PIP_AUDIT_SERVICE=pypi|osv)
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess  # runs pip-audit only  # nosec B404
import sys
from pathlib import Path


def pip_audit_binary() -> str:
    beside = Path(sys.executable).parent / "pip-audit"
    found = str(beside) if beside.exists() else shutil.which("pip-audit")
    if not found:
        sys.exit("audit-deps: pip-audit is not installed (pip install -r requirements-dev.txt)")
    return found


def audit(requirements: str, service: str) -> dict:
    argv = [
        pip_audit_binary(),
        "-r",
        requirements,
        "--no-deps",
        "--disable-pip",
        "--progress-spinner",
        "off",
        "--format",
        "json",
        "--vulnerability-service",
        service,
    ]
    result = subprocess.run(  # noqa: S603 - fixed argv  # nosec B603
        argv, capture_output=True, text=True, timeout=600, check=False
    )
    try:
        return json.loads(result.stdout)
    except json.JSONDecodeError:
        return {"error": (result.stderr or result.stdout)[-2000:], "dependencies": []}


def main(files: list[str]) -> int:
    service = os.environ.get("PIP_AUDIT_SERVICE", "pypi")
    checked, vulnerable, skipped, errors = 0, [], [], []
    for requirements in files:
        report = audit(requirements, service)
        if "error" in report:
            errors.append(f"{requirements}: {report['error']}")
        for dep in report.get("dependencies", []):
            label = f"{dep['name']} {dep.get('version', '')}".strip()
            if dep.get("skip_reason"):
                skipped.append(f"{requirements}: {dep['skip_reason']}")
                continue
            checked += 1
            for vuln in dep.get("vulns", []):
                fixes = ", ".join(vuln.get("fix_versions", [])) or "none"
                vulnerable.append(f"{label}: {vuln['id']} (fixed in {fixes})")
    print(f"audit-deps: service={service} checked={checked} skipped={len(skipped)}")
    if vulnerable:
        print("audit-deps: KNOWN VULNERABILITIES:", *vulnerable, sep="\n  ")
        return 1
    if errors or skipped or checked == 0:
        print(
            "audit-deps: UNVERIFIED - the vulnerability service could not be reached or "
            "could not check these packages. This is NOT a clean result:",
            *(errors + skipped),
            sep="\n  ",
            file=sys.stderr,
        )
        return 2
    print("audit-deps: every pinned package checked; no known vulnerabilities")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:] or ["requirements.txt"]))
