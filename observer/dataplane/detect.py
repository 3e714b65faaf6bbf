"""Which mode this node's service dataplane is in (kube-proxy's, or Cilium's kube-proxy
replacement), and the reader and change source for it."""

from __future__ import annotations

from typing import Any, Literal

from observer.clock import Clock
from observer.dataplane.cilium import DEFAULT_BPF_ROOT, CiliumChanges, CiliumMaps, CiliumReader
from observer.dataplane.commands import CommandError, CommandRunner
from observer.dataplane.iptables import IptablesNftTables, IptablesReader, KnownServices
from observer.dataplane.ipvs import IpvsReader
from observer.dataplane.model import Backend, DataplaneParseError, Reader, decode_output
from observer.dataplane.names import Candidates, FrontendNames
from observer.dataplane.nftables import KubeProxyTables, NftablesReader
from observer.dataplane.sources import (
    DataplaneMetrics,
    DeltaPollingSource,
    MonitorSource,
    PollingSource,
)
from observer.values import Mode

Requested = Literal["auto", "iptables", "nftables", "ipvs", "cilium"]


async def _iptables_kube_rules(runner: CommandRunner, backend: Backend) -> tuple[int, bool]:
    """How many KUBE- lines a backend's nat table holds, and whether they are IPVS mode's."""
    try:
        text = decode_output(await runner.run([f"iptables-{backend}-save", "-t", "nat"]))
    except CommandError:
        return 0, False
    lines = [line for line in text.splitlines() if "KUBE-" in line]
    return len(lines), any("KUBE-CLUSTER-IP" in line for line in lines)


async def detect(runner: CommandRunner,
                 bpf_root: str = DEFAULT_BPF_ROOT) -> tuple[Mode, Backend | None]:
    """Which mode kube-proxy programs here: its nftables table if it exists; otherwise the
    iptables backend holding more KUBE- rules (as kube-proxy's iptables-wrapper decides);
    IPVS mode's iptables rules match the KUBE-CLUSTER-IP ipset. With no kube-proxy rules at
    all, Cilium's kube-proxy replacement if its service maps are pinned under ``bpf_root``
    (kube-proxy's rules come first: Cilium without the replacement pins them too)."""
    try:  # the table's name is enough; the source reads it in full right after
        tables = decode_output(await runner.run(["nft", "list", "tables"])).splitlines()
    except (CommandError, DataplaneParseError):
        tables = []
    if {"table ip kube-proxy", "table ip6 kube-proxy"} & {t.strip() for t in tables}:
        return "nftables", None
    counts = {backend: await _iptables_kube_rules(runner, backend)
              for backend in ("nft", "legacy")}
    backend: Backend = max(counts, key=lambda b: counts[b][0])  # type: ignore[arg-type]
    rules, ipvs = counts[backend]
    if rules == 0:
        try:
            CiliumMaps.open(bpf_root).close()
        except (CommandError, DataplaneParseError) as error:
            raise CommandError("failed", "no kube-proxy rules found (nftables table kube-proxy, "
                               "or KUBE-SERVICES in either iptables backend), and no Cilium "
                               f"maps readable: {error}") from None
        return "cilium", None
    return ("ipvs", None) if ipvs else ("iptables", backend)


def reader_for(mode: Mode, backend: Backend | None, runner: CommandRunner,
               known_services: KnownServices = lambda: (),
               candidates: Candidates | None = None,
               bpf_root: str = DEFAULT_BPF_ROOT) -> Reader:
    names = FrontendNames(candidates) if candidates is not None else None
    if mode == "cilium":
        return CiliumReader(bpf_root, names)
    if mode == "nftables":
        return NftablesReader(runner)
    if mode == "ipvs":
        return IpvsReader(runner, names)
    return IptablesReader(runner, backend or "nft", known_services)


async def resolve(requested: Requested, runner: CommandRunner,
                  bpf_root: str = DEFAULT_BPF_ROOT) -> tuple[Mode, Backend | None]:
    """The mode to read, and for iptables the backend holding kube-proxy's rules."""
    if requested == "auto":
        return await detect(runner, bpf_root)
    if requested == "iptables":
        counts = {b: (await _iptables_kube_rules(runner, b))[0] for b in ("nft", "legacy")}
        return "iptables", ("legacy" if counts["legacy"] > counts["nft"] else "nft")
    return requested, None


async def open_source(requested: Requested, *, runner: CommandRunner, clock: Clock,
                      metrics: DataplaneMetrics, poll_interval: float, poll_max_cpu: float,
                      known_services: KnownServices = lambda: (),
                      candidates: Candidates = lambda ip, port, protocol: (),
                      bpf_root: str = DEFAULT_BPF_ROOT
                      ) -> MonitorSource[Any] | PollingSource | DeltaPollingSource:
    """The change source for the mode asked for (or detected): event-driven where nf_tables
    announces changes (nftables, iptables-nft), polling elsewhere (iptables-legacy, IPVS,
    Cilium's maps). ``known_services`` names iptables' hashed chains, ``candidates`` IPVS'
    virtual servers and Cilium's frontends."""
    mode, backend = await resolve(requested, runner, bpf_root)
    if mode == "cilium":
        if requested == "cilium":  # (detection has opened them already)
            CiliumMaps.open(bpf_root).close()  # fail now, not at the first poll, if unreadable
        return DeltaPollingSource(changes=CiliumChanges(bpf_root, FrontendNames(candidates)),
                                  clock=clock, metrics=metrics, interval=poll_interval,
                                  max_cpu=poll_max_cpu)
    if mode == "nftables":
        return MonitorSource(mode=mode, runner=runner, clock=clock, metrics=metrics,
                             tables=KubeProxyTables(), max_cpu=poll_max_cpu)
    if mode == "iptables" and backend == "nft":
        return MonitorSource(mode=mode, runner=runner, clock=clock, metrics=metrics,
                             tables=IptablesNftTables(known_services), max_cpu=poll_max_cpu)
    return PollingSource(reader=reader_for(mode, backend, runner, known_services, candidates),
                         clock=clock, metrics=metrics, interval=poll_interval,
                         max_cpu=poll_max_cpu)
