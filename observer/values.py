"""The value types every part of the agent shares, each defined once: what an endpoint is
(``ServicePort``, ``EndpointKey``), how an address and port are written, which dataplane
kube-proxy programs, and a ``Timestamp`` that knows its clock and its precision. The dataplane
readers, the tracker, the exporters and the lab all import them from here, and this module
imports nothing of theirs.

Clocks (``observer.clock``): every ``Timestamp`` carries a reading of this process's monotonic
clock (``mono``), used for every duration, and the wall clock read at the same instant
(``wall``), used only for display and export.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, NamedTuple

# The dataplane kube-proxy programs on a node; ``ProxyMode`` adds "none" (no dataplane read:
# the controller stage only).
Mode = Literal["iptables", "nftables", "ipvs", "cilium"]
ProxyMode = Literal[Mode, "none"]

# Where a timestamp came from. Watch receipts are when this process read the event off the
# stream; dataplane times are when a reader noticed the change (precision: the time since its
# previous read where it polls, or the netlink notification latency).
# Connection times are when the kernel sent the conntrack event (its event timestamp, when
# ``nf_conntrack_timestamp`` is on) or else when this process read it.
Source = Literal["pod_watch", "slice_watch", "dataplane", "api", "conntrack"]


def join_host_port(ip: str, port: int) -> str:
    """(address, port) -> ``10.0.0.1:80`` or ``[fd00::1]:80``."""
    return f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"


@dataclass(frozen=True, slots=True)
class Timestamp:
    mono: float  # this process's monotonic clock, seconds
    wall: float  # wall clock at the same instant, seconds since the epoch (display only)
    source: Source
    precision: float  # seconds: how far the reading may be from when the change really happened

    def to_dict(self) -> dict[str, Any]:
        return {"wall": round(self.wall, 6), "source": self.source,
                "precision_seconds": self.precision}


class ServicePort(NamedTuple):
    """One port of one service: what kube-proxy programs as a unit. A tuple, as
    ``EndpointKey``: the agent hashes and builds them on every change (a tuple's hash is the
    interpreter's, several times faster than a frozen dataclass's Python ``__hash__``; a
    named tuple is built in half the time)."""

    namespace: str
    service: str
    port_name: str  # "" for an unnamed port
    protocol: str  # upper case: TCP, UDP, SCTP

    def __str__(self) -> str:
        """``ns/name:port``, or ``ns/name`` for an unnamed port (kube-proxy's ServicePortName)."""
        base = f"{self.namespace}/{self.service}"
        return f"{base}:{self.port_name}" if self.port_name else base


class EndpointKey(NamedTuple):
    service_port: ServicePort
    ip: str
    port: int

    def __str__(self) -> str:
        return f"{self.service_port} -> {join_host_port(self.ip, self.port)}"


class Connection(NamedTuple):
    """A new connection that reached an endpoint, as this node's connection tracking saw it:
    ``local`` when this node translated a service address to the endpoint (its kube-proxy),
    else it arrived already addressed to the endpoint (``forwarded``: another node's
    kube-proxy, an ingress controller, a load balancer, a mesh)."""

    ip: str
    port: int
    protocol: str  # TCP, UDP, SCTP
    local: bool
    at: Timestamp


def split_host_port(text: str) -> tuple[str, int]:
    """``10.0.0.1:80`` or ``[fd00::1]:80`` -> (address, port); ``ValueError`` otherwise."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not host or int(port) > 65535:
        raise ValueError(f"{text!r} is not address:port")
    return host.strip("[]"), int(port)
