"""Network namespaces for tests: made per test, always removed (see the ``netns`` fixture)."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "dataplane"


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
