"""The merged view of the EndpointSlices: where a slice event enters the tracker.

Slices are validated (a slice without ``kubernetes.io/service-name`` or of an address type
kube-proxy does not proxy is left out, and said so) and merged per service, as kube-proxy's
EndpointSliceCache merges them: several slices may list the same endpoint (while the controller
moves it between slices), and a Ready copy wins. Every change yields, per service touched, the
merged endpoints before and after, and what was wrong with the input (``invalid_input_total``
reasons): the tracker turns the differences into episodes and counts the rest. The view holds
no reference to anything else, so it can be made first and handed to everyone who needs it.

The view is also the service catalog: which service ports exist (``service_port_names``, for
the chain hashes of kube-proxy's large-cluster mode) and which list a given endpoint
(``service_ports_of``, to name IPVS virtual servers by their real servers). The dataplane
readers are handed these two methods: they name services from what the slices say.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import NamedTuple

from observer.kube.objects import Endpoint, EndpointSlice
from observer.values import EndpointKey, ServicePort

ServiceId = tuple[str, str]  # (namespace, service name)
SliceId = tuple[str, str]  # (namespace, slice name)
Merged = dict[EndpointKey, Endpoint]
_Address = tuple[str, int, str]  # (ip, port, protocol)


class ServiceChange(NamedTuple):
    """One service's merged endpoints before and after a change."""

    service: ServiceId
    before: Merged
    after: Merged


def routed(merged: Merged) -> dict[EndpointKey, bool]:
    """Which endpoints a proxy sends new connections to, as the slices say: the Ready ones;
    in a service port with none Ready (per IP family: kube-proxy runs a proxier for each),
    the serving-and-terminating ones (KEP-1669's fallback: ``pkg/proxy/topology.go``
    CategorizeEndpoints; Cilium does the same)."""
    ready = {(key.service_port, ":" in key.ip) for key, ep in merged.items() if ep.ready}
    return {key: ep.ready or ((key.service_port, ":" in key.ip) not in ready and ep.serving
                              and ep.terminating)
            for key, ep in merged.items()}


class Update(NamedTuple):
    changes: list[ServiceChange]
    invalid: list[str]  # invalid_input_total reasons, one per finding


class SliceView:
    def __init__(self) -> None:
        self._invalid: list[str] = []  # found during the update being made
        self._slices: dict[SliceId, EndpointSlice] = {}
        self._service_slices: dict[ServiceId, set[str]] = {}
        self._merged: dict[ServiceId, Merged] = {}
        # (ip, port, protocol) -> the service ports listing it. Built on the first question
        # (only readers that name services by address ask: IPVS), kept up to date after.
        self._by_address: dict[_Address, set[ServicePort]] | None = None

    # what the slice watch hands over ----------------------------------------------------------

    def listed(self, slices: Iterable[EndpointSlice]) -> Update:
        """A complete list replaces everything."""
        new = {(s.namespace, s.name): s for s in slices}
        touched = {_service_of(s) for s in self._slices.values()}
        self._slices, self._service_slices = {}, {}
        for slice_id, eps in new.items():
            self._add(slice_id, eps)
        touched |= {_service_of(s) for s in new.values()}
        return self._update(touched)

    def changed(self, eps: EndpointSlice) -> Update:
        slice_id = (eps.namespace, eps.name)
        old = self._slices.pop(slice_id, None)
        if old is not None:
            self._drop(slice_id, old)
        self._add(slice_id, eps)
        services = {_service_of(eps)}
        if old is not None:
            services.add(_service_of(old))
        return self._update(services)

    def deleted(self, namespace: str, name: str) -> Update:
        old = self._slices.pop((namespace, name), None)
        if old is not None:
            self._drop((namespace, name), old)
        return self._update(set() if old is None else {_service_of(old)})

    # the catalog ------------------------------------------------------------------------------

    def service_port_names(self) -> set[str]:
        """``ns/name:port`` of every service port the slices name."""
        return {str(key.service_port) for merged in self._merged.values() for key in merged}

    def service_ports_of(self, ip: str, port: int, protocol: str) -> set[ServicePort]:
        """The service ports whose slices list this endpoint."""
        if self._by_address is None:
            self._by_address = {}
            for merged in self._merged.values():
                for key in merged:
                    self._index(key, present=True)
        return self._by_address.get((ip, port, protocol.upper()), set())

    # inside -----------------------------------------------------------------------------------

    def _update(self, services: Iterable[ServiceId]) -> Update:
        changes = [self._recompute(service) for service in services]
        invalid, self._invalid = self._invalid, []
        return Update(changes, invalid)

    def _add(self, slice_id: SliceId, eps: EndpointSlice) -> None:
        if not eps.service:
            self._invalid.append("no_service_label")
            return
        if eps.address_type not in ("IPv4", "IPv6"):
            self._invalid.append("unsupported_address_type")
            return
        self._slices[slice_id] = eps
        self._service_slices.setdefault(_service_of(eps), set()).add(eps.name)

    def _drop(self, slice_id: SliceId, eps: EndpointSlice) -> None:
        names = self._service_slices.get(_service_of(eps))
        if names is not None:
            names.discard(slice_id[1])
            if not names:
                del self._service_slices[_service_of(eps)]

    def _merge(self, service: ServiceId) -> Merged:
        merged: Merged = {}
        duplicates = False
        for name in sorted(self._service_slices.get(service, ())):
            eps = self._slices[(service[0], name)]
            for port in eps.ports:
                service_port = ServicePort(service[0], service[1], port.name,
                                           port.protocol.upper())
                for endpoint in eps.endpoints:
                    key = EndpointKey(service_port, endpoint.address, port.port)
                    seen = merged.get(key)
                    if seen is not None:
                        duplicates = True
                    if seen is None or (endpoint.ready and not seen.ready):
                        merged[key] = endpoint
        if duplicates:
            self._invalid.append("duplicate_endpoint")
        return merged

    def _recompute(self, service: ServiceId) -> ServiceChange:
        before = self._merged.get(service, {})
        after = self._merge(service)
        if after:
            self._merged[service] = after
        else:
            self._merged.pop(service, None)
        if self._by_address is not None:
            for key in before.keys() ^ after.keys():
                self._index(key, present=key in after)
        return ServiceChange(service, before, after)

    def _index(self, key: EndpointKey, *, present: bool) -> None:
        assert self._by_address is not None
        address = (key.ip, key.port, key.service_port.protocol)
        if present:
            self._by_address.setdefault(address, set()).add(key.service_port)
        elif (ports := self._by_address.get(address)) is not None:
            ports.discard(key.service_port)
            if not ports:
                del self._by_address[address]


def _service_of(eps: EndpointSlice) -> ServiceId:
    return (eps.namespace, eps.service)
