"""The moments a legacy iptables ``nat`` table changes shape, seen from outside the agent:
GET_INFO (``observer.dataplane.xtables``) every millisecond in the current network namespace,
one line per change on stdout, ``<CLOCK_MONOTONIC seconds> <size> <entries>``. The benchmark
runs it (``ip netns exec``) while it times single removals: a removal changes the table's
size, so the first line after a write is when the kernel swapped the table in, to a
millisecond — the commit inside the writer's run, which the writer's own start and end only
bracket.

    ip netns exec NAME python -m bench.xt_swaps
"""

from __future__ import annotations

import sys
import time

from observer.dataplane.xtables import IP, open_table


def main() -> None:
    table = open_table(IP)
    last = None
    while True:
        info = table.info()
        shape = None if info is None else (info.size, info.num_entries)
        if shape != last:
            print(f"{time.monotonic():.6f} {shape[0] if shape else 0} "
                  f"{shape[1] if shape else 0}", flush=True)
            last = shape
        time.sleep(0.001)


if __name__ == "__main__":
    try:
        main()
    except (KeyboardInterrupt, BrokenPipeError):
        sys.exit(0)
