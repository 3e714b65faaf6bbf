"""``observer dataplane``: what this node's service dataplane selects, read once, as a table or
JSON."""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping
from typing import Any, TextIO

from observer.dataplane.commands import CommandError, CommandRunner
from observer.dataplane.model import DataplaneParseError
from observer.dataplane.modes import reader
from observer.values import join_host_port


async def dump(requested: str, *, netns: str | None, options: Mapping[str, str],
               as_json: bool, out: TextIO = sys.stdout, err: TextIO = sys.stderr) -> int:
    """0 with the read written to ``out``; 1 when it cannot be read (why, on ``err``)."""
    runner = CommandRunner(netns=netns)
    try:
        snapshot = await (await reader(requested, runner, options)).read()
    except (CommandError, DataplaneParseError) as error:
        print(f"observer dataplane: {error}", file=err)
        return 1
    document = snapshot.to_json()
    if as_json:
        print(json.dumps(document, indent=2), file=out)
        return 0
    header = f"mode: {snapshot.mode}" + (f" ({snapshot.backend})" if snapshot.backend else "")
    print(header, file=out)
    for line in table(document):
        print(line, file=out)
    return 0


def table(document: dict[str, Any]) -> list[str]:
    """One row per endpoint of each service port's paths, in aligned columns."""
    rows = [("SERVICE", "PROTO", "CLUSTER-IP", "PATH", "ENDPOINT", "SELECTED")]
    for service in document["services"]:
        for path in ("cluster", "local"):
            for endpoint in service["paths"][path]:
                rows.append((service["service"], service["protocol"],
                             service["cluster_ip"] or "-", path,
                             join_host_port(endpoint["ip"], endpoint["port"]),
                             "yes" if endpoint["selected"] else "no"))
    widths = [max(len(str(row[i])) for row in rows) for i in range(len(rows[0]))]
    return ["  ".join(str(cell).ljust(width)
                      for cell, width in zip(row, widths, strict=True)).rstrip()
            for row in rows]
