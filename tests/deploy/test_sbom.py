"""The image's SBOM (scripts/sbom.py), made of this machine's own root and the project's
virtual environment — real dpkg status, real distribution metadata — and validated against the
CycloneDX 1.6 schema by the CycloneDX project's own validator; every package dpkg and
importlib.metadata know of is in it, at their versions. (scripts/image.sh makes the image's.)"""

from __future__ import annotations

import importlib.metadata
import json
import subprocess
import sys

from cyclonedx.schema import SchemaVersion
from cyclonedx.validation.json import JsonStrictValidator

from tests.conftest import REPO, require_tool


def test_the_sbom_lists_every_package_at_its_version_and_is_valid_cyclonedx() -> None:
    done = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "sbom.py"), "--root", "/", "--name", "observer",
         "--version", "0.1.0", "--arch", "amd64", "--python-env", sys.prefix],
        capture_output=True, text=True, timeout=120, check=True)
    assert JsonStrictValidator(SchemaVersion.V1_6).validate_str(done.stdout) is None
    document = json.loads(done.stdout)
    components = document["components"]
    refs = [c["bom-ref"] for c in components]
    assert len(refs) == len(set(refs))
    debs = {c["name"]: c for c in components if c["purl"].startswith("pkg:deb/debian/")}
    listed = subprocess.run([require_tool("dpkg-query"), "-W", "-f",
                             "${Package} ${Version} ${db:Status-Status}\\n"],
                            capture_output=True, text=True, timeout=60, check=True).stdout
    installed = {name: version for name, version, status in
                 (line.split() for line in listed.splitlines()) if status == "installed"}
    assert {name: c["version"] for name, c in debs.items()} == installed
    # Licences where Debian's copyright file is machine-readable (bash's is), not guessed
    # where it is not (python3's is free text).
    assert debs["bash"]["licenses"]
    assert "licenses" not in debs["python3"]
    pypi = {c["name"].lower(): c for c in components if c["purl"].startswith("pkg:pypi/")}
    for name in ("aiohttp", "prometheus_client", "structlog", "kubernetes_asyncio"):
        found = pypi.get(name) or pypi[name.replace("_", "-")]
        assert found["version"] == importlib.metadata.version(name)
        assert found["purl"] == f"pkg:pypi/{name.replace('_', '-')}@{found['version']}"
    assert document["metadata"]["component"]["properties"] == [
        {"name": "oci:architecture", "value": "amd64"}]
