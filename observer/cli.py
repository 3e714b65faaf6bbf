"""The ``observer`` command: parses flags, reads the environment, makes the settings, and
hands them to the command (``observer.commands``, ``observer.report.command``,
``observer.lab.command``)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import re
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol, TypeVar

from observer import __version__, logs
from observer.commands.dataplane import dump
from observer.commands.run import run
from observer.config import (
    AgentConfig,
    DataplaneSettings,
    EventSettings,
    TrafficSettings,
    WatchSettings,
    WorkloadSettings,
)
from observer.dataplane import modes
from observer.memory import collect_garbage_rarely
from observer.report.options import ReportOptions
from observer.values import join_host_port, split_host_port

A = TypeVar("A", bound=argparse.Action)


class Parser(argparse.ArgumentParser):
    """argparse's parser, keeping every option it is given in ``options``, in order (argparse
    keeps them only in a private list): what the tests walk to check every option of every
    command. A subcommands option's ``choices`` are its subcommands' parsers, by name."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.options: list[argparse.Action] = []
        super().__init__(*args, **kwargs)

    def _add_action(self, action: A) -> A:
        self.options.append(action)
        return super()._add_action(action)

    def add_subparsers(self, **kwargs: Any) -> Any:
        """(argparse adds the subcommands' option to its group directly, not through
        ``_add_action``.)"""
        action = super().add_subparsers(**kwargs)
        self.options.append(action)
        return action


class Commands(Protocol):
    """What ``Parser.add_subparsers`` returns, as the commands use it."""

    def add_parser(self, name: str, **kwargs: Any) -> Parser: ...


