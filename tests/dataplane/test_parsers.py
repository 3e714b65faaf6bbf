"""The parsers on their own: shapes, garbage and truncation."""

from __future__ import annotations

import socket

import pytest

from observer.dataplane.iptables import (
    SaveParser,
    endpoint_hash,
    parse_iptables_save,
    service_hash,
    snapshot_of,
)
from observer.dataplane.ipvs import Attrs, dest_attrs, parse_ipvs, service_attrs, service_identity
from observer.dataplane.model import DataplaneParseError
from observer.dataplane.nftables import endpoint_from_chain, parse_nft_text, service_from_chain
from observer.testing.ipvs_netlink import (
    KUBE_DNS,
    dest_message,
    nla,
    payload,
    pyroute2_decode,
    service_message,
    u16,
    u32,
    virtuals,
)
from tests.dataplane.edits import IPTABLES_RULES, without_endpoint_comments
from tests.netns import FIXTURES


def test_chain_hashes_match_kube_proxys() -> None:
    # Expected names from TestOverallIPTablesRules.
    assert service_hash("ns1/svc1:p80", "tcp") == "XPGD46QRK7WJZT7O"
    assert endpoint_hash("ns1/svc1:p80", "tcp", "10.180.0.1", 80) == "SXIVWICOYRO3J4NJ"


def test_kube_proxy_restore_input_parses_too() -> None:
    snapshot = parse_iptables_save(IPTABLES_RULES, backend="legacy")
    assert [s.service for s in snapshot.services] == [
        "ns4/svc4:p80", "ns2/svc2:p80", "ns5/svc5:p80", "ns3/svc3:p80", "ns1/svc1:p80"]
    selection = snapshot.selection()
    assert len(selection) == 6
    assert all(selection.values())


def test_unreferenced_sep_without_comment_is_found_by_hash() -> None:
    rules = without_endpoint_comments(IPTABLES_RULES).replace(
        '-A KUBE-SVC-4SW47YFZTEDKD3PK -m statistic --mode random --probability 0.5000000000 '
        '-j KUBE-SEP-UKSFD7AGPMPPLUHC\n', '')
    snapshot = parse_iptables_save(rules, backend="nft")
    svc4 = next(s for s in snapshot.services if s.service == "ns4/svc4:p80")
    assert {(e.ip, e.selected) for e in svc4.cluster} == {("10.180.0.4", False),
                                                          ("10.180.0.5", True)}


def test_unnamed_services_resolve_from_candidates() -> None:
    rules = "\n".join(line for line in without_endpoint_comments(IPTABLES_RULES).splitlines()
                      if not line.startswith("-A KUBE-SERVICES"))
    anonymous = parse_iptables_save(rules + "\n", backend="legacy")
    assert any(s.service.startswith("KUBE-SVC-") for s in anonymous.services)
    assert anonymous.selection() == {} or all(
        k.service_port.namespace.startswith("ns") for k in anonymous.selection())
    named = parse_iptables_save(rules + "\n", backend="legacy",
                                known_services=[f"ns{i}/svc{i}:p80" for i in range(1, 7)])
    assert sorted(s.service for s in named.services) == [f"ns{i}/svc{i}:p80" for i in range(1, 6)]


@pytest.mark.parametrize("text", [
    "*nat\n-A KUBE-SVC-X -j KUBE-SEP-Y\n",  # truncated: no COMMIT
    "*nat\n-A\nCOMMIT\n",
    "*nat\n-A KUBE-SEP-Y -j DNAT --to-destination nonsense\nCOMMIT\n",
    "*nat\n-A KUBE-SVC-X -j KUBE-SEP-MISSING\nCOMMIT\n",
    "*nat\ngarbage here\nCOMMIT\n",
])
def test_iptables_garbage(text: str) -> None:
    with pytest.raises(DataplaneParseError):
        parse_iptables_save(text, backend="legacy")


