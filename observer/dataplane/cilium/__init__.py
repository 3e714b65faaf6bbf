"""Cilium's kube-proxy replacement: the load-balancing BPF maps its agent pins under the BPF
filesystem (``<bpf-root>/tc/globals/``), read with ``bpf(2)`` (``observer.dataplane.bpf``).

One module per idea:

* ``maps``: the maps' layouts (cilium/cilium v1.18, cited there) and opening and reading them;
* ``decode``: what their bytes mean — which backends a frontend sends new connections to —
  pure functions of the bytes, tested on captured entries;
* ``state``: the decoded state full reads keep, reads by parts and what they compare with;
* ``changes``: the reads ``source`` makes, full and by parts, named after service ports;
* ``source``: the change source, ``DeltaPollingSource``.

The reconciler writes backends before the slots naming them, and deletes a backend it orphans
*before* rewriting the slots (``orphanBackends`` then ``deleteBackend``): a slot may briefly
name a backend that is gone, which the datapath cannot reach either. Reading the services map
first and the backends second, a slot naming a backend never seen means the maps changed
during the read: the read is reported unreadable (counted) and the next one tells.

Maps send no notification when they change: the source polls. A full read copies both maps
(BPF_MAP_LOOKUP_BATCH) and decodes only what changed since the last
(``LoadBalancing.apply``) — still about a second of CPU at 10,000 services when most
frontends changed, so full reads are rare; the service ports the tracker expects to change
are read in between by looking their frontends up entry by entry (``read_frontends``:
master, slots 1..count, their backends; a microsecond or two per entry).
"""

from __future__ import annotations

from collections.abc import Mapping

from observer.dataplane.cilium.changes import CiliumChanges
from observer.dataplane.cilium.maps import DEFAULT_BPF_ROOT, PIN_DIR, CiliumMaps
from observer.dataplane.cilium.source import DeltaPollingSource
from observer.dataplane.cilium.state import CiliumReader
from observer.dataplane.commands import CommandError
from observer.dataplane.mode import DataplaneMode, Detected, Option, Probe, Wiring
from observer.dataplane.model import DataplaneParseError, DataplaneSource
from observer.dataplane.names import FrontendNames

BPF_ROOT = Option("bpf_root", DEFAULT_BPF_ROOT,
                  "where the BPF filesystem is mounted: Cilium's maps are pinned under its "
                  f"{PIN_DIR} (default {DEFAULT_BPF_ROOT})")


def _root(options: Mapping[str, str]) -> str:
    return options.get(BPF_ROOT.name, BPF_ROOT.default)


async def _detect(probe: Probe) -> Detected:
    try:
        CiliumMaps.open(_root(probe.options)).close()
    except (CommandError, DataplaneParseError) as error:
        return Detected(found=False, why=f"no Cilium maps readable: {error}")
    return Detected(found=True)


def _reader(wiring: Wiring) -> CiliumReader:
    names = FrontendNames(wiring.candidates) if wiring.candidates is not None else None
    return CiliumReader(_root(wiring.options), names)


async def _source(wiring: Wiring) -> DataplaneSource:
    """Nothing announces map updates: reads by parts of the service ports the slices say are
    changing, full reads under the rest of the budget."""
    clock, metrics = wiring.source_parts()
    root = _root(wiring.options)
    CiliumMaps.open(root).close()  # fail now, not at the first read, if unreadable
    names = FrontendNames(wiring.candidates or (lambda ip, port, protocol: ()))
    return DeltaPollingSource(changes=CiliumChanges(root, names), clock=clock,
                              metrics=metrics, interval=wiring.poll_interval,
                              max_cpu=wiring.poll_max_cpu)


MODE = DataplaneMode(
    name="cilium",
    about="Cilium's kube-proxy replacement: its service and backend BPF maps, pinned under "
          "the BPF filesystem, polled",
    detect=_detect, reader=_reader, source=_source, options=(BPF_ROOT,))
