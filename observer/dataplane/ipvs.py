"""kube-proxy's IPVS mode, from ``ipvsadm -Ln``.

Virtual servers are ``VIP:port`` (cluster IPs, external IPs, node ports), real servers are
``podIP:port``. A terminating TCP real server is set to weight 0 (no new connections) and
deleted only once its connections drain (``pkg/proxy/ipvs/graceful_termination.go``): weight
0 is the removal signal. IPVS knows no service names; ``service`` is ``VIP:port`` here and the
agent maps it to service ports through the EndpointSlices.

The kernel of our CI machines has no IPVS module, so this parser is tested on recorded output
(``tests/fixtures/dataplane/ipvsadm-Ln.txt``, with its origin stated there).
"""

from __future__ import annotations

import re

from observer.dataplane.model import (
    DataplaneParseError,
    DataplaneSnapshot,
    ProgrammedEndpoint,
    ProgrammedService,
    split_host_port,
)

_VIRTUAL = re.compile(r"^(TCP|UDP|SCTP)\s+(\S+)\s+\S+")
_REAL = re.compile(r"^\s+->\s+(\S+)\s+(\w+)\s+(\d+)\s+(\d+)\s+(\d+)")


def parse_ipvsadm(text: str) -> DataplaneSnapshot:
    services: list[ProgrammedService] = []
    current: tuple[str, str, list[ProgrammedEndpoint]] | None = None

    def close() -> None:
        if current is not None:
            vip, proto, reals = current
            services.append(ProgrammedService(service=vip, protocol=proto,
                                              cluster_ip=split_host_port(vip)[0],
                                              cluster=tuple(reals), local=()))

    lines = text.splitlines()
    if not lines or not lines[0].startswith("IP Virtual Server version"):
        raise DataplaneParseError("not ipvsadm -Ln output")
    for number, line in enumerate(lines[1:], 2):
        if line.startswith(("Prot ", "  -> RemoteAddress")) or not line.strip():
            continue
        if m := _VIRTUAL.match(line):
            close()
            split_host_port(m.group(2))
            current = (m.group(2), m.group(1).lower(), [])
        elif m := _REAL.match(line):
            if current is None:
                raise DataplaneParseError(f"line {number}: real server before any service")
            ip, port = split_host_port(m.group(1))
            current[2].append(ProgrammedEndpoint(ip, port, int(m.group(3)) > 0))
        else:
            raise DataplaneParseError(f"line {number}: unexpected {line[:80]!r}")
    close()
    return DataplaneSnapshot("ipvs", None, tuple(services))
