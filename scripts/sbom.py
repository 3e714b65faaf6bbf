"""A CycloneDX 1.6 software bill of materials of an image's root filesystem: every Debian
package dpkg says is installed, and every Python distribution of the agent's environment.

    python3 scripts/sbom.py --root MOUNTED_ROOTFS --name observer --version 0.1.0 \\
        --arch arm64 [--python-env /opt/observer] > observer-0.1.0-arm64.cdx.json

scripts/image.sh runs it on each image it builds (the root from ``buildah mount``) and writes
the result beside the image, in .image/ (docs/deploy.md, "The image"). Read from the files
themselves, not from a tool inside the image: ``var/lib/dpkg/status`` (installed packages,
versions, architectures), each package's ``usr/share/doc/<package>/copyright`` where it is in
Debian's machine-readable format (its ``License:`` names), ``etc/os-release`` (the release, for
the package URLs), and each ``*.dist-info/METADATA`` under the environment's ``site-packages``
(name, version, license: ``License-Expression``, else ``License``, else the classifiers).

Package URLs per the purl specification: ``pkg:deb/debian/<name>@<version>?arch=<arch>&distro=
debian-<VERSION_ID>``, ``pkg:pypi/<normalized name>@<version>``. Standard library only: it runs
with whatever Python builds the image.
"""

from __future__ import annotations

import argparse
import datetime
import email.parser
import json
import os
import re
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

SPEC_VERSION = "1.6"
_MACHINE_READABLE = "https://www.debian.org/doc/packaging-manuals/copyright-format/1.0"


def _stanzas(text: str) -> Iterator[dict[str, str]]:
    """deb822 paragraphs (dpkg's status file): field -> value, continuation lines joined."""
    for block in re.split(r"\n\s*\n", text):
        fields: dict[str, str] = {}
        last = None
        for line in block.splitlines():
            if line[:1] in (" ", "\t") and last is not None:
                fields[last] += "\n" + line.strip()
            elif ":" in line:
                last, _, value = line.partition(":")
                fields[last] = value.strip()
        if fields:
            yield fields


def _debian_licenses(root: Path, package: str) -> list[str]:
    path = root / "usr" / "share" / "doc" / package / "copyright"
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return []
    if not text.startswith("Format:") or _MACHINE_READABLE not in text.splitlines()[0]:
        return []
    names = {line.split(":", 1)[1].strip() for line in text.splitlines()
             if line.startswith("License:") and line.split(":", 1)[1].strip()}
    return sorted(names)


def _os_release(root: Path) -> dict[str, str]:
    for path in (root / "etc" / "os-release", root / "usr" / "lib" / "os-release"):
        if path.exists():
            return {k: v.strip('"') for k, _, v in (line.partition("=") for line in
                                                    path.read_text().splitlines()) if v}
    return {}


def debian_components(root: Path) -> list[dict[str, Any]]:
    distro = f"debian-{_os_release(root).get('VERSION_ID', 'unknown')}"
    status = (root / "var" / "lib" / "dpkg" / "status").read_text(errors="replace")
    out = []
    for fields in _stanzas(status):
        if fields.get("Status", "").split()[-1:] != ["installed"]:
            continue
        name, version, arch = fields["Package"], fields["Version"], fields["Architecture"]
        purl = (f"pkg:deb/debian/{name}@{quote(version, safe='.-_~')}?arch={arch}"
                f"&distro={distro}")
        component: dict[str, Any] = {"type": "library", "bom-ref": purl, "name": name,
                                     "version": version, "purl": purl}
        if licenses := _debian_licenses(root, name):
            component["licenses"] = [{"license": {"name": n}} for n in licenses]
        if fields.get("Source"):
            component["properties"] = [{"name": "debian:source",
                                        "value": fields["Source"].split()[0]}]
        out.append(component)
    return sorted(out, key=lambda c: c["name"])


def _python_license(meta: Any) -> list[dict[str, Any]]:
    if expression := meta.get("License-Expression"):
        return [{"expression": expression.strip()}]
    text = (meta.get("License") or "").strip()
    if text and text != "UNKNOWN" and len(text) <= 100 and "\n" not in text:
        return [{"license": {"name": text}}]
    names = [c.split("::")[-1].strip() for c in meta.get_all("Classifier") or []
             if c.startswith("License ::") and c.count("::") >= 2]
    return [{"license": {"name": n}} for n in names]


def python_components(root: Path, environment: str) -> list[dict[str, Any]]:
    base = root / environment.lstrip("/")
    out = []
    for metadata in sorted(base.glob("lib/python3*/site-packages/*.dist-info/METADATA")):
        meta = email.parser.HeaderParser().parsestr(metadata.read_text(errors="replace"))
        name, version = meta["Name"], meta["Version"]
        purl = f"pkg:pypi/{re.sub(r'[-_.]+', '-', name).lower()}@{version}"
        component: dict[str, Any] = {"type": "library", "bom-ref": purl, "name": name,
                                     "version": version, "purl": purl}
        if licenses := _python_license(meta):
            component["licenses"] = licenses
        out.append(component)
    return out


def sbom(root: Path, *, name: str, version: str, arch: str, environment: str) -> dict[str, Any]:
    # SOURCE_DATE_EPOCH: a reproducible build's time; else now.
    epoch = os.environ.get("SOURCE_DATE_EPOCH")
    when = (datetime.datetime.fromtimestamp(int(epoch), datetime.UTC) if epoch
            else datetime.datetime.now(datetime.UTC))
    return {
        "bomFormat": "CycloneDX", "specVersion": SPEC_VERSION,
        "serialNumber": f"urn:uuid:{uuid.uuid4()}", "version": 1,
        "metadata": {
            "timestamp": when.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "tools": {"components": [{"type": "application", "name": "scripts/sbom.py",
                                      "description": "observer's image SBOM, from dpkg's "
                                                     "status and the environment's metadata"}]},
            "component": {"type": "container", "bom-ref": f"{name}:{version}-{arch}",
                          "name": name, "version": version,
                          "properties": [{"name": "oci:architecture", "value": arch}]}},
        "components": [*debian_components(root), *python_components(root, environment)],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", type=Path, required=True, help="the image's root filesystem")
    parser.add_argument("--name", required=True)
    parser.add_argument("--version", required=True)
    parser.add_argument("--arch", required=True, help="the image's architecture (amd64, arm64)")
    parser.add_argument("--python-env", default="/opt/observer",
                        help="the Python environment inside the root (default %(default)s)")
    args = parser.parse_args(argv)
    document = sbom(args.root, name=args.name, version=args.version, arch=args.arch,
                    environment=args.python_env)
    json.dump(document, sys.stdout, indent=1)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
