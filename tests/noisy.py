"""``python -m tests.noisy ARGS``: the ``observer`` command, with the libraries it uses warning
while it runs.

Once the command's event loop runs, asyncio, aiohttp and kubernetes_asyncio each log a warning
through their own standard-library loggers, and a Python warning is raised, as those libraries
do on their own now and then (asyncio's child watcher, a connection reset, a deprecation). A
command's ``--json`` output must still be the whole of its stdout; what was said goes to
stderr, where ``MARKS`` are looked for."""

from __future__ import annotations

import asyncio
import logging
import subprocess
import sys
import warnings
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar

LOGGERS = ("asyncio", "aiohttp.client", "kubernetes_asyncio.client.rest")
MARKS = (*(f"{name} warns" for name in LOGGERS), "a library's warning")

REPO = Path(__file__).resolve().parent.parent
T = TypeVar("T")


def noisy_run(main: Coroutine[Any, Any, T], **kwargs: Any) -> T:
    async def warned() -> T:
        for name in LOGGERS:
            logging.getLogger(name).warning("%s warns", name)
        warnings.warn("a library's warning", UserWarning, stacklevel=1)
        return await main

    return run(warned(), **kwargs)


def argv(*args: str) -> list[str]:
    """The command line of ``observer ARGS`` with the libraries warning (run it in ``REPO``)."""
    return [sys.executable, "-m", "tests.noisy", *args]


def observer(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """``observer ARGS`` with the libraries warning, run to its end."""
    return subprocess.run(argv(*args), cwd=REPO, capture_output=True, text=True,
                          timeout=timeout, check=False)


run = asyncio.run

if __name__ == "__main__":
    from observer.cli import main

    asyncio.run = noisy_run
    sys.exit(main(sys.argv[1:]))
