"""Cilium's load-balancing maps, read from real BPF maps in the kernel.

Each test mounts a BPF filesystem of its own, creates and pins maps with Cilium's v1.18
layouts there, and fills them as Cilium's agent does (``observer.lab.cilium.CiliumAgent``
follows its reconciler's order of writes) for a minikube-like cluster: the API server and
kube-dns — the same services the IPVS tests' fixture holds (observer/testing/
ipvs_netlink.py), with an IPv6 frontend too.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Collection, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from observer.clock import Clock, SystemClock
from observer.dataplane import bpf
from observer.dataplane.cilium import decode
from observer.dataplane.cilium.changes import CiliumChanges
from observer.dataplane.cilium.maps import (
    BACKEND_KEY,
    BACKEND_MAPS,
    PIN_DIR,
    SERVICE_KEY,
    SERVICE_MAPS,
    SERVICE_VALUE,
    CiliumMaps,
)
from observer.dataplane.cilium.source import DeltaPollingSource
from observer.dataplane.cilium.state import CiliumReader
from observer.dataplane.commands import CommandError, CommandRunner
from observer.dataplane.mode import Wiring
from observer.dataplane.model import DataplaneChange, DataplaneParseError
from observer.dataplane.modes import detect, open_source
from observer.dataplane.names import FrontendNames
from observer.lab.cilium import ACTIVE, MAINTENANCE, TERMINATING, CiliumAgent
from observer.tasks import cancel_and_wait
from observer.values import EndpointKey, ServicePort
from tests import noisy
from tests.agent.harness import until
from tests.conftest import REPO, require_root, without_capabilities
from tests.netns import Netns

UDP = socket.IPPROTO_UDP
API = ServicePort("default", "kubernetes", "https", "TCP")
DNS_TCP = ServicePort("kube-system", "kube-dns", "dns-tcp", "TCP")
DNS = ServicePort("kube-system", "kube-dns", "dns", "UDP")
METRICS = ServicePort("kube-system", "kube-dns", "metrics", "TCP")
DNS6 = ServicePort("kube-system", "kube-dns-v6", "dns-tcp", "TCP")
WEB = ServicePort("default", "web", "http", "TCP")  # created by a test
SLICES = {("192.168.49.2", 8443, "TCP"): {API}, ("10.244.0.2", 53, "TCP"): {DNS_TCP},
          ("10.244.0.3", 53, "TCP"): {DNS_TCP}, ("10.244.0.2", 53, "UDP"): {DNS},
          ("10.244.0.2", 9153, "TCP"): {METRICS}, ("fd00:10:244::2", 53, "TCP"): {DNS6},
          ("10.244.0.9", 8080, "TCP"): {WEB}}


def candidates(ip: str, port: int, protocol: str) -> Collection[ServicePort]:
    return SLICES.get((ip, port, protocol), set())


@pytest.fixture
def bpffs() -> Iterator[str]:
    """A BPF filesystem of the test's own (unmounted after, whatever happens)."""
    require_root()
    root = tempfile.mkdtemp(prefix="obs-bpffs-")
    subprocess.run(["mount", "-t", "bpf", "bpf", root], check=True, timeout=30)
    try:
        yield root
    finally:
        subprocess.run(["umount", root], check=False, timeout=30)
        os.rmdir(root)


def minikube(root: str) -> CiliumAgent:
    agent = CiliumAgent(root, families=(4, 6))
    agent.upsert("10.96.0.1", 443, [("192.168.49.2", 8443, ACTIVE)])
    agent.upsert("10.96.0.10", 53, [("10.244.0.2", 53, ACTIVE), ("10.244.0.3", 53, ACTIVE)])
    agent.upsert("10.96.0.10", 9153, [("10.244.0.2", 9153, ACTIVE)])
    agent.upsert("10.96.0.10", 53, [("10.244.0.2", 53, ACTIVE)], protocol=UDP)
    agent.upsert("fd00:10:96::a", 53, [("fd00:10:244::2", 53, ACTIVE)])
    return agent


async def full_read(changes: CiliumChanges, started: float | None = None
                    ) -> dict[ServicePort, dict[EndpointKey, bool]]:
    """A full read, installed: the selection of each service port it changed."""
    install = await asyncio.to_thread(changes.full())
    return {port: selection for port, (selection, _) in install(
        time.monotonic() if started is None else started).items()}


