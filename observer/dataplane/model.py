"""What every dataplane reader reports, whatever kube-proxy mode it reads.

A reader turns the node's rules into ``DataplaneChange`` records: "endpoint X of service port
Y stopped (or started) being selected for new connections on this node, noticed at time T".
The tracker consumes those and knows nothing of iptables, nftables or IPVS.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, Protocol

from observer.episodes.model import EndpointKey, Timestamp

ProxyMode = Literal["iptables", "nftables", "ipvs", "none"]


@dataclass(frozen=True, slots=True)
class DataplaneChange:
    key: EndpointKey
    selected: bool
    at: Timestamp


ChangeSink = Callable[[DataplaneChange], None]


class DataplaneSource(Protocol):
    """A running reader of one node's dataplane."""

    mode: ProxyMode

    def selected(self, key: EndpointKey) -> bool | None:
        """Whether the endpoint is selected now; None when the dataplane does not know the
        service port at all."""

    async def run(self, sink: ChangeSink) -> None:
        """Report changes to ``sink`` until cancelled."""
