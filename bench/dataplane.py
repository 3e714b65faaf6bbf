"""Benchmark (issues 4, 35): the dataplane readers at 10,000 services / 50,000 endpoints.

For each mode (iptables-legacy, iptables-nft, nftables; ``iptables-legacy-text``: the legacy
backend as the agent read it before issue 35, polling ``iptables-legacy-save``), in a network
namespace of its own:

(a) one full read + parse, against the bare dump command's own time (target <= 1.5x);
(b) detection latency: from the moment the rule-writing command returns (the commit is done
    by then) to the change reaching the sink, p50/p99 over repeated single-endpoint removals
    (target p99 <= 10 ms where the kernel announces changes; polling's is bounded by its
    interval); for iptables-legacy also from the moment the kernel swapped the table in, as
    ``bench.xt_swaps`` sees it from outside (the writer's own run, a second at this size,
    precedes it);
(c) the agent's CPU while kube-proxy-like partial syncs rewrite 1% of the endpoints every
    second (target <= 10% of one core): this process's own, and that of the commands it runs
    (the dumps, ``nft monitor``), but not the benchmark's rule writers;
(d) this process's RSS after the source's first read (target <= 150 MiB), the benchmark's
    own rules text and (a)'s snapshot let go first.

    sudo .venv/bin/python -m bench.dataplane [--services 10000] [--per-service 5]
        [--samples 100] [--churn-seconds 10]
        [--modes nftables iptables-nft iptables-legacy iptables-legacy-text]

Rule layouts are kube-proxy's, with its chain-name hashes (``observer/lab/rules.py``, which
the lab's kube-proxy emulation uses too).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
import uuid
from functools import partial
from pathlib import Path
from typing import Any

from observer.clock import SystemClock
from observer.dataplane.commands import CommandRunner
from observer.dataplane.iptables import IptablesReader, LegacyTables
from observer.dataplane.mode import Wiring
from observer.dataplane.model import DataplaneChange, DataplaneSource, Reader
from observer.dataplane.modes import named, open_source
from observer.dataplane.sources import MonitorSource, PollingSource
from observer.lab.rules import ServicePortRules, iptables_sync, nft_sync
from observer.tasks import cancel_and_wait
from observer.testing.rss import rss_mib


def service(s: int, per: int, *, drop_first: bool = False) -> ServicePortRules:
    endpoints = tuple((f"10.{(s >> 8) & 255}.{s & 255}.{e + 1}", 8080)
                      for e in range(1 if drop_first else 0, per))
    return ServicePortRules(namespace=f"ns{s % 50}", name=f"svc{s}", port_name="http",
                            cluster_ip=f"172.30.{(s >> 8) & 255}.{s & 255}", port=80,
                            endpoints=endpoints)


def backend_of(mode: str) -> str:
    """``iptables-legacy-text`` writes and reads the legacy backend too."""
    return mode.split("-")[1]


class Rules:
    """kube-proxy's full sync, then its partial syncs, for the benchmark's services."""

    def __init__(self, mode: str, services: int, per: int) -> None:
        self.mode, self.per = mode, per
        self.endpoint_chains: set[str] = set()
        self.seps: dict[str, set[str]] = {}
        self.initial = self._sync([service(s, per) for s in range(services)], first=True)

    def _sync(self, services: list[ServicePortRules], *, first: bool) -> str:
        if self.mode == "nftables":
            lines = nft_sync(services, known_endpoint_chains=self.endpoint_chains, first=first)
        else:
            lines = iptables_sync(services, previous=self.seps, first=first)
        return "\n".join(lines) + "\n"

    def partial(self, touched: list[int], *, drop: bool) -> str:
        """Each touched service loses (or regains) its first endpoint."""
        return self._sync([service(s, self.per, drop_first=drop) for s in touched],
                          first=False)


class Netns:
    def __init__(self) -> None:
        self.name = f"obs-bench-{uuid.uuid4().hex[:6]}"

    def __enter__(self) -> Netns:
        subprocess.run(["ip", "netns", "add", self.name], check=True)
        return self

    def __exit__(self, *_: object) -> None:
        subprocess.run(["ip", "netns", "del", self.name], check=False)

    def write(self, mode: str, text: str, *, noflush: bool = False) -> float:
        """Load rules as kube-proxy does; the CPU seconds the writer took (``ip netns exec``
        execs it: one process, waited for here, so this process's children's CPU can be
        told apart from the agent's own commands')."""
        if mode == "nftables":
            argv = ["nft", "-f", "-"]
        else:
            argv = [f"iptables-{backend_of(mode)}-restore"] + (["--noflush"] if noflush else [])
        writer = subprocess.Popen(["ip", "netns", "exec", self.name, *argv],
                                  stdin=subprocess.PIPE)
        assert writer.stdin is not None
        writer.stdin.write(text.encode())
        writer.stdin.close()
        _, status, usage = os.wait4(writer.pid, 0)
        writer.returncode = os.waitstatus_to_exitcode(status)
        if writer.returncode != 0:
            raise subprocess.CalledProcessError(writer.returncode, writer.args)
        return usage.ru_utime + usage.ru_stime


def dump_command(mode: str) -> list[str]:
    if mode == "nftables":
        return ["nft", "-a", "list", "table", "ip", "kube-proxy"]
    return [f"iptables-{backend_of(mode)}-save", "-t", "nat"]


def cpu_seconds() -> float:
    """This process's CPU, its waited-for children's, and its running children's (``nft
    monitor``, read from /proc: it is waited for only when it ends)."""
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    running = 0
    for task in Path("/proc/self/task").iterdir():
        for pid in (task / "children").read_text().split():
            with contextlib.suppress(OSError):
                stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
                running += int(stat[11]) + int(stat[12])  # utime, stime (fields 14, 15)
    return (time.process_time() + children.ru_utime + children.ru_stime
            + running / os.sysconf("SC_CLK_TCK"))



class KernelRead:
    """The legacy tables read from the kernel, as a one-shot reader for (a)."""

    mode = "iptables"
    backend = "legacy"

    def __init__(self, tables: LegacyTables) -> None:
        self.tables = tables

    async def read(self) -> Any:
        if not self.tables.tables:
            await self.tables.open()
        return Selection((await self.tables.read()).selection)


class Selection:
    def __init__(self, selection: dict[Any, bool]) -> None:
        self._selection = selection

    def selection(self) -> dict[Any, bool]:
        return self._selection


class SwapWatch:
    """``bench.xt_swaps`` running in the namespace: when the kernel swapped tables in."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process
        self.seen: list[float] = []

    @classmethod
    async def start(cls, netns: str) -> SwapWatch:
        process = await asyncio.create_subprocess_exec(
            "ip", "netns", "exec", netns, sys.executable, "-m", "bench.xt_swaps",
            stdout=asyncio.subprocess.PIPE)
        watch = cls(process)
        await watch.after(0.0)  # its first line: the table as it is
        return watch

    async def after(self, moment: float) -> float:
        """The first swap seen after ``moment`` (CLOCK_MONOTONIC, as time.monotonic)."""
        while True:
            later = [t for t in self.seen if t > moment]
            if later:
                return later[0]
            assert self.process.stdout is not None
            line = await asyncio.wait_for(self.process.stdout.readline(), 60)
            self.seen.append(float(line.split()[0]))

    async def stop(self) -> None:
        self.process.kill()
        await self.process.wait()


