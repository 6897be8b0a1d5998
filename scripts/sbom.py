#!/usr/bin/env python3
"""CycloneDX SBOMs for a container image: its Debian packages and its Python packages.

- OS packages: the image's dpkg database (``/var/lib/dpkg/status``, read with
  ``docker run --rm --entrypoint cat IMAGE``) turned into CycloneDX 1.6
  components with purls ``pkg:deb/<distro>/<name>@<version>?arch=<arch>``
  (written here: cyclonedx-bom has no dpkg reader).
- Python packages: every distribution the image's ``python3`` sees
  (``importlib.metadata``; the project's images have no pip), pinned as
  ``name==version`` and given to ``cyclonedx-py requirements`` (cyclonedx-bom).

Usage:
  sbom.py image IMAGE --out DIR [--docker DOCKER]   -> DIR/<image>.os.cdx.json,
                                                        DIR/<image>.python.cdx.json,
                                                        DIR/<image>.python.txt
  sbom.py dpkg STATUS_FILE --out FILE [--name NAME]  (a dpkg status file on disk)

``make e2e`` runs the first for every image it builds (var/e2e/sbom/).
"""

from __future__ import annotations

import argparse
import datetime
import json
import re
import shutil
import subprocess  # runs docker and cyclonedx-py only  # nosec B404
import sys
import uuid
from pathlib import Path

from packageurl import PackageURL

SPEC_VERSION = "1.6"
TOOL = {"type": "application", "name": "productionlab scripts/sbom.py", "version": "1"}

# importlib.metadata, not pip: the project's runtime images uninstall pip.
FREEZE = (
    "import importlib.metadata as m\n"
    "seen = set()\n"
    "for d in m.distributions():\n"
    "    name = d.metadata['Name']\n"
    "    if name and name.lower() not in seen:\n"
    "        seen.add(name.lower())\n"
    "        print(f'{name}=={d.version}')\n"
)


class SbomError(Exception):
    pass


def parse_dpkg_status(text: str) -> list[dict[str, str]]:
    """The installed packages of a dpkg status file (RFC 822 paragraphs)."""
    packages = []
    for paragraph in re.split(r"\n\s*\n", text):
        fields: dict[str, str] = {}
        last = None
        for line in paragraph.splitlines():
            if line[:1] in (" ", "\t") and last:
                continue  # continuation lines (descriptions, conffiles)
            name, sep, value = line.partition(":")
            if sep:
                last = name.strip()
                fields[last] = value.strip()
        status = fields.get("Status", "").split()
        if fields.get("Package") and fields.get("Version") and status[-1:] == ["installed"]:
            packages.append(fields)
    return packages


def os_release_id(text: str) -> str:
    """``ID`` of an os-release file (the purl namespace), default ``debian``."""
    for line in text.splitlines():
        if line.startswith("ID="):
            return line[3:].strip().strip('"') or "debian"
    return "debian"


def dpkg_bom(status_text: str, subject: str, distro: str = "debian") -> dict:
    """A CycloneDX document with one component per installed Debian package."""
    components = []
    for package in sorted(parse_dpkg_status(status_text), key=lambda p: p["Package"]):
        name, version = package["Package"], package["Version"]
        arch = package.get("Architecture", "")
        purl = PackageURL(
            type="deb",
            namespace=distro,
            name=name,
            version=version,
            qualifiers={"arch": arch} if arch else None,
        ).to_string()
        component: dict = {
            "type": "library",
            "bom-ref": purl,
            "name": name,
            "version": version,
            "purl": purl,
        }
        if package.get("Maintainer"):
            component["publisher"] = package["Maintainer"]
        properties = []
        source = package.get("Source")
        if source:
            properties.append({"name": "dpkg:source", "value": source})
        if arch:
            properties.append({"name": "dpkg:architecture", "value": arch})
        if properties:
            component["properties"] = properties
        components.append(component)
    return {
        "bomFormat": "CycloneDX",
        "specVersion": SPEC_VERSION,
        "serialNumber": f"urn:uuid:{uuid.uuid4()}",
        "version": 1,
        "metadata": {
            "timestamp": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "tools": {"components": [TOOL]},
            "component": {"type": "container", "bom-ref": f"image:{subject}", "name": subject},
        },
        "components": components,
    }


