"""One full read of a node's dataplane, per mode (which mode kube-proxy uses there:
``detect``)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Protocol

from observer.dataplane.commands import CommandError, CommandRunner
from observer.dataplane.iptables import ParsedSave, SaveParser, snapshot_of
from observer.dataplane.ipvs import IpvsNames, Virtual, parse_ipvs
from observer.dataplane.model import (
    Backend,
    DataplaneParseError,
    DataplaneSnapshot,
    ProgrammedService,
)
from observer.dataplane.netlink import ipvs_dump
from observer.dataplane.nftables import ChainState, NftTextParser
from observer.values import Mode

KnownServices = Callable[[], Iterable[str]]


class Reader(Protocol):
    @property
    def mode(self) -> Mode: ...

    @property
    def backend(self) -> Backend | None: ...

    async def read(self) -> DataplaneSnapshot: ...


def _merge(mode: Mode, backend: Backend | None,
           parts: Iterable[DataplaneSnapshot]) -> DataplaneSnapshot:
    services: list[ProgrammedService] = []
    for part in parts:
        services.extend(part.services)
    return DataplaneSnapshot(mode, backend, tuple(services))


def decode_output(raw: bytes) -> str:
    try:
        return raw.decode()
    except UnicodeDecodeError:
        raise DataplaneParseError("output is not UTF-8") from None


@dataclass
class IptablesReader:
    runner: CommandRunner
    backend: Backend
    known_services: KnownServices = lambda: ()
    mode: Mode = "iptables"

    async def read(self) -> DataplaneSnapshot:
        """Both families at once: a read is as long as the longer dump, not their sum (for
        polling, the snapshot moments stay close to the read's start)."""
        results = await asyncio.gather(*(
            save_parsed(self.runner, [f"{family}-{self.backend}-save", "-t", "nat"])
            for family in ("iptables", "ip6tables")), return_exceptions=True)
        parsed = []
        for result in results:  # both ran to their end (no dump left running): then judge
            if isinstance(result, BaseException):
                raise result
            parsed.append(result)
        known = self.known_services()
        return _merge("iptables", self.backend, (
            snapshot_of(parser, backend=self.backend, known_services=known)
            for parser in parsed))


async def save_parsed(runner: CommandRunner, command: list[str]) -> ParsedSave:
    """``iptables-save`` output, parsed as it streams."""
    parser = SaveParser()
    async with contextlib.aclosing(runner.chunks(command)) as pieces:
        async for piece in pieces:
            parser.feed(decode_output(piece))
    return parser.finish()


async def nft_lines(runner: CommandRunner, family: str, table: str) -> AsyncGenerator[str, None]:
    """``nft -a list table`` line by line; nothing when this family has no such table."""
    try:
        async with contextlib.aclosing(
                runner.lines(["nft", "-a", "list", "table", family, table])) as lines:
            async for line in lines:
                yield decode_output(line)
    except CommandError as error:
        if "No such file or directory" not in str(error):
            raise


async def nft_table_state(runner: CommandRunner, family: str) -> ChainState | None:
    """kube-proxy's nftables table of one family, parsed as it streams; None if absent."""
    parser = NftTextParser()
    seen = False
    async with contextlib.aclosing(nft_lines(runner, family, "kube-proxy")) as lines:
        async for line in lines:
            seen = True
            parser.feed(line)
    return parser.finish() if seen else None


@dataclass
class NftablesReader:
    runner: CommandRunner
    mode: Mode = "nftables"
    backend: Backend | None = None

    async def read(self) -> DataplaneSnapshot:
        parts = []
        for family in ("ip", "ip6"):
            state = await nft_table_state(self.runner, family)
            if state is not None:
                parts.append(state.snapshot())
        return _merge("nftables", None, parts)


@dataclass
class IpvsReader:
    """The kernel's IPVS tables over netlink (in ``runner``'s namespace, within its timeout);
    with ``names``, virtual servers named after service ports. ``dump`` is the netlink
    request (``ipvs_dump``), replaceable where there is no IPVS to ask."""

    runner: CommandRunner
    names: IpvsNames | None = None
    dump: Callable[[str | None], Awaitable[list[Virtual]]] = ipvs_dump
    mode: Mode = "ipvs"
    backend: Backend | None = None

    async def read(self) -> DataplaneSnapshot:
        try:
            async with asyncio.timeout(self.runner.timeout):
                virtuals = await self.dump(self.runner.netns)
        except TimeoutError:
            raise CommandError("timeout", f"IPVS netlink dump did not finish in "
                                          f"{self.runner.timeout} s") from None
        snapshot = parse_ipvs(virtuals)
        return snapshot if self.names is None else self.names.apply(snapshot)