async def parts_read(changes: CiliumChanges, *ports: ServicePort, started: float | None = None
                     ) -> dict[ServicePort, tuple[dict[EndpointKey, bool], float]] | None:
    """A read of these service ports' frontends, installed (None: they have none)."""
    read = changes.parts(ports)
    if read is None:
        return None
    install = await asyncio.to_thread(read)
    return install(time.monotonic() if started is None else started)


def observer_dataplane(*args: str, user: list[str] | None = None
                       ) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*(user or []), sys.executable, "-m", "observer.cli", "dataplane",
                           "--mode", "cilium", *args], cwd=REPO, capture_output=True,
                          text=True, timeout=60, check=False)


def test_the_dump_shows_every_frontend_and_what_new_connections_may_reach(bpffs: str) -> None:
    agent = minikube(bpffs)
    agent.upsert("10.96.0.10", 53, [("10.244.0.2", 53, ACTIVE),
                                    ("10.244.0.3", 53, TERMINATING)])
    # With the libraries warning as it runs: stdout is the JSON document and nothing else.
    result = noisy.observer("dataplane", "--mode", "cilium", "--bpf-root", bpffs, "--json")
    assert result.returncode == 0, result.stderr
    assert all(mark in result.stderr for mark in noisy.MARKS), result.stderr
    document = json.loads(result.stdout)
    assert document["mode"] == "cilium"
    got = {(s["service"], s["protocol"], s["cluster_ip"]):
           [(e["ip"], e["port"], e["selected"]) for e in s["paths"]["cluster"]]
           for s in document["services"]}
    assert got == {
        ("10.96.0.1:443", "tcp", "10.96.0.1"): [("192.168.49.2", 8443, True)],
        # The terminating backend keeps its slot (its connections go on), above count.
        ("10.96.0.10:53", "tcp", "10.96.0.10"): [("10.244.0.2", 53, True),
                                                 ("10.244.0.3", 53, False)],
        ("10.96.0.10:53", "udp", "10.96.0.10"): [("10.244.0.2", 53, True)],
        ("10.96.0.10:9153", "tcp", "10.96.0.10"): [("10.244.0.2", 9153, True)],
        ("[fd00:10:96::a]:53", "tcp", "fd00:10:96::a"): [("fd00:10:244::2", 53, True)]}
    agent.close()


async def test_frontends_take_their_service_ports_names(bpffs: str) -> None:
    minikube(bpffs).close()
    snapshot = await CiliumReader(bpffs, FrontendNames(candidates)).read()
    assert {s.service for s in snapshot.services} == {str(p) for p in (
        API, DNS_TCP, DNS, METRICS, DNS6)}
    assert snapshot.selection()[EndpointKey(DNS6, "fd00:10:244::2", 53)] is True


async def test_each_read_tells_only_the_service_ports_that_changed(bpffs: str) -> None:
    agent = minikube(bpffs)
    changes = CiliumChanges(bpffs, FrontendNames(candidates))
    assert set(await full_read(changes)) == {API, DNS_TCP, DNS, METRICS, DNS6}
    assert await full_read(changes) == {}  # nothing written: nothing decoded
    ready, leaving = EndpointKey(DNS_TCP, "10.244.0.2", 53), EndpointKey(DNS_TCP, "10.244.0.3",
                                                                          53)
    # Graceful termination: the backend turns terminating, keeps a slot past count.
    agent.upsert("10.96.0.10", 53, [("10.244.0.2", 53, ACTIVE),
                                    ("10.244.0.3", 53, TERMINATING)])
    assert await full_read(changes) == {DNS_TCP: {ready: True, leaving: False}}
    # Removed: its slot and (orphaned) its backend entry go; new connections went to the
    # same endpoints before: no change to tell.
    agent.upsert("10.96.0.10", 53, [("10.244.0.2", 53, ACTIVE)])
    assert await full_read(changes) == {}
    # Nothing Ready: the terminating backends are used (count counts them), not those in
    # maintenance.
    agent.upsert("10.96.0.10", 53, [("10.244.0.2", 53, TERMINATING),
                                    ("10.244.0.3", 53, TERMINATING),
                                    ("10.244.0.4", 53, MAINTENANCE)])
    assert await full_read(changes) == {DNS_TCP: {
        ready: True, leaving: True, EndpointKey(DNS_TCP, "10.244.0.4", 53): False}}
    # The frontend deleted: its port's selection is empty.
    agent.delete("10.96.0.10", 53)
    assert await full_read(changes) == {DNS_TCP: {}}
    agent.close()


