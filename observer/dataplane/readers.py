"""One full read of a node's dataplane, per mode, and the detection of which mode kube-proxy
uses there."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Literal, Protocol

from observer.dataplane.commands import CommandError, CommandRunner
from observer.dataplane.iptables import parse_iptables_save
from observer.dataplane.ipvs import parse_ipvsadm
from observer.dataplane.model import (
    Backend,
    DataplaneParseError,
    DataplaneSnapshot,
    ProgrammedService,
)
from observer.dataplane.nftables import parse_nft_json

Mode = Literal["iptables", "nftables", "ipvs"]
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
        parts = []
        for family in ("iptables", "ip6tables"):
            raw = await self.runner.run([f"{family}-{self.backend}-save", "-t", "nat"])
            parts.append(parse_iptables_save(decode_output(raw), backend=self.backend,
                                             known_services=self.known_services()))
        return _merge("iptables", self.backend, parts)


async def nft_table(runner: CommandRunner, family: str, table: str) -> str | None:
    try:
        return decode_output(await runner.run(["nft", "-j", "list", "table", family, table]))
    except CommandError as error:
        if "No such file or directory" in str(error):
            return None  # this family has no such table
        raise


@dataclass
class NftablesReader:
    runner: CommandRunner
    mode: Mode = "nftables"
    backend: Backend | None = None

    async def read(self) -> DataplaneSnapshot:
        parts = []
        for family in ("ip", "ip6"):
            text = await nft_table(self.runner, family, "kube-proxy")
            if text is not None:
                parts.append(parse_nft_json(text))
        return _merge("nftables", None, parts)


@dataclass
class IpvsReader:
    runner: CommandRunner
    mode: Mode = "ipvs"
    backend: Backend | None = None

    async def read(self) -> DataplaneSnapshot:
        return parse_ipvsadm(decode_output(await self.runner.run(["ipvsadm", "-Ln"])))
