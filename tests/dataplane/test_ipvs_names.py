"""Naming IPVS virtual servers after the service ports whose endpoints they balance
(observer/dataplane/ipvs.py ``FrontendNames``), on the kernel-layout netlink fixture."""

from __future__ import annotations

from collections.abc import Collection

from observer.dataplane.ipvs import parse_ipvs
from observer.dataplane.model import DataplaneSnapshot
from observer.dataplane.names import FrontendNames
from observer.testing.ipvs_netlink import KUBE_DNS, Service, virtuals
from observer.values import EndpointKey, ServicePort

DNS = ServicePort("kube-system", "kube-dns", "dns", "UDP")
DNS_TCP = ServicePort("kube-system", "kube-dns", "dns-tcp", "TCP")
METRICS = ServicePort("kube-system", "kube-dns", "metrics", "TCP")
API = ServicePort("default", "kubernetes", "https", "TCP")


class Slices:
    """What the EndpointSlices list: (ip, port, protocol) -> service ports."""

    def __init__(self) -> None:
        self.index: dict[tuple[str, int, str], set[ServicePort]] = {
            ("10.244.0.2", 53, "UDP"): {DNS}, ("10.244.0.2", 53, "TCP"): {DNS_TCP},
            ("10.244.0.3", 53, "TCP"): {DNS_TCP}, ("10.244.0.2", 9153, "TCP"): {METRICS},
            ("192.168.49.2", 8443, "TCP"): {API}}

    def __call__(self, ip: str, port: int, protocol: str) -> Collection[ServicePort]:
        return self.index.get((ip, port, protocol), set())


def snapshot(services: tuple[Service, ...] = KUBE_DNS) -> DataplaneSnapshot:
    return parse_ipvs(virtuals(services))


def test_virtual_servers_take_their_service_ports_name() -> None:
    named = FrontendNames(Slices()).apply(snapshot())
    assert {(s["service"], s["protocol"]) for s in named.to_json()["services"]} == {
        ("default/kubernetes:https", "tcp"), ("kube-system/kube-dns:dns", "udp"),
        ("kube-system/kube-dns:dns-tcp", "tcp"), ("kube-system/kube-dns:metrics", "tcp"),
        ("[fd00:10:96::a]:53", "tcp")}  # no slice lists its endpoint: left unnamed
    selection = named.selection()
    assert selection[EndpointKey(DNS_TCP, "10.244.0.3", 53)] is False  # weight 0
    assert selection[EndpointKey(DNS_TCP, "10.244.0.2", 53)] is True
    assert not any(k.ip.startswith("fd00") for k in selection)


def test_a_name_outlives_the_endpoints_slice_entry() -> None:
    # The terminating CoreDNS pod left the slices; IPVS keeps its real server at weight 0
    # while connections drain: still kube-dns's, so its removal is never timed by the slice.
    slices = Slices()
    names = FrontendNames(slices)
    names.apply(snapshot())
    slices.index.clear()
    selection = names.apply(snapshot()).selection()
    assert selection[EndpointKey(DNS_TCP, "10.244.0.3", 53)] is False


def test_a_virtual_server_that_goes_is_forgotten() -> None:
    slices = Slices()
    names = FrontendNames(slices)
    names.apply(snapshot())
    names.apply(snapshot(()))
    slices.index.clear()
    assert names.apply(snapshot()).selection() == {}  # named afresh, and nothing matches now


def test_the_service_port_with_most_endpoints_wins_and_a_tie_waits() -> None:
    other = ServicePort("default", "dns-mirror", "dns-tcp", "TCP")
    slices = Slices()
    slices.index[("10.244.0.2", 53, "TCP")] = {DNS_TCP, other}  # one pod behind both
    named = FrontendNames(slices).apply(snapshot())
    assert "kube-system/kube-dns:dns-tcp" in {s.service for s in named.services}  # 2 votes to 1

    slices.index[("10.244.0.3", 53, "TCP")] = {DNS_TCP, other}  # now 2 to 2
    names = FrontendNames(slices)
    named = names.apply(snapshot())
    assert "10.96.0.10:53" in {s.service for s in named.services if s.protocol == "tcp"}
    slices.index[("10.244.0.3", 53, "TCP")] = {DNS_TCP}  # the mirror's slice changed
    assert names.apply(snapshot()).selection()[EndpointKey(DNS_TCP, "10.244.0.3", 53)] is False