async def test_a_backend_deleted_before_the_slots_naming_it_is_not_selected(bpffs: str
                                                                           ) -> None:
    """The reconciler deletes an orphaned backend before it rewrites the slots: a full read
    in between finds a slot naming a backend that is gone, which the datapath cannot reach."""
    agent = minikube(bpffs)
    changes = CiliumChanges(bpffs, FrontendNames(candidates))
    await full_read(changes)
    ready, leaving = EndpointKey(DNS_TCP, "10.244.0.2", 53), EndpointKey(DNS_TCP, "10.244.0.3",
                                                                          53)
    backend = agent.backend_ids["10.244.0.3", 53, socket.IPPROTO_TCP]
    bpf.delete(agent.backends[4], BACKEND_KEY.pack(backend))
    assert await full_read(changes) == {DNS_TCP: {ready: True, leaving: False}}
    assert set(changes.state.gone) == {backend}
    agent.upsert("10.96.0.10", 53, [("10.244.0.2", 53, ACTIVE)])  # the slots rewritten
    assert await full_read(changes) == {}  # (the same endpoints chosen)
    assert changes.state.gone == {}
    agent.close()


class Metrics:
    def __init__(self) -> None:
        self.scans = 0
        self.errors: list[str] = []

    def scan(self, seconds: float) -> None:
        self.scans += 1

    def error(self, reason: str) -> None:
        self.errors.append(reason)

    def drift(self, count: int) -> None:
        raise AssertionError("polling finds no drift")



@dataclass
class Polled:
    agent: CiliumAgent
    source: DeltaPollingSource
    changes: CiliumChanges
    metrics: Metrics
    seen: list[DataplaneChange]


@contextlib.asynccontextmanager
async def polling(bpffs: str, *, full_interval: float = 0.01,
                  clock: Clock | None = None) -> AsyncIterator[Polled]:
    """The minikube maps, polled by the agent's source from its first read on: read by parts
    every 10 ms, and in full every ``full_interval``."""
    agent = minikube(bpffs)
    metrics = Metrics()
    changes = CiliumChanges(bpffs, FrontendNames(candidates))
    source = DeltaPollingSource(changes=changes, clock=clock or SystemClock(), metrics=metrics,
                                interval=0.01, full_interval=full_interval)
    seen: list[DataplaneChange] = []
    task = asyncio.create_task(source.run(seen.append))
    try:
        # (The read's metric comes as its thread ends; it is installed in the event loop next.)
        await until(lambda: changes.full_started is not None, "the first read installed")
        yield Polled(agent, source, changes, metrics, seen)
    finally:
        await cancel_and_wait(task)
        agent.close()


async def test_the_polling_source_stamps_each_change_once(bpffs: str) -> None:
    async with polling(bpffs) as polled:
        agent, source, metrics, seen = polled.agent, polled.source, polled.metrics, polled.seen
        assert seen == []  # the first read is the baseline
        assert source.selected(EndpointKey(DNS_TCP, "10.244.0.3", 53)) is True
        agent.upsert("10.96.0.10", 53, [("10.244.0.2", 53, ACTIVE),
                                        ("10.244.0.3", 53, TERMINATING)])
        await until(lambda: bool(seen), "the change")
        scans = metrics.scans
        await until(lambda: metrics.scans >= scans + 2, "two more reads")
        assert [(c.key, c.selected) for c in seen] == [
            (EndpointKey(DNS_TCP, "10.244.0.3", 53), False)]
        assert seen[0].at.source == "dataplane"
        assert seen[0].at.precision > 0
        assert source.selected(EndpointKey(DNS_TCP, "10.244.0.3", 53)) is False


