"""structlog set-up, done once by the command's entry point.

JSON lines when the stream is not a terminal (what log collectors expect from a DaemonSet), a
readable console format on a terminal. Standard-library loggers (aiohttp, kubernetes_asyncio,
asyncio) and Python's warnings are routed through the same processors so every line has one
shape, on one stream: the agent's stdout; stderr for the commands whose stdout is a result.
"""

from __future__ import annotations

import logging
import sys
from typing import Literal, TextIO

import structlog

LogFormat = Literal["auto", "json", "console"]


def configure(fmt: LogFormat = "auto", *, level: int = logging.INFO,
              stream: TextIO | None = None) -> None:
    stream = stream if stream is not None else sys.stdout
    if fmt == "auto":
        fmt = "console" if stream.isatty() else "json"
    shared: list[structlog.types.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    renderer: structlog.types.Processor = (
        structlog.processors.JSONRenderer() if fmt == "json"
        else structlog.dev.ConsoleRenderer(colors=stream.isatty())
    )
    structlog.configure(
        processors=[*shared, structlog.processors.format_exc_info,
                    structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    handler = logging.StreamHandler(stream)
    handler.setFormatter(structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=shared,
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                    structlog.processors.format_exc_info, renderer],
    ))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    logging.captureWarnings(True)  # warnings.warn() of any library: a log line like the rest
    # aiohttp's access log is one line per scrape; the agent's own lines say what matters.
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
