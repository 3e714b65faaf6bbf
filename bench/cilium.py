"""Benchmark (issue 17): Cilium's service maps at 10,000 services / 50,000 backends.

Real BPF maps in a BPF filesystem of the benchmark's own, filled as Cilium's agent does
(``observer.lab.cilium.CiliumAgent``) by a separate process, which then churns them: every
0.1 s it flips 1/1000 of the backends between active and terminating (1% of the backends a
second), one frontend update per backend as Cilium's reconciler writes it. Each flip is the
answer to an EndpointSlice update, which reaches this node's agent about when it reaches
Cilium's: the writer announces each flip to this process (as the slice watch would tell the
agent's tracker: ``DataplaneSource.expect``), waits ``--cilium-delay`` (Cilium's own
reaction), writes, and tells when it wrote (CLOCK_MONOTONIC, shared by both processes).
This process runs the agent's source (``DeltaPollingSource`` over ``CiliumChanges``,
frontends named from an index of every endpoint as the slices would give) and reports:

(a) one full read (both maps, the kernel's batch copy) and one full decode (``CiliumReader``,
    named), and the kernel's part alone, in a process of their own;
(b) the reader's CPU during the churn (this process's, threads included, less what the
    stand-in for the slice watch and tracker spends announcing flips; not the writer's),
    target <= 10% of one core; the precision its stamps state, target <= 100 ms; and each
    stamp's error against the moment the writer finished the flip's writes;
(c) this process's RSS after the source's first read is installed and at the end of the
    churn (after full reads under churn: the high-water mark), target <= 150 MiB; with the
    agent's modules imported as ``observer run`` has them (and their RSS alone).

    sudo .venv/bin/python -m bench.cilium [--services 10000] [--per-service 5]
        [--churn-seconds 120] [--interval 0.05] [--cilium-delay 0.02]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import platform
import resource
import signal
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Collection
from typing import Any

import observer.agent  # noqa: F401  (the agent's modules, in the RSS as `observer run` has them)
from observer.clock import SystemClock
from observer.dataplane.cilium.changes import CiliumChanges
from observer.dataplane.cilium.maps import CiliumMaps
from observer.dataplane.cilium.source import DeltaPollingSource
from observer.dataplane.cilium.state import CiliumReader
from observer.dataplane.model import DataplaneChange
from observer.dataplane.names import FrontendNames
from observer.episodes.slices import routed
from observer.kube.objects import Endpoint
from observer.lab.cilium import ACTIVE, TERMINATING, CiliumAgent
from observer.lab.results import quantile
from observer.memory import collect_garbage_rarely
from observer.tasks import cancel_and_wait
from observer.testing.rss import rss_mib
from observer.values import EndpointKey, ServicePort

# writer -> agent: service, backend, new state, 0 announced / 1 written, CLOCK_MONOTONIC
RECORD = struct.Struct("=IIBBd")
ANNOUNCED, WRITTEN = 0, 1
SEEN, WROTE = struct.Struct("=Idd"), struct.Struct("=Id")


class Spill:
    """Records of one layout, appended to a temporary file (page cache, not this process's
    memory) in blocks of 64 KiB."""

    def __init__(self, layout: struct.Struct) -> None:
        self.layout = layout
        self.file = tempfile.TemporaryFile()  # noqa: SIM115 (closed by ``records``)
        self.block = bytearray()

    def add(self, *fields: float) -> None:
        self.block += self.layout.pack(*fields)
        if len(self.block) >= 1 << 16:
            self.file.write(self.block)
            self.block.clear()

    def clear(self) -> None:
        self.file.truncate(0)
        self.file.seek(0)
        self.block.clear()

    def records(self) -> list[tuple[Any, ...]]:
        self.file.write(self.block)
        self.file.seek(0)
        data = self.file.read()
        self.file.close()
        return list(self.layout.iter_unpack(data))


def vip(s: int) -> str:
    return f"10.96.{s // 250}.{s % 250 + 1}"


def backend(s: int, b: int) -> str:
    n = s * 8 + b
    return f"10.{64 + n // 65536}.{n // 256 % 256}.{n % 256}"


def writer(root: str, services: int, per: int, together: int, delay: float, news: int,
           ready: Any, go: Any, stop: Any) -> None:
    """The Cilium agent: fill, then churn until told to stop, telling ``news`` of each flip
    before (the slice update) and after (the maps written). ``together``: backends flipped
    in each service a flip touches (1: every flip in another service, the most reads)."""
    agent = CiliumAgent(root, max_entries=max(65536, services * (per + 1) + 1024))
    states = {s: [ACTIVE] * per for s in range(services)}
    for s in range(services):
        agent.upsert(vip(s), 80, [(backend(s, b), 8080, ACTIVE) for b in range(per)])
    ready.set()
    go.wait()
    flips = max(1, services * per // 1000)  # per 0.1 s: 1% of the backends a second
    tick, turn = time.monotonic(), 0
    while not stop.is_set():
        batch = [((turn * flips + i - i % together) * 7919 % services, (turn + i) % per)
                 for i in range(flips)]
        for s, b in batch:
            states[s][b] = TERMINATING if states[s][b] == ACTIVE else ACTIVE
        os.write(news, b"".join(RECORD.pack(s, b, states[s][b], ANNOUNCED, time.monotonic())
                                for s, b in batch))
        time.sleep(delay)
        done = []
        for s, b in batch:
            agent.upsert(vip(s), 80, [(backend(s, j), 8080, states[s][j]) for j in range(per)])
            done.append(RECORD.pack(s, b, states[s][b], WRITTEN, time.monotonic()))
        os.write(news, b"".join(done))
        turn += 1
        tick += 0.1
        time.sleep(max(0.0, tick - time.monotonic()))
    agent.close()


class Metrics:
    def __init__(self) -> None:
        self.errors: list[str] = []
        self.scans: list[float] = []

    def scan(self, seconds: float) -> None:
        self.scans.append(seconds)

    def error(self, reason: str) -> None:
        self.errors.append(reason)

    def drift(self, count: int) -> None:
        pass


def port(s: int) -> ServicePort:
    return ServicePort("bench", f"svc-{s}", "http", "TCP")


def percentile(values: list[float], share: float) -> float | None:
    """The nearest-rank quantile in milliseconds (None for no values)."""
    return round(quantile(values, share) * 1e3, 1) if values else None


def names(args: argparse.Namespace) -> FrontendNames:
    """Frontends named as the slices would name them. Here a backend's address tells its
    service (``backend``): the stand-in for the agent's index of the slices, which the agent
    keeps whatever its dataplane, holds no memory of the reader's."""
    ports: dict[int, tuple[ServicePort]] = {}

    def candidates(ip: str, number: int, protocol: str) -> Collection[ServicePort]:
        octets = ip.split(".")
        if number != 8080 or protocol != "TCP" or len(octets) != 4 or octets[0] != "10":
            return ()
        s, b = divmod((int(octets[1]) - 64) * 65536 + int(octets[2]) * 256 + int(octets[3]), 8)
        if not (0 <= s < args.services and b < args.per_service):
            return ()
        if s not in ports:
            ports[s] = (port(s),)
        return ports[s]

    return FrontendNames(candidates)