async def test_reads_by_parts_look_up_the_frontends_of_the_ports_asked_for(bpffs: str) -> None:
    agent = minikube(bpffs)
    changes = CiliumChanges(bpffs, FrontendNames(candidates))
    await full_read(changes, started=1.0)
    ready = EndpointKey(DNS_TCP, "10.244.0.2", 53)
    assert await parts_read(changes, ServicePort("default", "none", "", "TCP")) is None
    assert await parts_read(changes, DNS_TCP, started=2.0) == {}  # as the full read found
    agent.upsert("10.96.0.10", 53, [("10.244.0.2", 53, ACTIVE),
                                    ("10.244.0.3", 53, TERMINATING)])
    agent.upsert("10.96.0.10", 9153, [("10.244.0.5", 9153, ACTIVE)])  # not asked for
    # (Reads by parts take only the slots new connections are sent to: the terminating
    # backend is not among them, which says the same as "not selected".)
    assert await parts_read(changes, DNS_TCP, started=3.0) == {DNS_TCP: ({ready: True}, 2.0)}
    # A full read that started before the read by parts does not undo what that found...
    assert await full_read(changes, started=2.5) == {
        METRICS: {EndpointKey(METRICS, "10.244.0.5", 9153): True}}
    # ... one that started after it takes over (the same selection: no change to report).
    assert await full_read(changes, started=4.0) == {}
    assert changes.parts_read == {}
    agent.close()


