"""The edits kube-proxy makes to its rules, in each mode, for the tests to apply."""

from __future__ import annotations

import re

from tests.netns import FIXTURES, Netns

_COMMENT = re.compile(r' -m comment --comment (?:"[^"]*"|\S+)')

IPTABLES_RULES = (FIXTURES / "iptables-nat.rules").read_text()
NFT_RULES = (FIXTURES / "nftables.nft").read_text()

# ns4/svc4:p80 has two endpoints; 10.180.0.4 goes not-ready. kube-proxy's (partial) sync
# rewrites the service chain without it and deletes its SEP chain in the same restore.
IPTABLES_DROP_SVC4_EP4 = """*nat
:KUBE-SVC-4SW47YFZTEDKD3PK - [0:0]
:KUBE-SEP-UKSFD7AGPMPPLUHC - [0:0]
-A KUBE-SVC-4SW47YFZTEDKD3PK -m comment --comment "ns4/svc4:p80 cluster IP" -m tcp -p tcp -d 172.30.0.44 --dport 80 ! -s 10.0.0.0/8 -j KUBE-MARK-MASQ
-A KUBE-SVC-4SW47YFZTEDKD3PK -m comment --comment "ns4/svc4:p80 -> 10.180.0.5:80" -j KUBE-SEP-C6EBXVWJJZMIWKLZ
-X KUBE-SEP-UKSFD7AGPMPPLUHC
COMMIT
"""

# nftables: the vmap is rewritten at once; the endpoint chain stays until a later sync.
NFT_DROP_SVC4_EP4 = """flush chain ip kube-proxy service-LAUZTJTB-ns4/svc4/tcp/p80
add rule ip kube-proxy service-LAUZTJTB-ns4/svc4/tcp/p80 ip daddr 172.30.0.44 ip saddr != 10.0.0.0/8 jump mark-for-masquerade
add rule ip kube-proxy service-LAUZTJTB-ns4/svc4/tcp/p80 numgen random mod 1 vmap { 0 : goto endpoint-5RFCDDV7-ns4/svc4/tcp/p80__10.180.0.5/80 }
"""

# ns5/svc5:p80 (session affinity): its only endpoint goes away; both the affinity rule and the
# load-balancing rule go with it.
IPTABLES_DROP_SVC5 = """*nat
:KUBE-SVC-NUKIZ6OKUXPJNT4C - [0:0]
-A KUBE-SVC-NUKIZ6OKUXPJNT4C -m comment --comment "ns5/svc5:p80 cluster IP" -m tcp -p tcp -d 172.30.0.45 --dport 80 ! -s 10.0.0.0/8 -j KUBE-MARK-MASQ
COMMIT
"""
NFT_DROP_SVC5 = """flush chain ip kube-proxy service-HVFWP5L3-ns5/svc5/tcp/p80
add rule ip kube-proxy service-HVFWP5L3-ns5/svc5/tcp/p80 ip daddr 172.30.0.45 ip saddr != 10.0.0.0/8 jump mark-for-masquerade
"""

# ns2/svc2:p80 has externalTrafficPolicy Local; a local endpoint appears: kube-proxy adds the
# KUBE-SVL chain and points external traffic at it.
IPTABLES_SVC2_LOCAL = """*nat
:KUBE-SVL-GNZBNJ2PO5MGZ6GT - [0:0]
:KUBE-SEP-LOCAL0000000000 - [0:0]
-A KUBE-SVL-GNZBNJ2PO5MGZ6GT -m comment --comment "ns2/svc2:p80 -> 10.180.0.9:80" -j KUBE-SEP-LOCAL0000000000
-A KUBE-SEP-LOCAL0000000000 -m comment --comment ns2/svc2:p80 -s 10.180.0.9 -j KUBE-MARK-MASQ
-A KUBE-SEP-LOCAL0000000000 -m comment --comment ns2/svc2:p80 -m tcp -p tcp -j DNAT --to-destination 10.180.0.9:80
-A KUBE-EXT-GNZBNJ2PO5MGZ6GT -j KUBE-SVL-GNZBNJ2PO5MGZ6GT
COMMIT
"""
NFT_SVC2_LOCAL = """add chain ip kube-proxy endpoint-LOCAL000-ns2/svc2/tcp/p80__10.180.0.9/80
add rule ip kube-proxy endpoint-LOCAL000-ns2/svc2/tcp/p80__10.180.0.9/80 meta l4proto tcp dnat to 10.180.0.9:80
add chain ip kube-proxy local-42NFTM6N-ns2/svc2/tcp/p80
add rule ip kube-proxy local-42NFTM6N-ns2/svc2/tcp/p80 numgen random mod 1 vmap { 0 : goto endpoint-LOCAL000-ns2/svc2/tcp/p80__10.180.0.9/80 }
add rule ip kube-proxy external-42NFTM6N-ns2/svc2/tcp/p80 goto local-42NFTM6N-ns2/svc2/tcp/p80
"""


