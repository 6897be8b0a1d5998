#!/usr/bin/env python3
"""``make scan``: a vulnerability scan of the pinned requirements and the image
SBOMs, failing loudly unless everything was really checked.

- Python: scripts/audit_deps.py (pip-audit) on the given requirements files and
  on every ``*.python.txt`` (an image's pinned packages) in the SBOM dir.
- OS packages: every ``*.os.cdx.json`` in the SBOM dir, with the first scanner
  found on PATH: grype, trivy or osv-scanner. With none, or when the scanner
  cannot load its vulnerability database, that part is UNVERIFIED.

Exit codes, as audit-deps:
  0  everything checked, no known vulnerability
  1  known vulnerabilities (listed)
  2  UNVERIFIED: something could not be checked (no scanner, no database,
     service unreachable, or no image SBOMs: run `make e2e` first)

Usage: scan.py [--sbom-dir DIR] [REQUIREMENTS_FILE...]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess  # runs the scanners only  # nosec B404
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
CLEAN, VULNERABLE, UNVERIFIED = 0, 1, 2


def _run(argv: list[str], timeout: float = 1800) -> subprocess.CompletedProcess:
    return subprocess.run(  # noqa: S603 - fixed argv  # nosec B603
        argv, capture_output=True, text=True, timeout=timeout, check=False
    )


def python_part(files: list[Path]) -> int:
    if not files:
        return CLEAN
    result = subprocess.run(  # noqa: S603 - fixed argv  # nosec B603
        [sys.executable, str(HERE / "audit_deps.py"), *map(str, files)],
        timeout=1800,
        check=False,
    )
    return result.returncode if result.returncode in (CLEAN, VULNERABLE, UNVERIFIED) else UNVERIFIED


def _grype(binary: str, sbom: Path) -> tuple[int, str]:
    result = _run([binary, f"sbom:{sbom}", "-o", "json", "--quiet"])
    if result.returncode != 0:
        return UNVERIFIED, f"grype could not scan ({result.stderr.strip()[-200:]})"
    matches = json.loads(result.stdout).get("matches", [])
    found = sorted(
        {
            f"{m['artifact']['name']} {m['artifact']['version']}: {m['vulnerability']['id']}"
            for m in matches
        }
    )
    return (VULNERABLE if found else CLEAN), "; ".join(found[:50]) or "no known vulnerabilities"


def _trivy(binary: str, sbom: Path) -> tuple[int, str]:
    result = _run([binary, "sbom", "--quiet", "--format", "json", str(sbom)])
    if result.returncode != 0:
        return UNVERIFIED, f"trivy could not scan ({result.stderr.strip()[-200:]})"
    found = sorted(
        {
            f"{v['PkgName']} {v['InstalledVersion']}: {v['VulnerabilityID']}"
            for r in json.loads(result.stdout).get("Results") or []
            for v in r.get("Vulnerabilities") or []
        }
    )
    return (VULNERABLE if found else CLEAN), "; ".join(found[:50]) or "no known vulnerabilities"


def _osv(binary: str, sbom: Path) -> tuple[int, str]:
    result = _run([binary, "--sbom", str(sbom)])
    if result.returncode == 0:
        return CLEAN, "no known vulnerabilities"
    if result.returncode == 1:
        return VULNERABLE, result.stdout.strip()[-2000:]
    return UNVERIFIED, f"osv-scanner could not scan ({result.stderr.strip()[-200:]})"


SCANNERS = (("grype", _grype), ("trivy", _trivy), ("osv-scanner", _osv))


def os_part(sboms: list[Path]) -> int:
    if not sboms:
        print("scan: OS packages: no image SBOMs (*.os.cdx.json); run `make e2e` first")
        return UNVERIFIED
    found = [(name, scanner, shutil.which(name)) for name, scanner in SCANNERS]
    found = [entry for entry in found if entry[2]]
    if not found:
        print(
            "scan: OS packages: no scanner with a vulnerability database on this machine "
            f"(looked for {', '.join(n for n, _ in SCANNERS)}); {len(sboms)} SBOM(s) not checked"
        )
        return UNVERIFIED
    name, scanner, binary = found[0]
    worst = CLEAN
    for sbom in sboms:
        try:
            code, text = scanner(binary, sbom)
        except (OSError, ValueError, KeyError, subprocess.TimeoutExpired) as exc:
            code, text = UNVERIFIED, f"{name} failed: {type(exc).__name__}: {exc}"
        print(f"scan: {sbom.name} ({name}): {text}")
        worst = combine([worst, code])
    return worst


def combine(codes: list[int]) -> int:
    if VULNERABLE in codes:
        return VULNERABLE
    return UNVERIFIED if UNVERIFIED in codes else CLEAN


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sbom-dir", default="var/e2e/sbom")
    parser.add_argument("requirements", nargs="*")
    args = parser.parse_args(argv)
    sbom_dir = Path(args.sbom_dir)
    found = sorted(sbom_dir.glob("*.python.txt")) if sbom_dir.is_dir() else []
    sboms = sorted(sbom_dir.glob("*.os.cdx.json")) if sbom_dir.is_dir() else []
    code = combine([python_part([*map(Path, args.requirements), *found]), os_part(sboms)])
    if code == UNVERIFIED:
        print("#" * 78)
        print("# scan: UNVERIFIED - some packages could not be checked against a            #")
        print("# vulnerability database (see above). This is NOT a clean scan.              #")
        print("#" * 78)
    elif code == VULNERABLE:
        print("scan: KNOWN VULNERABILITIES (see above)")
    else:
        print("scan: every package checked, no known vulnerabilities")
    return code


if __name__ == "__main__":
    raise SystemExit(main())
