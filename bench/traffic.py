"""Benchmark (issue 16): the traffic source's cost on a busy node.

A node namespace forwards real TCP SYNs from a client namespace to a "pods" namespace that
answers each with a RST (no listener): every SYN is one new conntrack flow and one NEW event in
the node. A generator process (its own CPU, not counted) sends ``--other`` flows a second to
addresses in no episode and ``--followed-rate`` a second to ``--followed`` endpoints in
episodes. The agent's traffic source (``open_conntrack``, the ``TrafficBook`` the tracker would
hold, 200 episodes started) runs in this process, which does nothing else; reported: its CPU
(``time.process_time``) per wall second while the traffic flows, RSS growth, connections
delivered against sent, lost events, and the event-to-episode latency (kernel event timestamp,
``nf_conntrack_timestamp=1`` in the node namespace, to the moment the book recorded it).
Then the same with the kernel filter replaced by one accepting everything, to show what the
filter saves.

    .venv/bin/python -m bench.traffic [--seconds 20] [--other 20000] [--followed 200]
                                      [--followed-rate 500]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import socket
import struct
import subprocess
import sys
import time
import uuid
from typing import Any

from prometheus_client import CollectorRegistry

from observer.clock import SystemClock
from observer.episodes.model import Episode
from observer.episodes.traffic import TrafficBook
from observer.export.metrics import AgentMetrics, configure_exposition
from observer.tasks import cancel_and_wait
from observer.testing.rss import rss_mib
from observer.traffic import conntrack
from observer.traffic.source import open_conntrack
from observer.values import Connection, EndpointKey, ServicePort, Timestamp

CLIENT, NODE_CLIENT, NODE_PODS, PODS = "10.250.0.2", "10.250.0.1", "10.251.0.1", "10.251.0.2"
PORT = 8080


def followed_ip(i: int) -> str:
    return f"10.180.0.{i + 1}" if i < 250 else f"10.180.{1 + i // 250}.{i % 250 + 1}"


def other_ip(i: int) -> str:
    return f"10.181.{(i >> 8) & 255}.{i & 255 or 1}"


# --- the generator (a child process in the client namespace) ----------------------------------

def _checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return int(~total & 0xFFFF)


def syn(src: str, dst: str, sport: int, dport: int) -> bytes:
    """An IPv4 TCP SYN (the kernel fills in the IP checksum and total length)."""
    tcp = struct.pack("!HHIIBBHHH", sport, dport, 1, 0, 5 << 4, 0x02, 64240, 0, 0)
    pseudo = socket.inet_aton(src) + socket.inet_aton(dst) + struct.pack("!BBH", 0, 6, len(tcp))
    tcp = tcp[:16] + struct.pack("!H", _checksum(pseudo + tcp)) + tcp[18:]
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 0, 0, 0, 64, 6, 0, socket.inet_aton(src),
                     socket.inet_aton(dst))
    return ip + tcp


def generate(other: int, followed: int, followed_rate: int, seconds: float) -> None:
    """Send the flows, 100 batches a second; print what was sent as JSON."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
    pool_other = [(syn(CLIENT, other_ip(i % 4096), 1024 + i // 4096, PORT), other_ip(i % 4096))
                  for i in range(other * 5)]  # each tuple again after 5 s: its flow is gone
    pool_followed = [(syn(CLIENT, followed_ip(i % followed), 1024 + i // followed, PORT),
                      followed_ip(i % followed)) for i in range(followed_rate * 20)]
    sent = {"other": 0, "followed": 0}
    start = time.monotonic()
    tick = 0
    while (now := time.monotonic()) - start < seconds:
        tick += 1
        for pool, rate, kind in ((pool_other, other, "other"),
                                 (pool_followed, followed_rate, "followed")):
            due = int(rate * tick / 100) - int(rate * (tick - 1) / 100)
            for _ in range(due):
                packet, dst = pool[sent[kind] % len(pool)]
                sock.sendto(packet, (dst, 0))
                sent[kind] += 1
        time.sleep(max(0.0, start + tick / 100 - time.monotonic()))
    print(json.dumps({**sent, "seconds": now - start}))


# --- the measurement -----------------------------------------------------------------------------

class Topology(contextlib.ExitStack):
    def __init__(self) -> None:
        super().__init__()
        tag = uuid.uuid4().hex[:6]
        self.node, self.client, self.pods = (f"obs-bench-{r}-{tag}" for r in ("n", "c", "p"))

    def ns(self, name: str, *argv: str) -> None:
        subprocess.run(["ip", "netns", "exec", name, *argv], check=True, timeout=30,
                       capture_output=True)

    def __enter__(self) -> Topology:
        super().__enter__()
        for name in (self.node, self.client, self.pods):
            subprocess.run(["ip", "netns", "add", name], check=True, timeout=30)
            self.callback(subprocess.run, ["ip", "netns", "del", name], check=False, timeout=30)
        for peer, near, far in ((self.client, NODE_CLIENT, CLIENT), (self.pods, NODE_PODS, PODS)):
            veth = f"v{uuid.uuid4().hex[:8]}"
            subprocess.run(["ip", "link", "add", veth, "netns", self.node, "type", "veth",
                            "peer", "name", "eth0", "netns", peer], check=True, timeout=30)
            self.ns(self.node, "ip", "addr", "add", f"{near}/24", "dev", veth)
            self.ns(self.node, "ip", "link", "set", veth, "up")
            self.ns(peer, "ip", "addr", "add", f"{far}/24", "dev", "eth0")
            self.ns(peer, "ip", "link", "set", "eth0", "up")
            self.ns(peer, "ip", "route", "add", "default", "via", near)
        self.ns(self.pods, "ip", "link", "set", "lo", "up")
        for prefix in ("10.180.0.0/16", "10.181.0.0/16"):
            self.ns(self.pods, "ip", "route", "add", "local", prefix, "dev", "lo")  # any address
            self.ns(self.node, "ip", "route", "add", prefix, "via", PODS)
        for setting in ("net.ipv4.ip_forward=1", "net.netfilter.nf_conntrack_timestamp=1",
                        "net.netfilter.nf_conntrack_tcp_timeout_close=1"):
            self.ns(self.node, "sysctl", "-qw", setting)
        # Connection tracking runs where a rule uses it (kube-proxy's NAT rules would).
        subprocess.run(["ip", "netns", "exec", self.node, "nft", "-f", "-"], check=True,
                       input="add table ip t\nadd chain ip t c { type filter hook forward "
                             "priority 0 ; }\nadd rule ip t c ct state new counter\n",
                       text=True, timeout=30)
        return self


class Recording(TrafficBook):
    """The book the agent makes, with the agent's metrics as its observer, also noting each
    connection's delay from the kernel."""

    def __init__(self, listener: Any) -> None:
        self.registry = CollectorRegistry()
        super().__init__(window=600.0, observers=AgentMetrics(self.registry, proxy_mode="nftables"),
                         listener=listener)
        self.delays: list[float] = []

    def delivered(self) -> int:
        return round(sum(self.registry.get_sample_value(
            "endpoint_propagation_connections_after_removal_total",
            {"source": source, "after": after}) or 0.0
            for source in ("local", "forwarded") for after in ("not_ready", "stopped")))

    def connection(self, connection: Connection) -> None:
        super().connection(connection)
        self.delays.append(time.time() - connection.at.wall)


class Errors:
    def __init__(self) -> None:
        self.reasons: dict[str, int] = {}

    def traffic_error(self, reason: str) -> None:
        self.reasons[reason] = self.reasons.get(reason, 0) + 1


async def measure(topology: Topology, args: argparse.Namespace, *, exact: bool
                  ) -> dict[str, Any]:
    errors = Errors()
    source = await open_conntrack(topology.node, clock=SystemClock(), errors=errors)
    book = Recording(source)
    for i in range(args.followed):
        followed = Episode(
            key=EndpointKey(ServicePort("bench", f"svc{i}", "http", "TCP"), followed_ip(i),
                            PORT), cause="deletion", local=False, pod="", pod_uid="",
            not_ready=Timestamp(time.monotonic(), time.time(), "slice_watch", 0.0),
            stopped=Timestamp(time.monotonic(), time.time(), "pod_watch", 0.0))
        book.started(followed, time.monotonic())  # as the tracker tells it: stopped pods,
        book.stopped(followed)  # each connection counts as it comes
    task = asyncio.create_task(source.run(book))
    try:
        while len(source.filtered) != args.followed:  # noqa: ASYNC110 (one loop turn)
            await asyncio.sleep(0)
        if not exact:
            conntrack.attach(source.events, None)  # what the agent would do without the filter
        await asyncio.sleep(1.0)
        rss_before = rss_mib()
        generator = await asyncio.create_subprocess_exec(
            "ip", "netns", "exec", topology.client, sys.executable, "-m", "bench.traffic",
            "--generate", "--seconds", str(args.seconds), "--other", str(args.other),
            "--followed", str(args.followed), "--followed-rate", str(args.followed_rate),
            stdout=asyncio.subprocess.PIPE)
        before, wall = os.times(), time.monotonic()
        out, _ = await generator.communicate()
        after, wall = os.times(), time.monotonic() - wall
        user, system = after.user - before.user, after.system - before.system
        await asyncio.sleep(0.5)  # the last events
        sent = json.loads(out)
    finally:
        await cancel_and_wait(task)
        source.close()
    delays = sorted(book.delays)
    return {
        "kernel_filter": "exact" if exact else "accept-all",
        "sent_per_second": {k: round(v / sent["seconds"]) for k, v in sent.items()
                            if k != "seconds"},
        "cpu_share_of_a_core": round((user + system) / wall, 4),
        "user_share": round(user / wall, 4), "system_share": round(system / wall, 4),
        "datagrams_read": source.datagrams, "followed_sent": sent["followed"],
        "followed_delivered": book.delivered(),
        "errors": errors.reasons,
        "rss_growth_mib": round(rss_mib() - rss_before, 1),
        "latency_ms": {"p50": round(delays[len(delays) // 2] * 1000, 2),
                       "p99": round(delays[int(len(delays) * 0.99)] * 1000, 2),
                       "max": round(delays[-1] * 1000, 2)} if delays else None,
    }


async def bench(args: argparse.Namespace) -> dict[str, Any]:
    with Topology() as topology:
        runs = [await measure(topology, args, exact=True)]
        if not args.exact_only:
            runs.append(await measure(topology, args, exact=False))
    return {"machine": {"cpu": platform.processor() or platform.machine(),
                        "cpus": os.cpu_count(), "python": platform.python_version(),
                        "kernel": platform.release()},
            "seconds": args.seconds, "runs": runs}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--other", type=int, default=20_000)
    parser.add_argument("--followed", type=int, default=200)
    parser.add_argument("--followed-rate", type=int, default=500)
    parser.add_argument("--exact-only", action="store_true",
                        help="skip the run without the kernel filter")
    parser.add_argument("--generate", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.generate:
        generate(args.other, args.followed, args.followed_rate, args.seconds)
        return
    configure_exposition()
    print(json.dumps(asyncio.run(bench(args)), indent=2))


if __name__ == "__main__":
    main()
