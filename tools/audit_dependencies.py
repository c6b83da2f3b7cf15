"""Check the installed packages against known security advisories.

With pip-audit installed and its advisory service (PyPI/OSV) reachable, every installed package is
checked and a known vulnerability fails the run. Offline (or with --offline), a built-in table of
the advisories that matter most here (the UI framework, the web stack, the image decoder, the
model loaders) is checked instead, and the output says what could not be checked.

    python tools/audit_dependencies.py [--offline] [--strict-network]

Exit status: 1 when a known advisory applies; 0 otherwise, including when the advisory service
could not be reached (unless --strict-network).
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import shutil
import subprocess
import sys
from dataclasses import dataclass

from packaging.version import InvalidVersion, Version


@dataclass(frozen=True)
class Advisory:
    package: str
    fixed_in: str  # first version without the problem
    ids: str


# Advisories named in the project's security research, by the version that fixed them.
KNOWN_ADVISORIES = (
    Advisory("gradio", "6.20.0", "CVE-2023-51449, CVE-2024-1561, CVE-2024-4940, CVE-2026-28414, "
                                 "CVE-2026-28416, GHSA-j36p-7w88-g82j, file=<url> SSRF (#13596)"),
    Advisory("starlette", "0.40.0", "GHSA-v5gw-mw7f-84px, GHSA-f96h-pmfr-66vw"),
    Advisory("starlette", "0.49.1", "CVE-2025-62727 (FileResponse Range)"),
    Advisory("fastapi", "0.65.2", "CVE-2021-32677 (JSON from text/plain)"),
    Advisory("python-multipart", "0.0.7", "CVE-2024-24762"),
    Advisory("torch", "2.10.0", "CVE-2025-32434, CVE-2026-24747 (weights_only unpickler)"),
    Advisory("pillow", "10.3.0", "CVE-2024-28219 and earlier decoder advisories"),
    Advisory("safetensors", "0.4.0", "header and offset validation"),
)


def installed_version(package: str) -> Version | None:
    try:
        return Version(importlib.metadata.version(package).split("+")[0])
    except (importlib.metadata.PackageNotFoundError, InvalidVersion):
        return None


def offline_findings() -> list[str]:
    findings = []
    for advisory in KNOWN_ADVISORIES:
        version = installed_version(advisory.package)
        if version is None:
            print(f"  {advisory.package} not installed")
            continue
        ok = version >= Version(advisory.fixed_in)
        print(f"  {advisory.package} {version}: {'ok' if ok else 'VULNERABLE'} (fixed in {advisory.fixed_in}: "
              f"{advisory.ids})")
        if not ok:
            findings.append(f"{advisory.package} {version} < {advisory.fixed_in} ({advisory.ids})")
    return findings


def run_pip_audit() -> tuple[str, list[str]]:
    """('ok'|'vulnerable'|'unavailable', details)."""
    command = [sys.executable, "-m", "pip_audit"] if _has_module("pip_audit") else (
        ["pip-audit"] if shutil.which("pip-audit") else None)
    if command is None:
        return "unavailable", ["pip-audit is not installed"]
    try:
        result = subprocess.run(command + ["--format", "json", "--progress-spinner", "off"],
                                capture_output=True, text=True, timeout=120)
    except subprocess.TimeoutExpired:
        return "unavailable", ["pip-audit timed out (advisory service unreachable?)"]
    try:
        report = json.loads(result.stdout)
    except json.JSONDecodeError:
        return "unavailable", [f"pip-audit could not reach its advisory service: {result.stderr.strip()[-300:]}"]
    found = [f"{dep['name']} {dep['version']}: {', '.join(v['id'] for v in dep.get('vulns', []))}"
             for dep in report.get("dependencies", []) if dep.get("vulns")]
    return ("vulnerable" if found else "ok"), found


def _has_module(name: str) -> bool:
    import importlib.util
    return importlib.util.find_spec(name) is not None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--offline", action="store_true", help="only the built-in advisory table")
    parser.add_argument("--strict-network", action="store_true",
                        help="fail when the advisory service cannot be reached")
    args = parser.parse_args(argv)

    print("Built-in advisory table:")
    findings = offline_findings()
    if args.offline:
        state, details = "unavailable", ["--offline given"]
    else:
        state, details = run_pip_audit()
    if state == "unavailable":
        print("Full advisory database: not checked (" + "; ".join(details) + "). Packages outside the "
              "built-in table, and advisories newer than it, were not checked.")
    elif state == "vulnerable":
        findings += details
    else:
        print("pip-audit: no known vulnerabilities in the installed packages")
    if findings:
        print("Known advisories apply:\n  " + "\n  ".join(findings))
        return 1
    return 2 if (state == "unavailable" and args.strict_network) else 0


if __name__ == "__main__":
    sys.exit(main())
