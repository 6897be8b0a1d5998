"""scripts/sbom.py: the OS-package SBOM writer on this machine's real dpkg
database (checked against dpkg-query and the CycloneDX schema), the Python
SBOM through cyclonedx-py, and `make scan`'s UNVERIFIED exit. ``make e2e``
writes the real image SBOMs (var/e2e/sbom/)."""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from packageurl import PackageURL

CHECKOUT = Path(__file__).resolve().parent.parent
STATUS = Path("/var/lib/dpkg/status")


def load(name: str):
    spec = importlib.util.spec_from_file_location(name, CHECKOUT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


sbom = load("sbom")


def snapshot(tmp: Path) -> Path:
    """A copy of the dpkg database, so both readers see the same one even if a
    package is installed on this machine meanwhile."""
    admin = tmp / "dpkg"
    for sub in ("updates", "info"):
        (admin / sub).mkdir(parents=True)
    shutil.copy(STATUS, admin / "status")
    return admin


def installed(admin: Path) -> set[tuple[str, str, str]]:
    dpkg_query = shutil.which("dpkg-query")
    assert dpkg_query, "dpkg-query is required (this is a Debian machine)"
    out = subprocess.run(
        [
            dpkg_query,
            f"--admindir={admin}",
            "-W",
            "-f",
            "${db:Status-Abbrev}\t${Package}\t${Version}\t${Architecture}\n",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return {
        tuple(line.split("\t")[1:])
        for line in out.splitlines()
        if line.split("\t")[0].strip() in ("ii", "hi")
    }


def test_os_sbom_of_the_real_dpkg_database(tmp_path):
    admin = snapshot(tmp_path)
    out = tmp_path / "host.os.cdx.json"
    result = subprocess.run(
        [
            sys.executable,
            str(CHECKOUT / "scripts" / "sbom.py"),
            "dpkg",
            str(admin / "status"),  # the snapshot of the real database
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    document = json.loads(out.read_text())
    sbom.validate(document)  # the CycloneDX 1.6 JSON schema, strictly
    assert document["bomFormat"] == "CycloneDX" and document["specVersion"] == "1.6"
    assert document["serialNumber"].startswith("urn:uuid:")
    assert document["metadata"]["component"]["type"] == "container"
    components = document["components"]
    assert {(c["name"], c["version"], c["properties"][-1]["value"]) for c in components} == (
        installed(admin)
    )
    refs = [c["bom-ref"] for c in components]
    assert len(refs) == len(set(refs))
    for component in components:
        purl = PackageURL.from_string(component["purl"])
        assert (purl.type, purl.namespace, purl.name, purl.version) == (
            "deb",
            "debian",
            component["name"],
            component["version"],
        )
        assert purl.qualifiers == {"arch": component["properties"][-1]["value"]}
    dpkg = next(c for c in components if c["name"] == "dpkg")
    assert (
        dpkg["purl"]
        == f"pkg:deb/debian/dpkg@{dpkg['version']}?arch={dpkg['properties'][-1]['value']}"
    )


def test_epoch_versions_are_encoded_in_the_purl():
    status = (
        "Package: demo\nStatus: install ok installed\nArchitecture: amd64\n"
        "Version: 1:2.3-4\nDescription: x\n continuation: not a field\n\n"
        "Package: gone\nStatus: deinstall ok config-files\nVersion: 1.0\n"
    )
    document = sbom.dpkg_bom(status, "test")
    sbom.validate(document)
    (component,) = document["components"]
    assert component["purl"] in (
        "pkg:deb/debian/demo@1:2.3-4?arch=amd64",
        "pkg:deb/debian/demo@1%3A2.3-4?arch=amd64",
    )
    assert component["version"] == "1:2.3-4"


def test_validation_refuses_a_broken_document():
    document = sbom.dpkg_bom(STATUS.read_text(), "host")
    document["components"][0]["type"] = "not-a-type"
    with pytest.raises(sbom.SbomError, match="not a valid CycloneDX"):
        sbom.validate(document)


def test_python_sbom_of_pinned_requirements(tmp_path):
    requirements = tmp_path / "image.python.txt"
    requirements.write_text("flask==3.1.2\nredis==6.4.0\n")
    out = tmp_path / "image.python.cdx.json"
    sbom.python_bom(requirements, out)
    document = json.loads(out.read_text())
    sbom.validate(document)
    purls = {c["purl"] for c in document["components"]}
    assert purls == {"pkg:pypi/flask@3.1.2", "pkg:pypi/redis@6.4.0"}


def test_make_scan_without_a_database_is_unverified_exit_2(tmp_path):
    """No OS-package scanner or database here: scan must say so, exit 2 (the Python
    side, pip-audit through audit_deps.py, is left out: its answer depends on the
    network)."""
    (tmp_path / "x.os.cdx.json").write_text(json.dumps(sbom.dpkg_bom(STATUS.read_text(), "x")))
    result = subprocess.run(
        [
            sys.executable,
            str(CHECKOUT / "scripts" / "scan.py"),
            "--sbom-dir",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=900,
        cwd=CHECKOUT,
    )
    assert result.returncode == 2, result.stdout + result.stderr
    assert "UNVERIFIED" in result.stdout
    assert "1 SBOM(s) not checked" in result.stdout
