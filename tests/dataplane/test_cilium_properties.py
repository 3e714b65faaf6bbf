"""Property-based tests (hypothesis) of Cilium's decoding (``observer.dataplane.cilium.decode``),
on entries encoded by the lab's own statement of the layouts (``observer.lab.cilium``, from
Cilium's C declarations): a frontend's two decodings — from a full read's entries
(``describe``) and from a read by parts (``lookup_frontend`` then ``decode_selection``) —
select exactly the backends in slots ``1..count``, as the datapath does; a backend deleted
under its slot is never selected."""

from __future__ import annotations

import ctypes
import socket

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from observer.dataplane.cilium.decode import (
    Addresses,
    decode_selection,
    describe,
    lookup_frontend,
)
from observer.dataplane.cilium.maps import Frontend
from observer.dataplane.model import ProgrammedEndpoint
from observer.lab.cilium import ACTIVE, BACKENDS, MAINTENANCE, QUARANTINED, TERMINATING, LbService

CHECKS = settings(max_examples=300, deadline=5000,
                  suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
STATES = (ACTIVE, TERMINATING, QUARANTINED, MAINTENANCE)
SVC_FLAG_EXT_LOCAL_SCOPE = 1 << 2  # lb{4,6}_service.flags: externalTrafficPolicy=Local


def backend_value(ip: str, port: int, proto: int, state: int) -> bytes:
    family = 6 if ":" in ip else 4
    value = BACKENDS[family](proto=proto, flags=state)
    packed = socket.inet_pton(socket.AF_INET6 if family == 6 else socket.AF_INET, ip)
    ctypes.memmove(value.address, packed, len(packed))
    ctypes.memmove(value.port, port.to_bytes(2, "big"), 2)
    return bytes(value)


@st.composite
def frontends(draw: st.DrawFn) -> tuple[Frontend, dict[int, bytes], dict[int, bytes],
                                        list[tuple[str, int]], bool]:
    """A frontend as Cilium's reconciler writes it (active backends first; ``count`` the
    active ones, or the terminating ones when none is active; ``qcount`` the rest), its
    entries by place, its backends by id, the endpoints the datapath picks from, and
    whether its path is the Local traffic policy's."""
    six = draw(st.booleans())
    address = draw(st.ip_addresses(v=6 if six else 4))
    proto = draw(st.sampled_from((socket.IPPROTO_TCP, socket.IPPROTO_UDP)))
    local = draw(st.booleans())
    count = draw(st.integers(1, 6))
    states = sorted(draw(st.lists(st.sampled_from(STATES), min_size=count, max_size=count)))
    # As the decoder writes addresses: inet_ntop's text (an IPv4-mapped one dotted).
    family = socket.AF_INET6 if six else socket.AF_INET
    ips = draw(st.lists(st.ip_addresses(v=6 if six else 4).map(
        lambda a: socket.inet_ntop(family, a.packed)), min_size=count, max_size=count,
        unique=True))
    ports = draw(st.lists(st.integers(1, 65535), min_size=count, max_size=count))
    active = sum(s == ACTIVE for s in states)
    terminating = sum(s == TERMINATING for s in states)
    chosen = active or terminating
    first_id = draw(st.integers(1, 2**31))
    backends = {first_id + i: backend_value(ip, port, proto, state)
                for i, (ip, port, state) in enumerate(zip(ips, ports, states, strict=True))}
    entries = {0: bytes(LbService(backend_id=0, count=chosen, rev_nat_index=1,
                                  flags=SVC_FLAG_EXT_LOCAL_SCOPE if local else 0,
                                  qcount=count - chosen))}
    for slot, backend_id in enumerate(backends, start=1):
        entries[slot] = bytes(LbService(backend_id=backend_id, rev_nat_index=1))
    frontend = Frontend(address.packed, draw(st.integers(1, 65535)).to_bytes(2, "big"), proto)
    return frontend, entries, backends, list(zip(ips, ports, strict=True))[:chosen], local


@CHECKS
@given(frontends())
def test_both_decodings_select_the_slots_up_to_count(
        case: tuple[Frontend, dict[int, bytes], dict[int, bytes], list[tuple[str, int]], bool]
        ) -> None:
    frontend, entries, backends, chosen, local = case
    expected = [ProgrammedEndpoint(ip, port, True) for ip, port in chosen]
    full = describe(frontend, entries, backends, {}, Addresses())
    assert full is not None
    path, other = (full.local, full.cluster) if local else (full.cluster, full.local)
    assert other == ()
    assert [e for e in path if e.selected] == expected
    assert len(path) == len(backends)  # the rest named, not selected

    def services(address: bytes, port: bytes, slot: int, proto: int, scope: int
                 ) -> bytes | None:
        same = (address, port, proto) == tuple(frontend) and scope == 0
        return entries.get(slot) if same else None

    signature = lookup_frontend(frontend, services, backends.get, None)
    assert signature is not None
    parts = decode_selection(frontend, signature, Addresses())
    assert parts is not None
    assert (parts.local if local else parts.cluster) == tuple(expected)
    assert (parts.protocol, parts.service, parts.cluster_ip) == (
        full.protocol, full.service, full.cluster_ip)


@CHECKS
@given(frontends(), st.data())
def test_a_slot_naming_a_missing_backend_is_never_selected(
        case: tuple[Frontend, dict[int, bytes], dict[int, bytes], list[tuple[str, int]], bool],
        data: st.DataObject) -> None:
    """A backend deleted while a slot still names it (the reconciler's order): named by a
    full read's decoding but not selected; a read by parts sees a half-done write (None)."""
    frontend, entries, backends, _, _ = case
    gone_id = data.draw(st.sampled_from(sorted(backends)))
    gone = {gone_id: backends.pop(gone_id)}
    full = describe(frontend, entries, backends, gone, Addresses())
    assert full is not None
    missing = Addresses()(gone[gone_id])[:2]
    assert all(not e.selected for e in (*full.cluster, *full.local)
               if (e.ip, e.port) == missing)
    signature = lookup_frontend(
        frontend, lambda _a, _p, slot, _r, scope: entries.get(slot) if scope == 0 else None,
        backends.get, None)
    count = LbService.from_buffer_copy(entries[0]).count
    slot = next(s for s, raw in entries.items()
                if s and LbService.from_buffer_copy(raw).backend_id == gone_id)
    assert (signature is None) == (slot <= count)
