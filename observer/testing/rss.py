"""How much memory this process holds (imports nothing of the agent's: a benchmark measuring
the agent's imports can import it first)."""

from __future__ import annotations

from pathlib import Path


def rss_mib() -> float:
    """This process's resident set size now, MiB (``VmRSS`` of /proc/self/status)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("/proc/self/status has no VmRSS")
