"""The ``observer`` command: parses flags, reads the environment, wires the pieces together."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

import structlog

from observer import __version__, logs
from observer.clock import SystemClock

log = structlog.get_logger("observer")


def host_port(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {text!r}")
    return host.strip("[]") or "127.0.0.1", int(port)


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be greater than 0, got {text!r}")
    return value


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="observer",
        description="Measure how long Kubernetes endpoint removal takes to reach each node.")
    parser.add_argument("--version", action="version", version=f"observer {__version__}")
    parser.add_argument("--log-format", choices=("auto", "json", "console"), default="auto",
                        help="log line format (default: console on a terminal, JSON otherwise)")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    lab = commands.add_parser("lab", help="run the tool on one machine with emulated cluster parts")
    lab_commands = lab.add_subparsers(dest="lab_command", required=True, metavar="LAB_COMMAND")
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
    return parser


async def _serve_apiserver(args: argparse.Namespace) -> int:
    from observer.lab.apiserver.server import ApiServer

    server = ApiServer(clock=SystemClock(), bookmark_interval=args.bookmark_interval,
                       history_limit=args.history)
    url = await server.start(*args.listen)
    server.write_kubeconfig(args.kubeconfig_out)
    log.info("apiserver serving", url=url, kubeconfig=str(args.kubeconfig_out))
    print(args.kubeconfig_out, flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await server.stop()
        with contextlib.suppress(FileNotFoundError):
            args.kubeconfig_out.unlink()
    log.info("apiserver stopped")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logs.configure(args.log_format)
    if args.command == "lab" and args.lab_command == "apiserver":
        return asyncio.run(_serve_apiserver(args))
    raise AssertionError(f"unhandled command {args.command}")


if __name__ == "__main__":
    sys.exit(main())