async def test_reads_by_parts_compare_frontends_with_what_was_installed_last(
        bpffs: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A frontend first read by parts after a full read is compared with the bytes that read
    found (decoded only if they differ); one read by parts since, with that read's."""
    agent = minikube(bpffs)
    changes = CiliumChanges(bpffs, FrontendNames(candidates))
    decoded: list[object] = []
    decode_selection = decode.decode_selection  # counted: what the comparison spares

    def counted(*args: Any) -> object:
        decoded.append(args[0])
        return decode_selection(*args)

    monkeypatch.setattr(decode, "decode_selection", counted)
    both = [("10.244.0.2", 53, ACTIVE), ("10.244.0.3", 53, ACTIVE)]
    leaving = [("10.244.0.2", 53, ACTIVE), ("10.244.0.3", 53, TERMINATING)]
    ready = EndpointKey(DNS_TCP, "10.244.0.2", 53)
    other = EndpointKey(DNS_TCP, "10.244.0.3", 53)
    await full_read(changes, started=1.0)
    assert await parts_read(changes, DNS_TCP, started=2.0) == {}
    assert decoded == []  # the same bytes as the full read's
    agent.upsert("10.96.0.10", 53, leaving)
    assert await parts_read(changes, DNS_TCP, started=3.0) == {DNS_TCP: ({ready: True}, 2.0)}
    assert len(decoded) == 1
    assert await parts_read(changes, DNS_TCP, started=4.0) == {}
    assert len(decoded) == 1  # the same bytes as its last read's
    # Back, as a full read that started after the read by parts finds...
    agent.upsert("10.96.0.10", 53, both)
    assert await full_read(changes, started=5.0) == {DNS_TCP: {ready: True, other: True}}
    # ... and leaving again: the next read by parts compares with what that full read found.
    agent.upsert("10.96.0.10", 53, leaving)
    assert await parts_read(changes, DNS_TCP, started=6.0) == {DNS_TCP: ({ready: True}, 5.0)}
    agent.close()


async def test_a_frontend_cilium_is_writing_is_left_for_the_next_read_by_parts(
        bpffs: str) -> None:
    """The reconciler writes backends, then slots, then the master, and deletes orphaned
    backends first: a read by parts that sees a write half-done leaves the frontend out."""
    agent = minikube(bpffs)
    changes = CiliumChanges(bpffs, FrontendNames(candidates))
    await full_read(changes)

    def slot(number: int) -> bytes:
        return SERVICE_KEY[4].pack(socket.inet_aton("10.96.0.10"), (53).to_bytes(2, "big"),
                                   number, socket.IPPROTO_TCP, 0)

    bpf.update(agent.services[4], slot(0), SERVICE_VALUE.pack(0, 3, 0, 0, 0, 0))  # 3 counted
    assert await parts_read(changes, DNS_TCP) == {}
    bpf.update(agent.services[4], slot(0), SERVICE_VALUE.pack(0, 2, 0, 0, 0, 0))
    bpf.update(agent.services[4], slot(2), SERVICE_VALUE.pack(99, 0, 0, 0, 0, 0))  # no backend
    assert await parts_read(changes, DNS_TCP) == {}
    agent.upsert("10.96.0.10", 53, [("10.244.0.2", 53, ACTIVE)])  # the write completes
    assert DNS_TCP in (await parts_read(changes, DNS_TCP) or {})
    agent.close()


class Skewed:
    """The system's clocks, moved on by ``offset`` seconds when a test says so."""

    def __init__(self) -> None:
        self.offset = 0.0

    def monotonic(self) -> float:
        return time.monotonic() + self.offset

    def wall(self) -> float:
        return time.time() + self.offset


async def test_an_expected_change_is_bounded_by_reads_by_parts(bpffs: str) -> None:
    """Each change the slices announce: its port read every interval until it shows, the
    change bounded by the read before that showed none, or by the announcement."""
    clock = Skewed()
    async with polling(bpffs, full_interval=3600.0, clock=clock) as polled:
        agent, source, changes, seen = polled.agent, polled.source, polled.changes, polled.seen
        clock.offset = 1000.0  # the only full read is 1000 s old
        leaving = EndpointKey(DNS_TCP, "10.244.0.3", 53)
        source.expect(leaving, False)  # its slice says it left Ready
        (frontend,) = changes.by_port[DNS_TCP]
        await until(lambda: frontend in changes.parts_read, "the port read at once")
        covered = changes.parts_read[frontend]
        written = clock.monotonic()
        agent.upsert("10.96.0.10", 53, [("10.244.0.2", 53, ACTIVE),
                                        ("10.244.0.3", 53, TERMINATING)])
        agent.upsert("10.96.0.10", 9153, [("10.244.0.5", 9153, ACTIVE)])  # unannounced
        await until(lambda: bool(seen), "the change")
        await until(lambda: not source.expected, "the expectation met")
        (change,) = seen
        assert (change.key, change.selected) == (leaving, False)
        assert change.at.mono >= covered
        assert abs(change.at.mono - written) <= change.at.precision < 1000.0
        # The change no slice announced waits for the next full read.
        assert source.selected(EndpointKey(METRICS, "10.244.0.2", 9153)) is True
        # Written as soon as announced, perhaps before any read of its port: bounded by the
        # announcement (Cilium answers the same slice update).
        announced = clock.monotonic()
        source.expect(ready := EndpointKey(DNS_TCP, "10.244.0.2", 53), False)
        agent.upsert("10.96.0.10", 53, [("10.244.0.4", 53, ACTIVE),
                                        ("10.244.0.2", 53, TERMINATING),
                                        ("10.244.0.3", 53, TERMINATING)])
        await until(lambda: len(seen) == 3, "the next two changes")
        gone = {(c.key, c.selected): c.at for c in seen}[ready, False]
        assert announced <= gone.mono
        assert gone.precision < 1000.0
        await until(lambda: not source.expected, "the expectation met")
        # An expectation already met is none; one never met is given up after expect_for.
        source.expect(EndpointKey(API, "192.168.49.2", 8443), True)
        assert not source.expected
        source.expect(EndpointKey(API, "192.168.49.2", 8443), False)
        assert source.expected
        clock.offset += source.expect_for
        await until(lambda: not source.expected, "the expectation given up")


async def test_a_port_expected_before_cilium_programs_it_is_found_by_a_full_read(
        bpffs: str) -> None:
    """A new Service: its endpoint turns Ready before Cilium writes its frontend, which no
    read by parts can find. Full reads come at the interval until one does."""
    async with polling(bpffs, full_interval=3600.0) as polled:
        key = EndpointKey(WEB, "10.244.0.9", 8080)
        polled.source.expect(key, True)
        assert polled.source.selected(key) is None
        polled.agent.upsert("10.96.0.20", 80, [("10.244.0.9", 8080, ACTIVE)])
        await until(lambda: polled.source.selected(key) is True, "the new frontend")
        await until(lambda: not polled.source.expected, "the expectation met")


async def test_a_rollout_of_many_services_at_once_is_read_by_parts(bpffs: str) -> None:
    """More service ports expected at once than a read by parts takes in the event loop
    (a rollout of many Services): read in a worker thread, every change found. The only full
    read is the first: an unannounced change would wait an hour."""
    agent = CiliumAgent(bpffs)
    services = {f"10.96.1.{i}": ServicePort("default", f"web-{i}", "http", "TCP")
                for i in range(1, 81)}
    slices = {(f"10.244.{side}.{i}", 8080, "TCP"): {port}
              for i, port in enumerate(services.values(), start=1) for side in (1, 2)}
    for i, vip in enumerate(services, start=1):
        agent.upsert(vip, 80, [(f"10.244.1.{i}", 8080, ACTIVE), (f"10.244.2.{i}", 8080, ACTIVE)])
    changes = CiliumChanges(bpffs, FrontendNames(
        lambda ip, port, protocol: slices.get((ip, port, protocol), set())))
    source = DeltaPollingSource(changes=changes, clock=SystemClock(), metrics=Metrics(),
                                interval=0.01, full_interval=3600.0)
    seen: list[DataplaneChange] = []
    task = asyncio.create_task(source.run(seen.append))
    try:
        await until(lambda: changes.full_started is not None, "the first read installed")
        leaving = set()
        for i, port in enumerate(services.values(), start=1):
            leaving.add(key := EndpointKey(port, f"10.244.2.{i}", 8080))
            source.expect(key, False)
        for i, vip in enumerate(services, start=1):
            agent.upsert(vip, 80, [(f"10.244.1.{i}", 8080, ACTIVE),
                                   (f"10.244.2.{i}", 8080, TERMINATING)])
        await until(lambda: len(seen) == len(services), "every change")
        assert {(c.key, c.selected) for c in seen} == {(key, False) for key in leaving}
        await until(lambda: not source.expected, "the expectations met")
    finally:
        await cancel_and_wait(task)
        agent.close()


def test_a_read_diffed_stretch_by_stretch_finds_what_a_full_compare_finds() -> None:
    """``_Raw.diff`` decodes only the stretches of a read that differ from the last; checked
    against a compare of every entry on a real hash map whose entries are changed, updated
    in place (which moves them first in their bucket), removed and added, as the kernel
    orders them."""
    require_root()
    rng = random.Random(17)
    layout = SERVICE_KEY[4]
    fd = bpf.map_create(bpf.MAP_TYPE_HASH, layout.size, SERVICE_VALUE.size, 8192, "obs_diff")
    try:
        def key(n: int) -> bytes:
            return layout.pack(n.to_bytes(4, "big"), b"\x00\x50", n % 7, 6, 0)

        def value(n: int) -> bytes:
            return SERVICE_VALUE.pack(n, n % 5, 1, 0, 0, 0)

        for n in range(3000):
            bpf.update(fd, key(n), value(n))
        raw = decode.RawMap()
        assert raw.diff(*bpf.lookup_batch(fd, layout.size, SERVICE_VALUE.size), layout,
                        SERVICE_VALUE) is not None
        known = {key(n): value(n) for n in range(3000)}
        sizes = set()
        for round_ in range(40):
            live = sorted(known)
            for k in rng.sample(live, 60):  # changed, or updated unchanged: moved
                known[k] = value(rng.randrange(1 << 20)) if rng.random() < 0.5 else known[k]
                bpf.update(fd, k, known[k])
            if round_ % 4 == 3:  # as many removed as added: the same length, other keys
                for k in rng.sample(live, 20):
                    bpf.delete(fd, k)
                    del known[k]
            if round_ % 4 in (1, 3):
                for n in rng.sample(range(3000, 6000), 20):
                    known[key(n)] = value(n)
                    bpf.update(fd, key(n), value(n))
            keys, values = bpf.lookup_batch(fd, layout.size, SERVICE_VALUE.size)
            sizes.add(len(keys))
            was = decode.entries_of(raw.keys, raw.values, layout, SERVICE_VALUE)
            diff = raw.diff(keys, values, layout, SERVICE_VALUE)
            assert diff is not None
            changed, removed = diff
            assert dict(changed) == {k: v for k, v in known.items() if was.get(k) != v}
            assert len(changed) == len(dict(changed))
            assert sorted(removed) == sorted(was.keys() - known.keys())
        assert len(sizes) > 1  # both paths: reads of the same and of another length
    finally:
        os.close(fd)


def test_no_maps_pinned_is_a_clear_error(bpffs: str) -> None:
    with pytest.raises(CommandError) as caught:
        CiliumMaps.open(bpffs)
    assert caught.value.reason == "unavailable"
    result = observer_dataplane("--bpf-root", bpffs)
    assert result.returncode == 1
    assert "no Cilium service map pinned" in result.stderr


def test_a_map_of_unknown_layout_is_a_clear_error(bpffs: str) -> None:
    directory = os.path.join(bpffs, PIN_DIR)
    os.makedirs(directory)
    for name, value_size in ((SERVICE_MAPS[4], 16), (BACKEND_MAPS[4][0], 12)):
        fd = bpf.map_create(bpf.MAP_TYPE_HASH, 12 if "services" in name else 4, value_size,
                            16, name)
        bpf.obj_pin(fd, os.path.join(directory, name))
        os.close(fd)
    with pytest.raises(DataplaneParseError, match="16-byte values matches no Cilium layout"):
        CiliumMaps.open(bpffs)
    result = observer_dataplane("--bpf-root", bpffs)
    assert result.returncode == 1
    assert "matches no Cilium layout" in result.stderr


def test_without_privileges_it_is_a_permission_error(bpffs: str) -> None:
    # No capability, and the pins (mode 0600) are another user's: since Linux 6.5 bpf() lets
    # anyone open a pinned map they may read (the capability checks moved to creating maps
    # and loading programs), so a root without CAP_DAC_OVERRIDE reading root's own pins
    # would succeed; before, unprivileged_bpf_disabled refused it outright.
    minikube(bpffs).close()
    pins = Path(bpffs, PIN_DIR)
    for pin in pins.iterdir():
        os.chown(pin, 65534, 65534)
    result = observer_dataplane("--bpf-root", bpffs, user=without_capabilities())
    assert result.returncode == 1
    assert "CAP_BPF" in result.stderr, result.stderr


async def test_a_slot_naming_an_unknown_backend_is_counted_and_the_next_read_tells(
        bpffs: str) -> None:
    """What a read sees when Cilium writes between its read of the services map and of the
    backends map: a slot naming a backend that was never in a backends read."""
    agent = minikube(bpffs)
    changes = CiliumChanges(bpffs, FrontendNames(candidates))
    await full_read(changes)
    key = SERVICE_KEY[4].pack(socket.inet_aton("10.96.0.10"), (53).to_bytes(2, "big"), 2,
                              socket.IPPROTO_TCP, 0)
    bpf.update(agent.services[4], key, SERVICE_VALUE.pack(99, 0, 0, 0, 0, 0))
    with pytest.raises(DataplaneParseError, match="changed during the read"):
        await full_read(changes)
    # Cilium's write completes (its second backend removed): told at the next read.
    agent.upsert("10.96.0.10", 53, [("10.244.0.2", 53, ACTIVE)])
    assert await full_read(changes) == {DNS_TCP: {EndpointKey(DNS_TCP, "10.244.0.2", 53): True}}
    agent.close()


async def test_maps_gone_and_back_are_counted_and_polling_goes_on(bpffs: str) -> None:
    async with polling(bpffs) as polled:
        agent, metrics, seen = polled.agent, polled.metrics, polled.seen
        pinned = os.path.join(bpffs, PIN_DIR, SERVICE_MAPS[4])
        moved = os.path.join(bpffs, PIN_DIR, "moved")
        os.rename(pinned, moved)  # unpinned, as when Cilium re-creates its maps
        await until(lambda: "unavailable" in metrics.errors, "the failed read")
        os.rename(moved, pinned)
        agent.upsert("10.96.0.10", 53, [("10.244.0.2", 53, ACTIVE)])
        await until(lambda: bool(seen), "the change")
        assert [(c.key, c.selected) for c in seen] == [
            (EndpointKey(DNS_TCP, "10.244.0.3", 53), False)]


async def test_auto_detects_cilium_where_kube_proxy_wrote_nothing(bpffs: str,
                                                                  netns: Netns) -> None:
    runner = CommandRunner(netns=netns.name)
    with pytest.raises(CommandError, match="no Cilium service map pinned"):
        await detect(runner, {"bpf_root": bpffs})
    minikube(bpffs).close()
    mode, backend = await detect(runner, {"bpf_root": bpffs})
    assert (mode.name, backend) == ("cilium", None)
    source = await open_source("auto", Wiring(runner=runner, options={"bpf_root": bpffs},
                                              clock=SystemClock(), metrics=Metrics()))
    assert source.mode == "cilium"

