"""TLS at the edge, scanned by sslyze against Mozilla's intermediate profile.

The local certificate is self-signed, so sslyze's trust check (certificate
path validation) fails by design; every other finding must be clean: no
SSL 2/3 or TLS 1.0/1.1, only the profile's cipher suites, no known TLS
vulnerability, HSTS sent. See docs/RELIABILITY.md.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
# Issues that come only from the certificate being a local self-signed one.
SELF_SIGNED_ONLY = {"certificate_path_validation"}


def sslyze_python() -> str:
    """The interpreter of the sslyze virtualenv (``make tls-venv``): sslyze pins an
    older ``cryptography`` than the service, so it lives in its own environment."""
    candidates = [
        os.environ.get("PLAB_SSLYZE_PYTHON", ""),
        str(HERE.parent / ".venv-tls" / "bin" / "python"),
    ]
    for candidate in candidates:
        if candidate and Path(candidate).exists():
            return candidate
    pytest.fail(
        "sslyze's virtualenv is missing: run `make tls-venv` (or set PLAB_SSLYZE_PYTHON)",
        pytrace=False,
    )


@pytest.fixture(scope="module")
def findings(stack) -> dict:
    result = subprocess.run(
        [
            sslyze_python(),
            str(HERE / "tls_scan.py"),
            stack.config.bind,
            str(stack.config.https_port),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    data = json.loads(result.stdout)
    assert "error" not in data, data
    print(f"\nFIGURES tls: {json.dumps(data, sort_keys=True)}")
    directory = os.environ.get("PLAB_FIGURES_DIR")
    if directory:
        Path(directory).mkdir(parents=True, exist_ok=True)
        (Path(directory) / "tls.json").write_text(json.dumps(data, indent=2))
    return data


def test_every_protocol_was_scanned(findings):
    assert findings["errors"] == []
    assert set(findings["accepted"]) == {
        "ssl_2_0",
        "ssl_3_0",
        "tls_1_0",
        "tls_1_1",
        "tls_1_2",
        "tls_1_3",
    }


@pytest.mark.parametrize("protocol", ["ssl_2_0", "ssl_3_0", "tls_1_0", "tls_1_1"])
def test_no_legacy_protocol_is_accepted(findings, protocol):
    assert findings["accepted"][protocol] == []


def test_only_the_intermediate_profiles_cipher_suites(findings):
    assert findings["accepted"]["tls_1_2"], "TLS 1.2 must be offered (intermediate profile)"
    assert findings["accepted"]["tls_1_3"], "TLS 1.3 must be offered"
    assert set(findings["accepted"]["tls_1_2"]) <= set(findings["mozilla_intermediate_ciphers"])
    assert set(findings["accepted"]["tls_1_3"]) <= set(
        findings["mozilla_intermediate_ciphersuites"]
    )
    weak = ("CBC", "RC4", "3DES", "DES", "NULL", "EXPORT", "anon", "MD5", "_SHA ")
    offered = findings["accepted"]["tls_1_2"] + findings["accepted"]["tls_1_3"]
    assert not [c for c in offered if any(w in c + " " for w in weak)]


def test_compliant_with_mozilla_intermediate_except_the_self_signed_trust(findings):
    issues = findings["mozilla_intermediate_issues"]
    assert set(issues) <= SELF_SIGNED_ONLY, issues


def test_no_known_tls_vulnerability(findings):
    vulnerable = findings["vulnerable"]
    assert vulnerable["robot"].startswith("NOT_VULNERABLE")
    assert not any(v for k, v in vulnerable.items() if k != "robot"), vulnerable


def test_hsts_is_sent_for_two_years(findings):
    assert findings["hsts"] is not None
    assert findings["hsts"]["max_age"] >= 63072000
    assert findings["hsts"]["include_subdomains"] is True