def without_endpoint_comments(rules: str) -> str:
    """kube-proxy's large-cluster mode: no comments on SVC->SEP and SEP rules."""
    return "\n".join(
        _COMMENT.sub("", line) if line.startswith(("-A KUBE-SVC-", "-A KUBE-SEP-",
                                                   "-A KUBE-SVL-")) else line
        for line in rules.splitlines()) + "\n"


def load(netns: Netns, mode: str, *, large_cluster: bool = False) -> None:
    if mode == "nftables":
        netns.nft(NFT_RULES)
    else:
        rules = without_endpoint_comments(IPTABLES_RULES) if large_cluster else IPTABLES_RULES
        netns.restore(mode.split("-")[1], rules)


def apply(netns: Netns, mode: str, iptables_rules: str, nft_script: str) -> None:
    if mode == "nftables":
        netns.nft(nft_script)
    else:
        netns.restore(mode.split("-")[1], iptables_rules, noflush=True)

# ns1/svc1:p80 gains an endpoint, 10.180.0.9: a SEP chain (endpoint chain) never seen before.
IPTABLES_ADD_SVC1_EP9 = """*nat
:KUBE-SVC-XPGD46QRK7WJZT7O - [0:0]
:KUBE-SEP-NEWENDPOINT00000 - [0:0]
-A KUBE-SVC-XPGD46QRK7WJZT7O -m comment --comment "ns1/svc1:p80 cluster IP" -m tcp -p tcp -d 172.30.0.41 --dport 80 ! -s 10.0.0.0/8 -j KUBE-MARK-MASQ
-A KUBE-SVC-XPGD46QRK7WJZT7O -m comment --comment "ns1/svc1:p80 -> 10.180.0.1:80" -m statistic --mode random --probability 0.5000000000 -j KUBE-SEP-SXIVWICOYRO3J4NJ
-A KUBE-SVC-XPGD46QRK7WJZT7O -m comment --comment "ns1/svc1:p80 -> 10.180.0.9:80" -j KUBE-SEP-NEWENDPOINT00000
-A KUBE-SEP-NEWENDPOINT00000 -m comment --comment ns1/svc1:p80 -s 10.180.0.9 -j KUBE-MARK-MASQ
-A KUBE-SEP-NEWENDPOINT00000 -m comment --comment ns1/svc1:p80 -m tcp -p tcp -j DNAT --to-destination 10.180.0.9:80
COMMIT
"""
NFT_ADD_SVC1_EP9 = """add chain ip kube-proxy endpoint-NEWENDPT-ns1/svc1/tcp/p80__10.180.0.9/80
add rule ip kube-proxy endpoint-NEWENDPT-ns1/svc1/tcp/p80__10.180.0.9/80 meta l4proto tcp dnat to 10.180.0.9:80
flush chain ip kube-proxy service-ULMVA6XW-ns1/svc1/tcp/p80
add rule ip kube-proxy service-ULMVA6XW-ns1/svc1/tcp/p80 numgen random mod 2 vmap { 0 : goto endpoint-5OJB2KTY-ns1/svc1/tcp/p80__10.180.0.1/80 , 1 : goto endpoint-NEWENDPT-ns1/svc1/tcp/p80__10.180.0.9/80 }
"""

# IPv6 (ip6tables-nft): ns6/svc6:p80 gets one endpoint, then goes: its chain flushed and
# deleted (nothing jumps to it in this minimal set; the names are the tests' own).
IP6TABLES_ADD_SVC6 = """*nat
:KUBE-SVC-IP6SERVICE000000 - [0:0]
:KUBE-SEP-IP6ENDPOINT00000 - [0:0]
-A KUBE-SVC-IP6SERVICE000000 -m comment --comment "ns6/svc6:p80 -> [fd00::6]:80" -j KUBE-SEP-IP6ENDPOINT00000
-A KUBE-SEP-IP6ENDPOINT00000 -m comment --comment ns6/svc6:p80 -m tcp -p tcp -j DNAT --to-destination [fd00::6]:80
COMMIT
"""
IP6TABLES_DELETE_SVC6 = """*nat
:KUBE-SVC-IP6SERVICE000000 - [0:0]
-X KUBE-SVC-IP6SERVICE000000
COMMIT
"""