@pytest.mark.parametrize("lines_per_piece", [1, 3, 7, 10_000])
def test_iptables_pieces_parse_like_the_whole(lines_per_piece: int) -> None:
    # A dump arrives in pieces of whole lines; where it is cut must not matter, and an error
    # names the line counted from the start of the output, not of its piece.
    def fed(lines: list[str]) -> SaveParser:
        parser = SaveParser()
        for i in range(0, len(lines), lines_per_piece):
            parser.feed("".join(lines[i:i + lines_per_piece]))
        return parser

    lines = IPTABLES_RULES.splitlines(keepends=True)
    assert snapshot_of(fed(lines).finish(), backend="legacy") == parse_iptables_save(
        IPTABLES_RULES, backend="legacy")
    bad = next(i for i, line in enumerate(lines) if line.startswith("-A KUBE-SEP-")) + 5
    with pytest.raises(DataplaneParseError, match=rf"^line {bad + 1}: unexpected 'not a rule'"):
        fed([*lines[:bad], "not a rule\n", *lines[bad:]])


def test_no_kube_proxy_rules_is_empty_not_an_error() -> None:
    assert parse_iptables_save("*nat\n:PREROUTING ACCEPT [0:0]\nCOMMIT\n",
                               backend="nft").services == ()


def test_nft_chain_names() -> None:
    assert service_from_chain("service-ULMVA6XW-ns1/svc1/tcp/p80") == ("ns1/svc1:p80", "tcp")
    assert service_from_chain("local-ULMVA6XW-ns1/svc1/udp/") == ("ns1/svc1", "udp")
    assert endpoint_from_chain("endpoint-5OJB2KTY-ns1/svc1/tcp/p80__10.180.0.1/80") == (
        "10.180.0.1", 80)
    # IPv6 colons are written as dots in chain names (servicePortEndpointChainNameBase).
    assert endpoint_from_chain("endpoint-ABCDEFGH-ns1/svc1/tcp/p80__fd00.10.180..1/8080") == (
        "fd00:10:180::1", 8080)
    assert endpoint_from_chain("endpoint-ABCDEFGH-ns1/svc1/tcp/p80__truncat...") is None


def test_nft_recorded_listing() -> None:
    text = (FIXTURES / "nft-a-list-table.txt").read_text()
    snapshot = parse_nft_text(text)
    assert {s.service: s.cluster_ip for s in snapshot.services} == {
        f"ns{i}/svc{i}:p80": f"172.30.0.4{i}" for i in range(1, 6)}
    assert sum(snapshot.selection().values()) == 6


@pytest.mark.parametrize("text", [
    "not nft output",
    (FIXTURES / "nft-a-list-table.txt").read_text().rsplit("}", 1)[0],  # truncated
    (FIXTURES / "nft-a-list-table.txt").read_text() + "table ip more {\n",
])
def test_nft_garbage(text: str) -> None:
    with pytest.raises(DataplaneParseError):
        parse_nft_text(text)


def test_ipvs_weight_zero_is_not_selected() -> None:
    snapshot = parse_ipvs(virtuals())
    services = {(s.service, s.protocol): s for s in snapshot.services}
    dns = services[("10.96.0.10:53", "tcp")]
    assert [(e.ip, e.port, e.selected) for e in dns.cluster] == [
        ("10.244.0.2", 53, True), ("10.244.0.3", 53, False)]
    assert dns.cluster_ip == "10.96.0.10"
    assert services[("10.96.0.10:53", "udp")].cluster[0].selected
    v6 = services[("[fd00:10:96::a]:53", "tcp")]
    assert (v6.cluster_ip, v6.cluster[0].ip) == ("fd00:10:96::a", "fd00:10:244::2")
    assert snapshot.to_json()["mode"] == "ipvs"


def test_ipvs_firewall_mark_services_are_left_out() -> None:
    fwmark = service_attrs(payload(service_message(
        KUBE_DNS[0], attrs=u16(1, socket.AF_INET) + u32(5, 0x4000) + nla(6, b"rr\0"))))
    assert fwmark == {"IPVS_SVC_ATTR_AF": 2, "IPVS_SVC_ATTR_FWMARK": 0x4000}
    assert parse_ipvs([(fwmark, [])]).services == ()


