"""The dataplane modes (each module's ``MODE``, ``observer.dataplane.mode``), in the order
detection tries them, and what goes through the list: detection, resolving what was asked for,
a reader, a change source.

The order: kube-proxy's nftables table if it exists; otherwise the iptables backend holding
more KUBE- rules (as kube-proxy's iptables-wrapper decides), those of IPVS mode matching the
KUBE-CLUSTER-IP ipset; with no kube-proxy rules at all, Cilium's kube-proxy replacement if its
service maps are pinned (kube-proxy's rules come first: Cilium without the replacement pins
them too).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

from observer.dataplane import cilium, iptables, ipvs, nftables
from observer.dataplane.commands import CommandError, CommandRunner
from observer.dataplane.mode import DataplaneMode, Option, Probe, Wiring
from observer.dataplane.model import Backend, DataplaneSource, Reader

MODES: tuple[DataplaneMode, ...] = (nftables.MODE, iptables.MODE, ipvs.MODE, cilium.MODE)
NAMES: tuple[str, ...] = tuple(mode.name for mode in MODES)
OPTIONS: tuple[Option, ...] = tuple(option for mode in MODES for option in mode.options)


def named(name: str) -> DataplaneMode:
    for mode in MODES:
        if mode.name == name:
            return mode
    raise ValueError(f"no dataplane mode {name!r} (one of {', '.join(NAMES)})")


async def detect(runner: CommandRunner, options: Mapping[str, str]
                 ) -> tuple[DataplaneMode, Backend | None]:
    """The mode this node's dataplane is in; ``CommandError`` saying why each was not found."""
    probe = Probe(runner, options)
    why = []
    for mode in MODES:
        detected = await mode.detect(probe)
        if detected.found:
            return mode, detected.backend
        why.append(f"{mode.name}: {detected.why}")
    raise CommandError("failed", "no dataplane mode found (" + "; ".join(why) + ")")


async def resolve(requested: str, runner: CommandRunner, options: Mapping[str, str]
                  ) -> tuple[DataplaneMode, Backend | None]:
    """The mode asked for (``auto``: detected), and the backend its detection picks for a mode
    that has one (no other is probed when asked for by name)."""
    if requested == "auto":
        return await detect(runner, options)
    mode = named(requested)
    if not mode.picks_backend:
        return mode, None
    return mode, (await mode.detect(Probe(runner, options))).backend


async def reader(requested: str, runner: CommandRunner, options: Mapping[str, str]) -> Reader:
    """One full read's reader (``observer dataplane``)."""
    mode, backend = await resolve(requested, runner, options)
    return mode.reader(Wiring(runner=runner, options=options, backend=backend))


async def open_source(requested: str, wiring: Wiring) -> DataplaneSource:
    """The change source of the mode asked for (or detected): event-driven where the kernel
    announces changes, polled elsewhere."""
    mode, backend = await resolve(requested, wiring.runner, wiring.options)
    return await mode.source(dataclasses.replace(wiring, backend=backend))
