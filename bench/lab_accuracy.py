"""Benchmark (issue 5): how close the agents' measurements are to the lab's ground truth.

    sudo .venv/bin/python -m bench.lab_accuracy [--deletions 200] [--nodes 3]

For each dataplane (nftables, iptables with the nf_tables backend, iptables-legacy), one lab
run; per stage the p50/p99 of |measured - true|, and the unsafe-termination confusion, on the
pod's node and on the others. Targets: within 25 ms in the nf_tables-based modes, within the
poll interval + 25 ms for iptables-legacy; zero false positives and misses.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
from typing import Any

from observer import logs
from observer.clock import SystemClock
from observer.export.metrics import configure_exposition
from observer.lab.config import LabConfig
from observer.lab.results import compare
from observer.lab.scenario import Lab


async def one(dataplane: str, deletions: int, nodes: int) -> dict[str, Any]:
    settings = LabConfig(nodes=nodes, deletions=deletions, dataplane=dataplane)  # type: ignore[arg-type]
    run = await Lab(settings, clock=SystemClock()).run()
    measured = [(n.name, e) for n in run.nodes if n.agent for e in n.agent.tracker.finished]
    result = compare(measured, run.truth.episodes, [n.name for n in run.nodes])
    precision = [p for e in run.truth.episodes.values() for p in e.dataplane_precision.values()]
    return {"dataplane": run.dataplane, "elapsed_seconds": round(run.elapsed, 1),
            "episodes": result["truth"]["episodes"], "errors": result["errors"],
            "unsafe": result["unsafe"], "abandoned": result["measured"]["abandoned"],
            "poll_interval": settings.poll_interval,
            "truth_dataplane_precision_p99": round(sorted(precision)[int(len(precision) * .99)
                                                                      - 1], 4)
            if precision else None,
            "recommendation": result["recommendation"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--deletions", type=int, default=200)
    parser.add_argument("--nodes", type=int, default=3)
    parser.add_argument("--dataplanes", nargs="+", action="extend",
                        help="default: nftables iptables iptables-legacy")
    args = parser.parse_args()
    logs.configure("json", stream=io.StringIO())
    configure_exposition()
    for dataplane in args.dataplanes or ["nftables", "iptables", "iptables-legacy"]:
        print(json.dumps(asyncio.run(one(dataplane, args.deletions, args.nodes))), flush=True)


if __name__ == "__main__":
    main()