GOOD_SERVICE, (GOOD_DEST, _) = virtuals()[1]


@pytest.mark.parametrize(("service", "dest"), [
    ({**GOOD_SERVICE, "IPVS_SVC_ATTR_PROTOCOL": 1}, GOOD_DEST),  # ICMP
    ({k: v for k, v in GOOD_SERVICE.items() if k != "IPVS_SVC_ATTR_PORT"}, GOOD_DEST),
    ({**GOOD_SERVICE, "IPVS_SVC_ATTR_PORT": 70000}, GOOD_DEST),
    ({**GOOD_SERVICE, "IPVS_SVC_ATTR_AF": 10}, GOOD_DEST),  # an IPv4 address said to be IPv6
    ({**GOOD_SERVICE, "IPVS_SVC_ATTR_ADDR": "nonsense"}, GOOD_DEST),
    (GOOD_SERVICE, {**GOOD_DEST, "IPVS_DEST_ATTR_WEIGHT": "1"}),
    (GOOD_SERVICE, {**GOOD_DEST, "IPVS_DEST_ATTR_WEIGHT": True}),
    (GOOD_SERVICE, {**GOOD_DEST, "IPVS_DEST_ATTR_PORT": -1}),
    # No ADDR_FAMILY: the address's family cannot be told; it stays undecoded.
    (GOOD_SERVICE, dest_attrs(payload(dest_message(KUBE_DNS[1].reals[0],
                                                   with_family=False)))),
])
def test_ipvs_garbage(service: Attrs, dest: Attrs) -> None:
    with pytest.raises(DataplaneParseError):
        parse_ipvs([(service, [dest])])


def test_ipvs_decoding_agrees_with_pyroute2() -> None:
    """Every attribute the agent decodes from the kernel-layout messages is what pyroute2
    makes of the same bytes (and nothing it needs is missing)."""
    for service in KUBE_DNS:
        message = service_message(service)
        ours = service_attrs(payload(message))
        assert set(ours) >= {"IPVS_SVC_ATTR_AF", "IPVS_SVC_ATTR_PROTOCOL",
                             "IPVS_SVC_ATTR_ADDR", "IPVS_SVC_ATTR_PORT"}
        theirs = pyroute2_decode(message, "IPVS_CMD_ATTR_SERVICE")
        assert ours == {name: theirs[name] for name in ours}
        for real in service.reals:
            message = dest_message(real)
            ours = dest_attrs(payload(message))
            assert len(ours) == 4
            theirs = pyroute2_decode(message, "IPVS_CMD_ATTR_DEST")
            assert ours == {name: theirs[name] for name in ours}


def test_a_virtual_server_is_asked_for_by_the_attributes_the_kernel_gave() -> None:
    """IPVS_CMD_GET_DEST names its virtual server by family, protocol, address and port, the
    bytes of the service reply (the kernel's lookup reads those: ip_vs_genl_parse_service)."""
    message = service_message(KUBE_DNS[4])  # IPv6
    asked = service_identity(payload(message))
    assert asked == (u16(1, socket.AF_INET6) + u16(2, socket.IPPROTO_TCP)
                     + nla(3, socket.inet_pton(socket.AF_INET6, "fd00:10:96::a"))
                     + nla(4, (53).to_bytes(2, "big")))


@pytest.mark.parametrize("cut", [21, 30, 60])
def test_ipvs_replies_cut_short(cut: int) -> None:
    with pytest.raises(DataplaneParseError):
        service_attrs(payload(service_message(KUBE_DNS[0]))[:cut])


def test_ipvs_attribute_of_the_wrong_size() -> None:
    with pytest.raises(DataplaneParseError, match="IPVS_DEST_ATTR_WEIGHT has 2 bytes"):
        dest_attrs(payload(dest_message(KUBE_DNS[0].reals[0]).replace(
            u32(4, 1), u16(4, 1))))  # as long, padded: the framing still holds
