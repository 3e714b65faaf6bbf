"""Network namespaces for dataplane tests: made per test, always removed."""

from __future__ import annotations

import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import require_root, require_tool

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "dataplane"


@dataclass(frozen=True)
class Netns:
    name: str

    def run(self, *argv: str, stdin: str | None = None) -> str:
        result = subprocess.run(["ip", "netns", "exec", self.name, *argv], input=stdin,
                                capture_output=True, text=True, timeout=30, check=False)
        if result.returncode != 0:
            raise AssertionError(f"{argv[0]} failed: {result.stderr.strip()}")
        return result.stdout

    def restore(self, backend: str, rules: str, *, noflush: bool = False) -> None:
        argv = [f"iptables-{backend}-restore"] + (["--noflush"] if noflush else [])
        self.run(*argv, stdin=rules)

    def nft(self, script: str) -> None:
        self.run("nft", "-f", "-", stdin=script)


@pytest.fixture
def netns() -> Iterator[Netns]:
    require_root()
    for tool in ("ip", "nft", "iptables-legacy-restore", "iptables-nft-restore"):
        require_tool(tool)
    name = f"obs-test-{uuid.uuid4().hex[:8]}"
    subprocess.run(["ip", "netns", "add", name], check=True, timeout=30)
    try:
        yield Netns(name)
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False, timeout=30)
