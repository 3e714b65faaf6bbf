"""Stopping child tasks without swallowing the caller's own cancellation.

The tempting shape::

    child.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await child

loses a cancellation of the *caller* that lands while it waits: asyncio delivers it by
cancelling the awaited child, the ``await`` raises ``CancelledError``, and ``suppress`` cannot
tell whose it was. The caller then runs on as if nothing had happened (an event-driven
dataplane source did exactly that, and the agent never stopped on SIGTERM). Waiting with
``asyncio.wait`` instead raises only for the caller's own cancellation, never for a child's.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Callable
from typing import Any, TypeVar

import structlog

log = structlog.get_logger("observer.tasks")
T = TypeVar("T")


async def cancel_and_wait(*tasks: asyncio.Future[Any]) -> None:
    """Cancel ``tasks`` and wait until every one has ended. A cancellation of the caller while
    it waits propagates (the children are cancelled all the same and end on their own). An
    error a child raised while it unwound is logged, not left for the garbage collector."""
    for task in tasks:
        task.cancel()
    pending = {task for task in tasks if not task.done()}
    if pending:
        await asyncio.wait(pending)
    for task in tasks:  # each outcome retrieved; the errors the caller could not have seen logged
        if not task.cancelled() and (error := task.exception()) is not None and task in pending:
            log.warning("task failed while it was being stopped", task=task.get_name()
                        if isinstance(task, asyncio.Task) else repr(task), error=repr(error))


def stop_on_signals(stop: asyncio.Event) -> None:
    """SIGTERM (the kubelet's, a CI runner's) and SIGINT (Ctrl-C) set ``stop``."""
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)


async def finish_in_thread(function: Callable[..., T], *args: Any) -> T:
    """``function(*args)`` on a worker thread. A thread cannot be stopped: a cancellation of
    the caller waits for it to end before it propagates, so that what the thread uses (a
    socket) is closed only once it is done with it."""
    future = asyncio.ensure_future(asyncio.to_thread(function, *args))
    try:
        return await asyncio.shield(future)
    except asyncio.CancelledError:
        await asyncio.wait({future})
        if not future.cancelled():
            future.exception()  # retrieved: the caller is gone, its result with it
        raise