def one_read(root: str, args: argparse.Namespace, results: Any) -> None:
    """(a), in a process of its own (what it leaves in memory is not the agent's): the
    kernel's batch copy of both maps, five times; a full read and decode, named, three."""
    maps = CiliumMaps.open(root)
    kernel = []
    for _ in range(5):
        started = time.perf_counter()
        maps.read()
        kernel.append(time.perf_counter() - started)
    maps.close()
    full = []
    for _ in range(3):
        started = time.perf_counter()
        snapshot = asyncio.run(CiliumReader(root, names(args)).read())
        full.append(time.perf_counter() - started)
    results.send((statistics.median(kernel), statistics.median(full),
                  sum(len(s.cluster) for s in snapshot.services)))


async def measure(root: str, args: argparse.Namespace, go: Any, news: int) -> dict[str, Any]:
    context = multiprocessing.get_context("fork")
    receive, send = context.Pipe(duplex=False)
    timing = context.Process(target=one_read, args=(root, args, send))
    timing.start()
    kernel, full, entries = receive.recv()
    timing.join()

    metrics = Metrics()
    reader = CiliumChanges(root, names(args))
    source = DeltaPollingSource(changes=reader,
                                clock=SystemClock(), metrics=metrics, interval=args.interval,
                                max_cpu=args.max_cpu)
    # Per change seen: its service, stamp (monotonic) and precision; per flip written: its
    # service and when. Kept in files, not in the memory measured (a run of 600 s sees
    # 300,000 changes: 10 MiB even as flat arrays).
    seen, written = Spill(SEEN), Spill(WROTE)

    def sink(change: DataplaneChange) -> None:
        seen.add(int(change.key.service_port.service[4:]), change.at.mono, change.at.precision)

    task = asyncio.create_task(source.run(sink))
    # (The read is timed as its thread ends, then installed in the event loop: named, merged.)
    while reader.full_started is None:  # noqa: ASYNC110 (no event tells it)
        await asyncio.sleep(0.01)
    rss = rss_mib()
    first_read = metrics.scans[0]

    pending = bytearray()
    states = {s: [ACTIVE] * args.per_service for s in range(args.services)}

    def merged(s: int) -> dict[EndpointKey, Endpoint]:
        """Service ``s``'s endpoints as its slices say (terminating ones still serve)."""
        return {EndpointKey(port(s), backend(s, b), 8080): Endpoint(
            backend(s, b), state == ACTIVE, True, state == TERMINATING, "", "", "", "")
            for b, state in enumerate(states[s])}

    announcing = [0.0]  # CPU seconds in ``arrived``: the watch and tracker's part, not the reader's

    def arrived() -> None:
        """The writer's news: an announced flip is what the slice watch tells the tracker,
        which tells the source what the slices now route to (``routed``)."""
        cpu = time.thread_time()
        pending.extend(os.read(news, 1 << 16))
        whole = len(pending) // RECORD.size * RECORD.size
        for s, b, state, kind, at in RECORD.iter_unpack(bytes(pending[:whole])):
            if kind == ANNOUNCED:
                was = routed(merged(s))
                states[s][b] = state
                for key, selected in routed(merged(s)).items():
                    if selected != was[key]:
                        source.expect(key, selected)
            else:
                written.add(s, at)
        del pending[:whole]
        announcing[0] += time.thread_time() - cpu

    loop = asyncio.get_running_loop()
    loop.add_reader(news, arrived)
    go.set()
    await asyncio.sleep(2.0)  # the writer gets going
    seen.clear()
    usage = resource.getrusage(resource.RUSAGE_SELF)
    cpu0, wall0, scans0 = usage.ru_utime + usage.ru_stime, time.monotonic(), len(metrics.scans)
    announced0 = announcing[0]
    rss_series = []  # every 10 s of the churn: whether it settles
    while (left := wall0 + args.churn_seconds - time.monotonic()) > 0:
        await asyncio.sleep(min(10.0, left))
        rss_series.append(round(rss_mib(), 1))
    rss_end = rss_series[-1]
    usage = resource.getrusage(resource.RUSAGE_SELF)
    elapsed = time.monotonic() - wall0
    cpu = (usage.ru_utime + usage.ru_stime - cpu0) / elapsed
    tracker = (announcing[0] - announced0) / elapsed
    reads = metrics.scans[scans0:]
    loop.remove_reader(news)
    await cancel_and_wait(task)
    errors = []
    changes = seen.records()
    writes_of: dict[int, list[float]] = {}
    for s, at in written.records():
        writes_of.setdefault(s, []).append(at)
    for s, mono, precision in changes:  # against the last write the read could have seen
        writes = [w for w in writes_of.get(s, ()) if w <= mono + precision]
        if writes:
            errors.append(abs(mono - writes[-1]))
    precisions = [precision for _, _, precision in changes]
    flips = sum(1 for times in writes_of.values() for w in times if w >= wall0)
    expected_left = sum(len(keys) for keys in source.expected.values())
    return {
        "services": args.services, "backends": args.services * args.per_service,
        "endpoints_decoded": entries,
        "full_read_kernel_ms_median": round(kernel * 1e3, 1),
        "full_read_and_decode_ms_median": round(full * 1e3, 1),
        "agent_first_read_ms": round(first_read * 1e3, 1),
        "rss_mib_after_first_read": round(rss, 1),
        "rss_mib_end_of_churn": rss_end,
        "rss_mib_every_10s_of_churn": rss_series,
        "churn_backends_per_second": args.services * args.per_service // 100,
        "interval_s": args.interval, "cilium_delay_s": args.cilium_delay,
        "max_cpu": args.max_cpu, "backends_flipped_together": args.together,
        "process_cpu_share_of_one_core": round(cpu, 3),
        "announcing_cpu_share_of_one_core": round(tracker, 3),
        "reader_cpu_share_of_one_core": round(cpu - tracker, 3),
        "full_reads_during_churn": len(reads),
        "full_read_ms_median_under_churn": round(statistics.median(reads) * 1e3, 1)
        if reads else None,
        "flips_written": flips, "changes_seen": len(changes),
        "expectations_pending_at_end": expected_left,
        "stated_precision_ms_p50": percentile(precisions, 0.5),
        "stated_precision_ms_p99": percentile(precisions, 0.99),
        "share_precision_within_100ms": round(
            sum(p <= 0.1 for p in precisions) / len(precisions), 4) if precisions else None,
        "error_vs_write_ms_p50": percentile(errors, 0.5),
        "error_vs_write_ms_p99": percentile(errors, 0.99),
        "errors": metrics.errors,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--services", type=int, default=10_000)
    parser.add_argument("--per-service", type=int, default=5)
    parser.add_argument("--churn-seconds", type=float, default=120.0)
    parser.add_argument("--interval", type=float, default=0.05)
    parser.add_argument("--cilium-delay", type=float, default=0.02)
    parser.add_argument("--together", type=int, default=1,
                        help="backends flipped at once in each service touched (1..per)")
    parser.add_argument("--max-cpu", type=float, default=0.1,
                        help="the source's CPU budget (--dataplane-poll-max-cpu)")
    args = parser.parse_args()
    imported = rss_mib()
    collect_garbage_rarely()  # as ``observer run`` does
    # Stopped (SIGTERM): unwind, so that the writer stops and the BPF filesystem is unmounted.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    root = tempfile.mkdtemp(prefix="obs-bench-bpffs-")
    subprocess.run(["mount", "-t", "bpf", "bpf", root], check=True)
    context = multiprocessing.get_context("fork")
    ready, go, stop = context.Event(), context.Event(), context.Event()
    news, told = os.pipe()
    os.set_blocking(news, False)
    child = context.Process(target=writer, args=(root, args.services, args.per_service,
                                                 args.together, args.cilium_delay, told, ready,
                                                 go, stop))
    try:
        child.start()
        os.close(told)
        ready.wait()
        result = asyncio.run(measure(root, args, go, news))
        result["rss_mib_after_imports"] = round(imported, 1)
        result["machine"] = f"{platform.machine()}, {os.cpu_count()} cores, " \
                            f"Linux {platform.release()}"
        print(json.dumps(result, indent=2))
    finally:
        stop.set()
        go.set()
        while child.is_alive():  # the writer may wait on a full pipe
            try:
                os.read(news, 1 << 16)
            except BlockingIOError:
                child.join(0.05)
        child.join(30)
        os.close(news)
        subprocess.run(["umount", root], check=False)
        os.rmdir(root)


if __name__ == "__main__":
    main()