class Health:
    def scan(self, seconds: float) -> None: ...

    def error(self, reason: str) -> None:
        raise RuntimeError(reason)

    def drift(self, count: int) -> None: ...


async def bench_mode(mode: str, services: int, per: int, samples: int,
                     seconds: int, gap: float = 0.0) -> dict[str, Any]:
    result: dict[str, Any] = {}
    with Netns() as netns:
        started = time.monotonic()
        rules = Rules(mode, services, per)
        netns.write(mode, rules.initial, noflush=mode != "nftables")
        rules.initial = ""  # 23 MB of text the agent would not hold: out of (d)
        result["load_seconds"] = round(time.monotonic() - started, 2)
        runner = CommandRunner(netns=netns.name, timeout=120)
        # (a) bare dump vs read + parse, best of 3 each
        bare, full = [], []
        backend = None if mode == "nftables" else backend_of(mode)
        reader: Reader | KernelRead = named(
            "nftables" if mode == "nftables" else "iptables").reader(
            Wiring(runner=runner, options={}, backend=backend))  # type: ignore[arg-type]
        if mode == "iptables-legacy":  # the kernel's blob, decoded (the agent's read)
            reader = KernelRead(LegacyTables(runner, tuple, Health()))
        for _ in range(3):
            t = time.monotonic()
            subprocess.run(runner.argv(dump_command(mode)),  # noqa: ASYNC221 - timed alone
                           capture_output=True, check=True)
            # The reader also reads the IPv6 side (absent here): time that too.
            ipv6 = ([*dump_command(mode)[:4], "ip6", "kube-proxy"] if mode == "nftables" else
                    [dump_command(mode)[0].replace("iptables", "ip6tables"), "-t", "nat"])
            subprocess.run(runner.argv(ipv6),  # noqa: ASYNC221 - timed alone
                           capture_output=True, check=False)
            bare.append(time.monotonic() - t)
            t = time.monotonic()
            snapshot = await reader.read()
            full.append(time.monotonic() - t)
        assert len(snapshot.selection()) == services * per, len(snapshot.selection())
        probe = next(iter(snapshot.selection()))
        del snapshot  # the source below holds its own: out of (d)
        if isinstance(reader, KernelRead):
            reader.tables.close()
        result["read"] = {"bare_dump_seconds": round(min(bare), 3),
                          "read_and_parse_seconds": round(min(full), 3),
                          "ratio": round(min(full) / min(bare), 2)}
        # (b) latency and (d) RSS
        arrivals: asyncio.Queue[tuple[float, DataplaneChange]] = asyncio.Queue()
        source: DataplaneSource
        if mode == "iptables-legacy-text":
            source = PollingSource(reader=IptablesReader(runner, "legacy"), clock=SystemClock(),
                                   metrics=Health(), interval=0.1, max_cpu=0.1)
        else:
            source = await open_source("nftables" if mode == "nftables" else "iptables", Wiring(
                runner=runner, options={}, clock=SystemClock(), metrics=Health()))
        bursts: list[float] = []
        if isinstance(source, MonitorSource):
            # When a whole burst of events is in hand: the internal latency starts here (for
            # nftables after nft monitor's lines and the 2 ms quiet gap that ends a burst).
            original = source.tables.apply

            def timed(burst: list[Any]) -> bool:
                bursts.append(time.monotonic())
                return original(burst)

            source.tables.apply = timed  # type: ignore[method-assign]
        task = asyncio.create_task(source.run(lambda c: arrivals.put_nowait(
            (time.monotonic(), c))))
        loop = asyncio.get_running_loop()
        try:
            while source.selected(probe) is None:  # noqa: ASYNC110 - polled
                await asyncio.sleep(0.05)
            result["rss_mib_after_first_read"] = round(rss_mib(), 1)
            after_commit, from_start, internal, from_swap = [], [], [], []
            stamp_error: list[float] = []  # |the change's stamp - the swap|
            stated: list[float] = []  # the stamp's stated precision
            swaps = await SwapWatch.start(netns.name) if backend == "legacy" else None
            for i in range(samples):
                s = i % services
                drop = (i // services) % 2 == 0
                text = rules.partial([s], drop=drop)
                if gap and i:
                    await asyncio.sleep(gap)  # isolated removals: the budget refilled
                    while not arrivals.empty():
                        arrivals.get_nowait()
                begun = time.monotonic()
                await loop.run_in_executor(None, partial(netns.write, mode, text, noflush=True))
                committed = time.monotonic()
                arrived, change = await asyncio.wait_for(arrivals.get(), 30)
                # The commit happens inside the writer, between these two readings: the
                # latency lies between "after the writer returned" and "since it started".
                after_commit.append(max(0.0, arrived - committed))
                from_start.append(arrived - begun)
                if bursts and bursts[-1] >= begun:
                    internal.append(arrived - bursts[-1])
                if swaps is not None:
                    swapped = await swaps.after(begun)
                    from_swap.append(arrived - swapped)
                    stamp_error.append(abs(change.at.mono - swapped))
                    stated.append(change.at.precision)
                while not arrivals.empty():
                    arrivals.get_nowait()

            def quantiles(values: list[float]) -> dict[str, float]:
                values = sorted(values)
                return {"p50": round(statistics.median(values) * 1000, 2),
                        "p99": round(values[max(0, int(len(values) * 0.99) - 1)] * 1000, 2),
                        "max": round(values[-1] * 1000, 2)}

            if swaps is not None:
                await swaps.stop()
            result["latency_ms"] = {"samples": samples, "source": type(source).__name__,
                                    "after_writer_returned": quantiles(after_commit),
                                    "since_writer_started": quantiles(from_start)}
            if from_swap:
                result["latency_ms"]["since_the_kernel_swapped_the_table"] = quantiles(from_swap)
                result["latency_ms"]["writer_start_to_swap"] = quantiles(
                    [a - b for a, b in zip(from_start, from_swap, strict=True)])
                result["stamp_ms"] = {"error_from_the_swap": quantiles(stamp_error),
                                      "stated_precision": quantiles(stated)}
            if internal:
                result["latency_ms"]["whole_burst_to_sink"] = quantiles(internal)
            # (c) CPU under 1% churn per second
            per_second = max(1, services * per // 100 // per)  # services touched per second
            # kube-proxy's side, written before the window: its making is not the agent's CPU
            texts = [rules.partial([(second * per_second + k) % services
                                    for k in range(per_second)], drop=second % 2 == 0)
                     for second in range(seconds)]
            cpu0, wall0, writers = cpu_seconds(), time.monotonic(), 0.0
            for text in texts:
                tick = time.monotonic()
                writers += await loop.run_in_executor(
                    None, partial(netns.write, mode, text, noflush=True))
                await asyncio.sleep(max(0.0, 1.0 - (time.monotonic() - tick)))
            cpu = cpu_seconds() - cpu0 - writers
            wall = time.monotonic() - wall0
            result["churn"] = {"endpoints_per_second": per_second * 1, "seconds": round(wall, 1),
                               "agent_cpu_percent_of_one_core": round(100 * cpu / wall, 1),
                               "writers_cpu_percent": round(100 * writers / wall, 1)}
        finally:
            await cancel_and_wait(task)
    return result


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    out: dict[str, Any] = {
        "machine": {"cpu": platform.machine(), "cores": os.cpu_count(),
                    "python": platform.python_version()},
        "services": args.services, "endpoints": args.services * args.per_service}
    for mode in args.modes:
        out[mode] = await bench_mode(mode, args.services, args.per_service, args.samples,
                                     args.churn_seconds, args.sample_gap)
        print(json.dumps({mode: out[mode]}), flush=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--services", type=int, default=10_000)
    parser.add_argument("--per-service", type=int, default=5)
    parser.add_argument("--samples", type=int, default=100)
    parser.add_argument("--churn-seconds", type=int, default=10)
    parser.add_argument("--sample-gap", type=float, default=0.0,
                        help="seconds between (b)'s removals (0: back to back)")
    parser.add_argument("--modes", nargs="+", action="extend",
                        help="default: nftables iptables-nft iptables-legacy (and "
                             "iptables-legacy-text: the text path the agent polled before)")
    args = parser.parse_args()
    args.modes = args.modes or ["nftables", "iptables-nft", "iptables-legacy"]
    print(json.dumps(asyncio.run(main_async(args)), indent=2))


if __name__ == "__main__":
    main()