def validate(document: dict) -> None:
    """Raise SbomError unless the document is valid against the CycloneDX JSON schema."""
    from cyclonedx.schema import SchemaVersion
    from cyclonedx.validation.json import JsonStrictValidator

    error = JsonStrictValidator(SchemaVersion.from_version(SPEC_VERSION)).validate_str(
        json.dumps(document)
    )
    if error is not None:
        raise SbomError(f"not a valid CycloneDX {SPEC_VERSION} document: {error}")


def write_json(path: Path, document: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document, indent=2) + "\n")


def cyclonedx_py() -> str:
    beside = Path(sys.executable).parent / "cyclonedx-py"
    found = str(beside) if beside.exists() else shutil.which("cyclonedx-py")
    if not found:
        raise SbomError("cyclonedx-py is not installed (pip install -r requirements-dev.txt)")
    return found


def python_bom(requirements: Path, out: Path) -> None:
    result = subprocess.run(  # noqa: S603 - fixed argv  # nosec B603
        [
            cyclonedx_py(),
            "requirements",
            "--sv",
            SPEC_VERSION,
            "--of",
            "JSON",
            "--validate",
            "--mc-type",
            "application",
            "-o",
            str(out),
            str(requirements),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    if result.returncode != 0:
        raise SbomError(f"cyclonedx-py failed: {(result.stderr or result.stdout)[-500:]}")


def _docker(
    docker: list[str], image: str, entrypoint: str, *args: str, env: dict | None = None
) -> subprocess.CompletedProcess:
    return subprocess.run(  # noqa: S603 - docker run of the image being described  # nosec B603
        [*docker, "run", "--rm", "--network", "none", "--entrypoint", entrypoint, image, *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def safe_name(image: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", image)


def image_sboms(
    image: str, out_dir: Path, docker: list[str], env: dict | None = None
) -> list[Path]:
    """Both SBOMs of one image; the Python one only when the image has a python3."""
    written = []
    out_dir.mkdir(parents=True, exist_ok=True)
    status = _docker(docker, image, "cat", "/var/lib/dpkg/status", env=env)
    if status.returncode != 0:
        raise SbomError(f"{image}: no dpkg database ({status.stderr.strip()[:200]})")
    release = _docker(docker, image, "cat", "/etc/os-release", env=env)
    distro = os_release_id(release.stdout) if release.returncode == 0 else "debian"
    document = dpkg_bom(status.stdout, image, distro)
    validate(document)
    path = out_dir / f"{safe_name(image)}.os.cdx.json"
    write_json(path, document)
    written.append(path)
    for python in ("python", "python3"):
        freeze = _docker(docker, image, python, "-c", FREEZE, env=env)
        if freeze.returncode == 0:
            break
    else:
        print(f"sbom: {image}: no python in the image; no Python SBOM", file=sys.stderr)
        return written
    requirements = out_dir / f"{safe_name(image)}.python.txt"
    requirements.write_text("".join(sorted(f"{line}\n" for line in freeze.stdout.splitlines())))
    path = out_dir / f"{safe_name(image)}.python.cdx.json"
    python_bom(requirements, path)
    written += [requirements, path]
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    image = commands.add_parser("image")
    image.add_argument("image")
    image.add_argument("--out", required=True)
    image.add_argument("--docker", default="docker", help="the docker command (may have options)")
    dpkg = commands.add_parser("dpkg")
    dpkg.add_argument("status")
    dpkg.add_argument("--out", required=True)
    dpkg.add_argument("--name", default="host")
    dpkg.add_argument("--distro", default="debian")
    args = parser.parse_args(argv)
    try:
        if args.command == "image":
            for path in image_sboms(args.image, Path(args.out), args.docker.split()):
                print(path)
        else:
            document = dpkg_bom(Path(args.status).read_text(), args.name, args.distro)
            validate(document)
            write_json(Path(args.out), document)
            print(args.out)
    except (SbomError, OSError) as exc:
        print(f"sbom: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
