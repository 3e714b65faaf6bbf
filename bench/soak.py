"""Soak: sustained churn through the lab (in-memory dataplane) — does anything grow?

    .venv/bin/python -m bench.soak                 # full profile: >= 100,000 agent episodes
    .venv/bin/python -m bench.soak --deletions 2000  # what the test suite runs (shorter)

Runs the lab with short delays so deletions follow each other quickly (the API server, the
EndpointSlice controller, kubelets and kube-proxies with the in-memory dataplane, a real agent
per node, all in this process) and samples, every second: the process's RSS, the episodes in
flight across the agents, open file descriptors and asyncio tasks. Episodes are counted from
the agents' own metrics: ``episodes_total{outcome}`` (measured, partial, abandoned, fallback)
and those in flight. Results: docs/reliability.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys

from observer import logs
from observer.export.metrics import configure_exposition
from observer.testing.soak import soak


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--deletions", type=int, default=50_000)
    parser.add_argument("--nodes", type=int, default=2)
    args = parser.parse_args()
    logs.configure("console", level=logging.WARNING, stream=sys.stderr)
    configure_exposition()
    result = asyncio.run(soak(args.deletions, args.nodes))
    json.dump(result.to_dict(), sys.stdout, indent=1)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
