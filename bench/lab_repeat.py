"""Benchmark (issue 30): the lab run over and over as a user's script would, every run clean.

    sudo .venv/bin/python -m bench.lab_repeat [--runs 30] [-- LAB FLAGS]

Each run is ``observer lab --json`` in a process of its own (default flags: three nodes, 60
deletions, iptables with the nf_tables backend, no minimum sync period). A run is clean when
it exits 0, its stdout is one JSON document and nothing else, neither stream says ``Unknown
child process`` (asyncio's child watcher losing an exit status), and the agents' dataplane
error counters (``agent_errors.dataplane`` in the result) are all zero. One JSON line per run,
then the totals; the exit status is 1 if any run was not clean.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from typing import Any

DEFAULT_FLAGS = ("--nodes", "3", "--deletions", "60", "--dataplane", "iptables",
                 "--min-sync-period", "0")
LOST_EXIT = "Unknown child process"


def one(flags: list[str]) -> dict[str, Any]:
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "observer.cli", "lab", "--json", *flags],
                          capture_output=True, text=True, timeout=600, check=False)
    problems: list[str] = []
    errors: dict[str, int] = {}
    if done.returncode != 0:
        problems.append(f"exit {done.returncode}")
    try:
        errors = json.loads(done.stdout)["agent_errors"]["dataplane"]
    except (json.JSONDecodeError, KeyError, TypeError) as error:
        problems.append(f"stdout is not the result: {error}")
    if LOST_EXIT in done.stdout or LOST_EXIT in done.stderr:
        problems.append(LOST_EXIT)
    if any(errors.values()):
        problems.append(f"dataplane errors {errors}")
    return {"seconds": round(time.monotonic() - started, 1), "clean": not problems,
            "problems": problems, "dataplane_errors": sum(errors.values()),
            "stderr_tail": done.stderr[-400:] if problems else ""}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("flags", nargs="*", help="lab flags (after --)")
    args = parser.parse_args()
    flags = args.flags or list(DEFAULT_FLAGS)
    results = []
    for number in range(1, args.runs + 1):
        result = one(flags)
        results.append(result)
        print(json.dumps({"run": number, **result}), flush=True)
    clean = sum(r["clean"] for r in results)
    print(json.dumps({"runs": len(results), "clean": clean, "flags": flags,
                      "dataplane_errors": sum(r["dataplane_errors"] for r in results),
                      "seconds_total": round(sum(r["seconds"] for r in results), 1)}))
    return 0 if clean == len(results) else 1


if __name__ == "__main__":
    sys.exit(main())
