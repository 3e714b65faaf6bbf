"""What a dataplane mode says about itself (``DataplaneMode``), and what it is built from.

Each mode's own module ends with its ``MODE``: its name, how it is detected, its reader (one
full read, for ``observer dataplane``), its change source (for the agent), and the settings
only it takes (``Option``: a flag of ``observer run`` and ``observer dataplane``, an
``OBSERVER_*`` variable, a key of ``DataplaneSettings.options``). ``observer.dataplane.modes``
lists them; detection, the CLI, the agent and the lab go through that list. Adding one:
docs/dataplane.md, "Adding a mode".
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field

from observer.clock import Clock
from observer.dataplane.commands import CommandError, CommandRunner
from observer.dataplane.model import (
    Backend,
    DataplaneParseError,
    DataplaneSource,
    Reader,
    decode_output,
)
from observer.dataplane.names import Candidates
from observer.dataplane.sources import DataplaneMetrics

# The service port names the slices know, "ns/name:port" (iptables' hashed chain names are made
# from them).
KnownServices = Callable[[], Iterable[str]]


@dataclass(frozen=True)
class Option:
    """A setting one mode takes. ``name`` is its key in ``DataplaneSettings.options``; the
    flag is ``--`` and the name with dashes, the variable ``OBSERVER_`` and the name in upper
    case."""

    name: str
    default: str
    help: str

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    @property
    def variable(self) -> str:
        return "OBSERVER_" + self.name.upper()


@dataclass(frozen=True)
class Detected:
    """What a mode's detection found: ``found`` (this node's dataplane is in this mode), the
    iptables ``backend`` holding the rules, or ``why`` it was not found."""

    found: bool
    backend: Backend | None = None
    why: str = ""


class Probe:
    """What detection reads of a node, each at most once: the modes that share a reading
    (iptables and IPVS both count kube-proxy's rules in each iptables backend) get the one."""

    def __init__(self, runner: CommandRunner, options: Mapping[str, str]) -> None:
        self.runner = runner
        self.options = options
        self._nft_tables: set[str] | None = None
        self._kube_rules: dict[Backend, tuple[int, bool]] = {}

    async def nft_tables(self) -> set[str]:
        """``family name`` of every nftables table (empty where nft cannot be run)."""
        if self._nft_tables is None:
            try:
                lines = decode_output(await self.runner.run(["nft", "list", "tables"]))
            except (CommandError, DataplaneParseError):
                lines = ""
            self._nft_tables = {line.strip().removeprefix("table ")
                                for line in lines.splitlines() if line.strip()}
        return self._nft_tables

    async def kube_rules(self, backend: Backend) -> tuple[int, bool]:
        """How many KUBE- lines a backend's nat table holds, and whether they are IPVS
        mode's (they match the KUBE-CLUSTER-IP ipset)."""
        if backend not in self._kube_rules:
            try:
                text = decode_output(await self.runner.run([f"iptables-{backend}-save", "-t",
                                                            "nat"]))
            except CommandError:
                text = ""
            lines = [line for line in text.splitlines() if "KUBE-" in line]
            self._kube_rules[backend] = (len(lines),
                                         any("KUBE-CLUSTER-IP" in line for line in lines))
        return self._kube_rules[backend]

    async def iptables_backend(self) -> tuple[Backend, int, bool]:
        """The backend holding more KUBE- rules (as kube-proxy's iptables-wrapper decides;
        nf_tables on a tie), its count, and whether they are IPVS mode's."""
        nft, legacy = await self.kube_rules("nft"), await self.kube_rules("legacy")
        if legacy[0] > nft[0]:
            return "legacy", *legacy
        return "nft", *nft


@dataclass(frozen=True)
class Wiring:
    """What a mode's reader and change source are made from."""

    runner: CommandRunner
    options: Mapping[str, str]  # the mode's own settings, by Option.name
    backend: Backend | None = None  # what detection found (iptables)
    clock: Clock | None = None  # a source's: the agent's clock and the reads' metrics
    metrics: DataplaneMetrics | None = None
    poll_interval: float = 0.1
    poll_max_cpu: float = 0.1
    known_services: KnownServices = tuple
    candidates: Candidates | None = None  # names frontends the rules do not name (IPVS, Cilium)

    def source_parts(self) -> tuple[Clock, DataplaneMetrics]:
        assert self.clock is not None, "a source needs the agent's clock"
        assert self.metrics is not None, "a source reports its reads"
        return self.clock, self.metrics


@dataclass(frozen=True)
class DataplaneMode:
    name: str  # --dataplane's value, the proxy_mode label
    about: str  # one line: what is read, and how changes are seen
    detect: Callable[[Probe], Awaitable[Detected]]
    reader: Callable[[Wiring], Reader]
    source: Callable[[Wiring], Awaitable[DataplaneSource]]
    options: tuple[Option, ...] = field(default=())
    # Its detection also picks a backend (iptables': nf_tables or legacy), which a request
    # for the mode by name still needs.
    picks_backend: bool = False
