"""Scan one TLS endpoint with sslyze's Python API and print the findings as JSON.

Run by tests/test_tls.py with the interpreter of the sslyze virtualenv
(``make tls-venv``): sslyze pins an older ``cryptography`` than the service
does, so it cannot share the service's environment.

Usage: python tests/tls_scan.py HOST PORT
"""

from __future__ import annotations

import json
import sys

from sslyze import (
    ScanCommand,
    Scanner,
    ServerNetworkConfiguration,
    ServerNetworkLocation,
    ServerScanRequest,
    ServerScanStatusEnum,
)
from sslyze.mozilla_tls_profile.tls_config_checker import (
    SCAN_COMMANDS_NEEDED_BY_MOZILLA_CHECKER,
    MozillaTlsConfiguration,
    ServerNotCompliantWithTlsConfiguration,
    TlsConfigurationEnum,
    check_server_against_tls_configuration,
)

PROTOCOLS = {
    "ssl_2_0": ScanCommand.SSL_2_0_CIPHER_SUITES,
    "ssl_3_0": ScanCommand.SSL_3_0_CIPHER_SUITES,
    "tls_1_0": ScanCommand.TLS_1_0_CIPHER_SUITES,
    "tls_1_1": ScanCommand.TLS_1_1_CIPHER_SUITES,
    "tls_1_2": ScanCommand.TLS_1_2_CIPHER_SUITES,
    "tls_1_3": ScanCommand.TLS_1_3_CIPHER_SUITES,
}


def scan(host: str, port: int) -> dict:
    request = ServerScanRequest(
        server_location=ServerNetworkLocation(hostname=host, port=port, ip_address=host),
        network_configuration=ServerNetworkConfiguration(tls_server_name_indication="localhost"),
        scan_commands={*SCAN_COMMANDS_NEEDED_BY_MOZILLA_CHECKER, ScanCommand.HTTP_HEADERS},
    )
    scanner = Scanner()
    scanner.queue_scans([request])
    (result,) = list(scanner.get_results())
    if result.scan_status != ServerScanStatusEnum.COMPLETED:
        return {"error": f"scan did not complete: {result.connectivity_error_trace}"}
    findings: dict = {"accepted": {}, "errors": []}
    for name, command in PROTOCOLS.items():
        attempt = getattr(result.scan_result, command.value)
        if attempt.result is None:
            findings["errors"].append(f"{name}: {attempt.error_reason}")
            continue
        findings["accepted"][name] = [
            c.cipher_suite.name for c in attempt.result.accepted_cipher_suites
        ]
    curves = result.scan_result.elliptic_curves.result
    findings["curves"] = [c.name for c in curves.supported_curves] if curves else None
    headers = result.scan_result.http_headers.result
    hsts = headers.strict_transport_security_header if headers else None
    findings["hsts"] = (
        None
        if hsts is None
        else {
            "max_age": hsts.max_age,
            "include_subdomains": hsts.include_subdomains,
            "preload": hsts.preload,
        }
    )
    vulns = result.scan_result
    renegotiation = vulns.session_renegotiation.result
    findings["vulnerable"] = {
        "heartbleed": vulns.heartbleed.result.is_vulnerable_to_heartbleed,
        "ccs_injection": vulns.openssl_ccs_injection.result.is_vulnerable_to_ccs_injection,
        "robot": vulns.robot.result.robot_result.name,
        "compression": vulns.tls_compression.result.supports_compression,
        "insecure_renegotiation": not renegotiation.supports_secure_renegotiation,
        "client_renegotiation_dos": renegotiation.is_vulnerable_to_client_renegotiation_dos,
        "no_fallback_scsv": not vulns.tls_fallback_scsv.result.supports_fallback_scsv,
    }
    intermediate = MozillaTlsConfiguration.get(TlsConfigurationEnum.MOZILLA_INTERMEDIATE)
    findings["mozilla_intermediate_ciphers"] = sorted(intermediate.ciphers.iana)
    findings["mozilla_intermediate_ciphersuites"] = sorted(intermediate.ciphersuites)
    try:
        check_server_against_tls_configuration(result, intermediate)
        findings["mozilla_intermediate_issues"] = {}
    except ServerNotCompliantWithTlsConfiguration as exc:
        findings["mozilla_intermediate_issues"] = exc.issues
    return findings


if __name__ == "__main__":
    print(json.dumps(scan(sys.argv[1], int(sys.argv[2])), indent=2, default=str))