def host_port(text: str) -> tuple[str, int]:
    """HOST:PORT, [IPv6]:PORT, or :PORT (127.0.0.1)."""
    try:
        return split_host_port(f"127.0.0.1{text}" if text.startswith(":") else text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {text!r}") from None


N = TypeVar("N", int, float)


def _number(convert: Callable[[str], N], expected: str, *, zero: bool) -> Callable[[str], N]:
    """An argparse type: a number (``convert``), greater than 0 or, with ``zero``, at least 0."""
    def parse(text: str) -> N:
        try:
            value = convert(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}") from None
        if value < 0 or (value == 0 and not zero):
            bound = "must not be negative" if zero else "must be greater than 0"
            raise argparse.ArgumentTypeError(f"{bound}, got {text!r}")
        return value
    return parse


positive_float = _number(float, "a number", zero=False)
non_negative_float = _number(float, "a number", zero=True)
non_negative_int = _number(int, "a whole number", zero=True)


D = TypeVar("D")


def _env(name: str, default: D = None) -> str | D:  # type: ignore[assignment]
    """A flag's default from its ``OBSERVER_*`` environment variable (text, which argparse
    converts with the flag's type), else the settings' own default."""
    return os.environ.get(f"OBSERVER_{name}", default)


def _env_flag(name: str, default: bool) -> bool:
    value = os.environ.get(f"OBSERVER_{name}")
    return default if value is None else value == "true"


def _add_run(commands: Commands) -> None:
    defaults = AgentConfig(node_name="")
    dataplane, traffic = defaults.dataplane, defaults.traffic
    run = commands.add_parser(
        "run", help="the node agent (the DaemonSet's entry point)",
        description="Watch EndpointSlices and this node's pods, time every endpoint removal, "
                    "export Prometheus metrics. Every flag can also be set with the "
                    "OBSERVER_<FLAG> environment variable (e.g. OBSERVER_NODE_NAME).")
    run.add_argument("--kubeconfig", default=_env("KUBECONFIG"),
                     help="kubeconfig file (default: in-cluster config, then $KUBECONFIG or "
                          "~/.kube/config)")
    run.add_argument("--node-name", default=_env("NODE_NAME", os.environ.get("NODE_NAME")),
                     help="this node's name (default: $NODE_NAME, set from the downward API)")
    run.add_argument("--dataplane", choices=("auto", *modes.NAMES, "none"),
                     default=_env("DATAPLANE", dataplane.mode),
                     help="which service dataplane to read: "
                          + "; ".join(f"'{m.name}', {m.about}" for m in modes.MODES)
                          + "; default: detect; 'none' measures the controller stage only")
    _add_mode_options(run, environment=True)
    run.add_argument("--netns", default=_env("NETNS"),
                     help="read this named network namespace's dataplane instead of the "
                          "agent's own (ip netns exec)")
    run.add_argument("--dataplane-poll-interval", type=positive_float,
                     default=_env("DATAPLANE_POLL_INTERVAL", dataplane.poll_interval),
                     help="seconds between reads where the kernel announces no changes "
                          "(iptables-legacy: unless its table changed shape, read at once; "
                          "IPVS; Cilium: between reads of the service ports the slices say "
                          "are changing; default %(default)s)")
    run.add_argument("--dataplane-poll-max-cpu", type=positive_float,
                     default=_env("DATAPLANE_POLL_MAX_CPU", dataplane.poll_max_cpu),
                     help="at most this share of one core (with the dump commands) is spent "
                          "on reads, on average — polling, the event-driven modes' resyncs, "
                          "Cilium's full reads and reads by parts: large or busy rule sets "
                          "are read less often (default %(default)s)")
    run.add_argument("--traffic", choices=("auto", "on", "off"),
                     default=_env("TRAFFIC", traffic.mode),
                     help="follow new connections to terminating endpoints in the kernel's "
                          "conntrack events (this node's namespace, or --netns): 'auto' when "
                          "the node allows it, 'on' refuses to start without it (default "
                          "%(default)s)")
    run.add_argument("--traffic-window", type=positive_float,
                     default=_env("TRAFFIC_WINDOW", traffic.window),
                     help="seconds an endpoint is still followed after its episode ended: "
                          "connections to a stopped pod from consumers slower than this are "
                          "not seen (default %(default)s)")
    _add_run_limits(run, defaults)


def _add_run_limits(run: argparse.ArgumentParser, defaults: AgentConfig) -> None:
    """Where the agent serves, how long it keeps things, how its watches behave."""
    watch = defaults.watch
    run.add_argument("--listen", type=host_port,
                     default=_env("LISTEN", join_host_port(*defaults.listen)),
                     help="HOST:PORT for /metrics, /healthz, /readyz, /debug/episodes "
                          "(default %(default)s)")
    run.add_argument("--episode-ttl", type=positive_float,
                     default=_env("EPISODE_TTL", defaults.episode_ttl),
                     help="seconds after which an unfinished episode is abandoned (reason ttl; "
                          "default %(default)s)")
    run.add_argument("--max-in-flight", type=int,
                     default=_env("MAX_IN_FLIGHT", defaults.max_in_flight),
                     help="episodes tracked at once; more are abandoned (reason in_flight_cap; "
                          "default %(default)s)")
    run.add_argument("--watch-inactivity-timeout", type=positive_float,
                     default=_env("WATCH_INACTIVITY_TIMEOUT", watch.inactivity_timeout),
                     help="seconds without any watch line (bookmarks included) before a "
                          "stream is treated as stalled and resumed (default %(default)s)")
    run.add_argument("--watch-start-jitter", type=non_negative_float,
                     default=_env("WATCH_START_JITTER", watch.start_jitter),
                     help="each watch's first list waits a random time up to this many "
                          "seconds, so that agents started together (an install, a rollout "
                          "of many nodes) do not all list at once (default %(default)s; see "
                          "docs/deploy.md, 'Running it on a large cluster')")
    run.add_argument("--watch-page-size", type=non_negative_int,
                     default=_env("WATCH_PAGE_SIZE", watch.page_size),
                     help="objects per page of a list (limit/continue); 0 lists in one "
                          "response (default %(default)s)")
    run.add_argument("--max-stage-uncertainty", type=positive_float,
                     default=_env("MAX_STAGE_UNCERTAINTY", defaults.max_stage_uncertainty),
                     help="a stage whose watch readings may be further than this many seconds "
                          "from when things happened (events received on catch-up after a "
                          "watch reconnected) is not observed but counted as unmeasured "
                          "(default %(default)s)")
    run.add_argument("--debug-endpoints", action=argparse.BooleanOptionalAction,
                     default=_env_flag("DEBUG_ENDPOINTS", defaults.debug_endpoints),
                     help="serve /debug/episodes and the /timeline page drawing them "
                          "(default: yes)")
    run.add_argument("--workload-metrics", action=argparse.BooleanOptionalAction,
                     default=_env_flag("WORKLOAD_METRICS", defaults.workloads.enabled),
                     help="per-workload series (labels namespace and workload) on the pod's "
                          "node (default: yes; docs/agent.md, 'Per-workload metrics')")
    run.add_argument("--max-workloads", type=non_negative_int,
                     default=_env("MAX_WORKLOADS", defaults.workloads.max_workloads),
                     help="workloads with per-workload series at once on this node; episodes "
                          "of more are counted under workload=\"_other\" (default %(default)s)")
    run.add_argument("--workload-idle", type=positive_float,
                     default=_env("WORKLOAD_IDLE", defaults.workloads.idle),
                     help="seconds after a workload's last episode here that its series go "
                          "(default %(default)s)")
    run.add_argument("--events", choices=("on", "off"),
                     default=_env("EVENTS", "on" if defaults.events.enabled else "off"),
                     help="record each unsafe termination as a Kubernetes Event on its pod "
                          "(events.k8s.io/v1, reason UnsafeTermination; rate-limited; needs "
                          "create and patch on events; default %(default)s)")
    run.add_argument("--histogram-buckets", type=_histogram_buckets,
                     default=_env("HISTOGRAM_BUCKETS", {}), metavar="FAMILY=B1,B2,...[;...]",
                     help="a histogram family's buckets instead of its defaults, by its full "
                          "name (endpoint_propagation_duration_seconds=0.1,0.5,1,2,5,30); "
                          "families separated by ';'; upper bounds in seconds, positive, "
                          "increasing, at most 60 (+Inf is added). docs/metrics.md, 'Buckets'")
    run.add_argument("--terminal-pod-watch", action=argparse.BooleanOptionalAction,
                     default=_env_flag("TERMINAL_POD_WATCH", defaults.terminal_pod_watch),
                     help="also watch terminal pods of every node, to learn when a pod on "
                          "another node stopped (default: yes; without it, only from the "
                          "EndpointSlice, a controller reaction later)")


def _add_mode_options(parser: argparse.ArgumentParser, *, environment: bool) -> None:
    """Each mode's own settings (Cilium's --bpf-root, ...), from the list of modes."""
    for option in modes.OPTIONS:
        default = (os.environ.get(option.variable, option.default) if environment
                   else option.default)
        parser.add_argument(option.flag, dest=f"mode_{option.name}", default=default,
                            metavar=option.name.upper(), help=option.help)


def _mode_options(args: argparse.Namespace) -> dict[str, str]:
    return {option.name: getattr(args, f"mode_{option.name}") for option in modes.OPTIONS}


def _agent_settings(args: argparse.Namespace) -> AgentConfig:
    return AgentConfig(
        node_name=args.node_name or "", listen=args.listen, episode_ttl=args.episode_ttl,
        max_in_flight=args.max_in_flight, debug_endpoints=args.debug_endpoints,
        max_stage_uncertainty=args.max_stage_uncertainty,
        terminal_pod_watch=args.terminal_pod_watch,
        watch=WatchSettings(inactivity_timeout=args.watch_inactivity_timeout,
                            start_jitter=args.watch_start_jitter,
                            page_size=args.watch_page_size),
        dataplane=DataplaneSettings(mode=args.dataplane, netns=args.netns,
                                    options=_mode_options(args),
                                    poll_interval=args.dataplane_poll_interval,
                                    poll_max_cpu=args.dataplane_poll_max_cpu),
        traffic=TrafficSettings(mode=args.traffic, window=args.traffic_window),
        workloads=WorkloadSettings(enabled=args.workload_metrics,
                                   max_workloads=args.max_workloads, idle=args.workload_idle),
        events=EventSettings(enabled=args.events == "on"),
        histogram_buckets=args.histogram_buckets)


def _add_dataplane(commands: Commands) -> None:
    dump = commands.add_parser(
        "dataplane", help="print what this node's service dataplane selects, once")
    dump.add_argument("--mode", choices=("auto", *modes.NAMES), default="auto",
                      help="the mode to read (default: detect)")
    dump.add_argument("--netns", help="read this named network namespace instead")
    _add_mode_options(dump, environment=False)
    dump.add_argument("--json", action="store_true", help="print JSON instead of a table")


def _histogram_buckets(text: str) -> dict[str, tuple[float, ...]]:
    from observer.export.buckets import BucketsError, parse
    try:
        return parse(text)
    except BucketsError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _delay(text: str) -> Any:
    from observer.lab.config import Delay, LabConfigError

    try:
        return Delay.parse(text)
    except LabConfigError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def quantile(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1 (exclusive), got {text!r}")
    return value


def prometheus_duration(text: str) -> str:
    if not re.fullmatch(r"(\d+(ms|s|m|h|d|w|y))+", text):
        raise argparse.ArgumentTypeError(f"expected a Prometheus duration (30m, 6h, 7d), "
                                         f"got {text!r}")
    return text


def _add_report(commands: Commands) -> None:
    defaults = ReportOptions(prometheus=None, agents=(), kubeconfig=None, namespace=None)
    report = commands.add_parser(
        "report", help="recommend each workload's preStop from the measurements",
        description="Read the agents' histograms (through Prometheus, or from the agents "
                    "directly), recommend a preStop per workload — the rules path "
                    "(Q(controller) + the slowest node's Q(dataplane)) or its own consumers' "
                    "last connection when slower, + margin, rounded up; the cluster-wide "
                    "number below --min-episodes of its deletions — check its preStop and "
                    "grace period against it, and with --patches write the fixes. Exit codes: "
                    "0 report written, 2 bad flags, 3 not enough data, 4 measurements "
                    "unreadable, 5 workloads unreadable.")
    source = report.add_mutually_exclusive_group(required=True)
    source.add_argument("--prometheus", metavar="URL",
                        help="read the histograms through this Prometheus (production)")
    source.add_argument("--agent", metavar="URL", nargs="+", action="extend", dest="agents",
                        help="scrape these agents' /metrics directly and merge them (the lab, "
                             "small clusters); each agent is one node")
    report.add_argument("--kubeconfig", default=_env("KUBECONFIG"),
                        help="kubeconfig for reading workloads (default: in-cluster config, "
                             "then $KUBECONFIG or ~/.kube/config)")
    report.add_argument("--namespace", help="only this namespace's workloads (default: all)")
    report.add_argument("--quantile", type=quantile, default=defaults.quantile,
                        help="quantile of each stage the preStop must cover (default %(default)s)")
    report.add_argument("--margin", type=float, default=defaults.margin,
                        help="seconds added for what the stages do not see (default "
                             "%(default)s)")
    report.add_argument("--window", type=prometheus_duration, default=None,
                        help=f"with --prometheus: how far back to look (default "
                             f"{defaults.window}, the recording rules' window); agents "
                             "count since they started")
    report.add_argument("--min-episodes", type=int, default=defaults.min_episodes,
                        help="refuse to recommend from fewer measured deletions (default "
                             "%(default)s)")
    report.add_argument("--node-label", default=defaults.node_label,
                        help="with --prometheus: the label naming each agent's node (default "
                             "%(default)s, as deploy/'s scrape configuration sets it)")
    report.add_argument("--json", action="store_true", help="machine-readable output")
    report.add_argument("--patches", metavar="DIR|-",
                        help="write a strategic-merge patch per workload that needs one into "
                             "DIR (for kustomize's patches:), or with '-' print kubectl patch "
                             "commands instead of the report")


def _report(args: argparse.Namespace) -> int:
    from observer.report.command import report

    if args.window is not None and args.prometheus is None:
        build_parser().error("--window needs --prometheus: agents' counters run from their "
                             "start")
    if args.patches == "-" and args.json:
        build_parser().error("--patches - prints commands instead of the report: give a "
                             "directory with --json")
    try:
        return asyncio.run(report(ReportOptions(
            prometheus=args.prometheus, agents=args.agents or (), kubeconfig=args.kubeconfig,
            namespace=args.namespace, quantile=args.quantile, margin=args.margin,
            window=args.window or ReportOptions.window, min_episodes=args.min_episodes,
            node_label=args.node_label, as_json=args.json, patches=args.patches)))
    except BrokenPipeError:  # `observer report | head`: the reader left, nothing to say
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


def _add_lab_flags(lab: argparse.ArgumentParser) -> None:
    from observer.lab.config import MODES, LabConfig

    defaults = LabConfig()
    lab.add_argument("--nodes", type=int, default=defaults.nodes,
                     help="emulated nodes (default %(default)s)")
    lab.add_argument("--deletions", type=int, default=defaults.deletions,
                     help="pods deleted (default %(default)s)")
    lab.add_argument("--controller-delay", type=_delay, default=defaults.controller_delay,
                     help="EndpointSlice controller reaction, seconds or a range (default "
                          "%(default)s)")
    lab.add_argument("--proxy-delay", type=_delay, default=defaults.proxy_delay,
                     help="kube-proxy programming delay, seconds or a range (default "
                          "%(default)s)")
    lab.add_argument("--min-sync-period", type=float, default=defaults.min_sync_period,
                     help="kube-proxy minSyncPeriod in seconds (default %(default)s)")
    lab.add_argument("--prestop", type=float, default=defaults.prestop,
                     help="preStop sleep of the careful workload (the other has none)")
    lab.add_argument("--app-exit", type=_delay, default=defaults.app_exit,
                     help="SIGTERM to the app having stopped, seconds or a range (default "
                          "%(default)s)")
    lab.add_argument("--dataplane", choices=(*MODES, "memory"), default=defaults.dataplane,
                     help="what kube-proxy programs, or 'cilium': Cilium's service maps in a "
                          "BPF filesystem of the lab's own (default %(default)s; memory "
                          "without network namespaces)")
    lab.add_argument("--ingress-delay", type=_delay, default=defaults.ingress_delay,
                     help="how long the ingress-like client takes to follow an EndpointSlice "
                          "change, seconds or a range (default %(default)s; with network "
                          "namespaces)")
    lab.add_argument("--request-rate", type=float, default=defaults.request_rate,
                     help="requests a second of each client, per service (default "
                          "%(default)s)")
    lab.add_argument("--workloads", type=lambda text: tuple(text.split(",")),
                     default=defaults.workloads,
                     help="the workloads, of careful (a --prestop sleep), hasty (no preStop, "
                          "exits at once), draining (no preStop, stops accepting at SIGTERM "
                          "and finishes what it serves), streaming (as hasty; its clients hold "
                          "long-lived streams); default "
                          + ",".join(defaults.workloads))
    lab.add_argument("--ingress-workloads", type=lambda text: tuple(text.split(",")),
                     default=defaults.ingress_workloads,
                     help="the workloads the ingress-like client fronts (default: all); the "
                          "others are reached through their Service addresses only")
    lab.add_argument("--verify", action="store_true",
                     help="run twice: measure, then apply `observer report --patches` (each "
                          "workload's own preStop, and grace period where raised) to the "
                          "lab's Deployments and run again; both runs per workload, and what "
                          "one cluster-wide preStop would have cost")
    lab.add_argument("--terminal-pod-watch", action=argparse.BooleanOptionalAction,
                     default=defaults.terminal_pod_watch,
                     help="the agents watch terminal pods of every node (default: yes; "
                          "without, what the accuracy table loses is what agent.terminalPodWatch"
                          "=false costs a cluster)")
    lab.add_argument("--seed", type=int, default=defaults.seed,
                     help="random seed (default %(default)s)")
    lab.add_argument("--json", action="store_true", help="print the result as JSON")
    lab.add_argument("--svg", type=Path, default=Path(".lab/timeline.svg"),
                     help="where to write the timeline picture (default .lab/timeline.svg)")
    lab.add_argument("--serve", action="store_true",
                     help="keep everything running after the scenario until Ctrl-C, printing "
                          "the kubeconfig path and each agent's URL as soon as they are up")


def _lab(args: argparse.Namespace) -> int:
    from observer.lab.command import LabOptions, run_lab
    from observer.lab.config import LabConfig, LabConfigError

    settings = LabConfig(nodes=args.nodes, deletions=args.deletions,
                         controller_delay=args.controller_delay, proxy_delay=args.proxy_delay,
                         min_sync_period=args.min_sync_period, prestop=args.prestop,
                         app_exit=args.app_exit, dataplane=args.dataplane, seed=args.seed,
                         ingress_delay=args.ingress_delay, request_rate=args.request_rate,
                         workloads=args.workloads, terminal_pod_watch=args.terminal_pod_watch,
                         ingress_workloads=args.ingress_workloads)
    try:
        settings.check()
    except LabConfigError as error:
        print(f"observer lab: {error}", file=sys.stderr)
        return 2
    if args.verify and args.serve:
        print("observer lab: --verify and --serve do not go together", file=sys.stderr)
        return 2
    collect_garbage_rarely()
    return asyncio.run(run_lab(LabOptions(config=settings, as_json=args.json, svg=args.svg,
                                          serve=args.serve, verify=args.verify)))


def _add_lab(commands: Commands) -> None:
    lab = commands.add_parser(
        "lab", help="run the tool on one machine with emulated cluster parts",
        description="A local cluster: the lab API server, an EndpointSlice controller, and per "
                    "node a kubelet, a kube-proxy programming real rules in the node's own "
                    "network namespace, and a real agent; then pod deletions, and every "
                    "measurement compared with the truth.")
    try:
        _add_lab_flags(lab)
    except ModuleNotFoundError as error:
        if not (error.name or "").startswith("observer.lab"):
            raise
        # Not installed (the container image carries the agent alone): whatever follows
        # `lab` is let through, and the command says so.
        lab.set_defaults(lab_command=None, lab_installed=False)
        return
    lab_commands = lab.add_subparsers(dest="lab_command", required=False, metavar="LAB_COMMAND")
    api = lab_commands.add_parser(
        "apiserver", help="serve the lab's Kubernetes API (pods, EndpointSlices) until SIGTERM")
    api.add_argument("--listen", type=host_port, default=("127.0.0.1", 0),
                     help="HOST:PORT to listen on (default 127.0.0.1 and a free port)")
    api.add_argument("--kubeconfig-out", type=Path, required=True,
                     help="where to write a kubeconfig for kubectl and kubernetes_asyncio")
    api.add_argument("--bookmark-interval", type=positive_float, default=60.0,
                     help="seconds between BOOKMARK events on watches that allow them")
    api.add_argument("--history", type=int, default=10_000,
                     help="changes kept for watch resumption; older resourceVersions get 410")


def _lab_missing() -> int:
    print("observer: the lab is not part of this installation (the container image "
          "carries the agent alone); install the package from its source to run it",
          file=sys.stderr)
    return 2


def build_parser() -> Parser:
    """The `observer` command's flags and subcommands."""
    parser = Parser(
        prog="observer",
        description="Measure how long Kubernetes endpoint removal takes to reach each node.")
    parser.add_argument("--version", action="version", version=f"observer {__version__}")
    parser.add_argument("--log-format", choices=("auto", "json", "console"),
                        default=_env("LOG_FORMAT", "auto"),
                        help="log line format (default: console on a terminal, JSON otherwise)")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_run(commands)
    _add_dataplane(commands)
    _add_report(commands)

    _add_lab(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    try:
        return _main(argv)
    except ModuleNotFoundError as error:
        if not (error.name or "").startswith("observer.lab"):
            raise
        return _lab_missing()


def _main(argv: Sequence[str] | None) -> int:
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    if args.command == "lab" and not getattr(args, "lab_installed", True):
        return _lab_missing()
    if unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    scenario = args.command == "lab" and args.lab_command is None
    # The lab's agents would log every episode; its report is the point, so warnings only.
    # The agent's log is its output (stdout, as a DaemonSet's); every other command's output
    # is its result (JSON with --json), so what is logged there goes to stderr.
    logs.configure(args.log_format, level=logging.WARNING if scenario else logging.INFO,
                   stream=sys.stdout if args.command == "run" else sys.stderr)
    from observer.export.metrics import configure_exposition  # prometheus_client: not for --help

    configure_exposition()
    if args.command == "run":
        collect_garbage_rarely()
        return asyncio.run(run(_agent_settings(args), kubeconfig=args.kubeconfig))
    if args.command == "dataplane":
        return asyncio.run(dump(args.mode, netns=args.netns, options=_mode_options(args),
                                as_json=args.json))
    if args.command == "report":
        return _report(args)
    if args.command == "lab" and args.lab_command == "apiserver":
        from observer.lab.command import serve_apiserver

        return asyncio.run(serve_apiserver(
            listen=args.listen, kubeconfig=args.kubeconfig_out,
            bookmark_interval=args.bookmark_interval, history=args.history))
    if args.command == "lab":
        return _lab(args)
    raise AssertionError(f"unhandled command {args.command}")


if __name__ == "__main__":
    sys.exit(main())
