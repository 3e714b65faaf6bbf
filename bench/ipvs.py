"""Benchmark (issue 4), IPVS mode, the agent's side only: 10,000 virtual servers / 50,000 real
servers, as the kernel would answer the dump.

The kernel here has no ``ip_vs`` module, so neither the dump itself (one ``IPVS_CMD_GET_SERVICE``
dump, then one ``IPVS_CMD_GET_DEST`` dump per virtual server: 10,001 netlink round trips) nor
the ``ipvsadm`` it would be compared with can run. What can be measured is everything the agent
does with the kernel's answer: the messages are encoded in the kernel's layout
(``observer/testing/ipvs_netlink.py``, before the clock starts), then decoded as
``ipvs_dump`` does (``service_attrs``, ``dest_attrs``), parsed (``parse_ipvs``) and named after
service ports
(``FrontendNames``, with every endpoint indexed as the tracker would). Reported: CPU seconds of
one such read (best of three), the polling period the CPU budget makes of it
(``--dataplane-poll-max-cpu`` 0.1: a read costs at most 10 % of a core on average, so (c) holds
by construction and the price is the period), and RSS with the last snapshot and the names held.

    .venv/bin/python -m bench.ipvs [--services 10000] [--per-service 5]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from typing import Any

from observer.dataplane.ipvs import Virtual, dest_attrs, parse_ipvs, service_attrs
from observer.dataplane.model import DataplaneSnapshot
from observer.dataplane.names import FrontendNames
from observer.testing.ipvs_netlink import (
    Real,
    Service,
    dest_message,
    payload,
    service_message,
)
from observer.testing.rss import rss_mib
from observer.values import ServicePort


def services(count: int, per: int) -> list[Service]:
    return [Service("TCP", f"172.30.{(s >> 8) & 255}.{s & 255}", 80, tuple(
        Real(f"10.{(s >> 8) & 255}.{s & 255}.{e + 1}", 8080, 1) for e in range(per)))
        for s in range(count)]



def read(encoded: list[tuple[bytes, list[bytes]]], names: FrontendNames) -> DataplaneSnapshot:
    """What the agent does with one dump's messages: ``ipvs_dump``'s decoding, then
    ``IpvsReader.read``'s parse and naming."""
    virtuals: list[Virtual] = [
        (service_attrs(payload(service)), [dest_attrs(payload(dest)) for dest in dests])
        for service, dests in encoded]
    return names.apply(parse_ipvs(virtuals))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--services", type=int, default=10_000)
    parser.add_argument("--per-service", type=int, default=5)
    args = parser.parse_args()
    table = services(args.services, args.per_service)
    # The tracker's index in IPVS mode: (ip, port, protocol) -> service ports.
    index: dict[tuple[str, int, str], set[ServicePort]] = {}
    for s, service in enumerate(table):
        port = ServicePort(f"ns{s % 50}", f"svc{s}", "http", "TCP")
        for real in service.reals:
            index.setdefault((real.addr, real.port, "TCP"), set()).add(port)
    names = FrontendNames(lambda ip, port, protocol: index.get((ip, port, protocol), ()))
    encoded = [(service_message(s), [dest_message(r) for r in s.reals]) for s in table]
    rss_before = rss_mib()
    times, snapshot = [], None
    for _ in range(3):
        del snapshot
        started = time.process_time()
        snapshot = read(encoded, names)
        times.append(time.process_time() - started)
    assert snapshot is not None
    named = sum(not s.service.startswith("172.30.") for s in snapshot.services)
    result: dict[str, Any] = {
        "machine": {"cpu": platform.machine(), "cores": os.cpu_count(),
                    "python": platform.python_version()},
        "virtual_servers": args.services, "real_servers": args.services * args.per_service,
        "named": named, "read_cpu_seconds": round(min(times), 3),
        "poll_period_at_10_percent_seconds": round(min(times) / 0.1, 1),
        "rss_mib_with_snapshot": round(rss_mib(), 1),
        "rss_mib_before_first_read": round(rss_before, 1)}
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
