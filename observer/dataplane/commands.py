"""Running the dataplane tools: never through a shell, always with a timeout and a bound on
how much output is read, optionally inside a named network namespace (``ip netns exec``)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from dataclasses import dataclass

from observer.tasks import cancel_and_wait

# Bounded label values for endpoint_propagation_dataplane_errors_total{reason}.
ERROR_REASONS = ("missing_tool", "unavailable", "permission", "timeout", "failed", "too_large",
                 "garbage", "events_lost", "replaced")


class CommandError(Exception):
    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class CommandRunner:
    netns: str | None = None
    timeout: float = 10.0
    max_output: int = 512 * 1024 * 1024

    def argv(self, command: Sequence[str]) -> list[str]:
        if self.netns is None:
            return list(command)
        return ["ip", "netns", "exec", self.netns, *command]

    async def _spawn(self, command: Sequence[str], *, stdin: bool = False) -> _Child:
        argv = self.argv(command)
        # Cancelling create_subprocess_exec while it connects the pipes can leave it waiting
        # forever for the process it killed (CPython gh-103847 and gh-125502, fixed only in
        # 3.13+): the start runs to its end shielded, and a cancelled caller reaps it.
        start = asyncio.ensure_future(asyncio.create_subprocess_exec(
            *argv, stdin=asyncio.subprocess.PIPE if stdin else asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, limit=1024 * 1024))
        try:
            return _Child.of(await asyncio.shield(start))
        except asyncio.CancelledError:
            with contextlib.suppress(OSError):
                await _reap(_Child.of(await asyncio.shield(start)))
            raise
        except FileNotFoundError:
            raise CommandError("missing_tool", f"{argv[0]} is not installed") from None
        except PermissionError:
            raise CommandError("permission", f"not allowed to run {argv[0]}") from None

    async def run(self, command: Sequence[str], *, stdin: bytes | None = None) -> bytes:
        """Run to completion (feeding ``stdin``); the whole stdout, or ``CommandError``."""
        child = await self._spawn(command, stdin=stdin is not None)
        proc = child.proc
        if stdin is not None:
            assert proc.stdin is not None
            proc.stdin.write(stdin)
            proc.stdin.close()
        try:
            async with asyncio.timeout(self.timeout):
                stdout, stderr = await self._collect(proc)
        except TimeoutError:
            raise CommandError("timeout", f"{command[0]} did not finish in {self.timeout} s"
                               ) from None
        finally:
            await _reap(child)
        if proc.returncode != 0:
            text = stderr.decode(errors="replace").strip()[:500]
            reason = ("permission" if "ermission denied" in text or "not permitted" in text
                      else "failed")
            raise CommandError(reason, f"{command[0]} exited {proc.returncode}: {text}")
        return stdout

    async def _collect(self, proc: asyncio.subprocess.Process) -> tuple[bytes, bytes]:
        assert proc.stdout is not None
        assert proc.stderr is not None
        chunks: list[bytes] = []
        size = 0
        stderr_task = asyncio.ensure_future(_head(proc.stderr, 64 * 1024))
        try:
            while chunk := await proc.stdout.read(1024 * 1024):
                size += len(chunk)
                if size > self.max_output:
                    raise CommandError("too_large",
                                       f"output of more than {self.max_output} bytes")
                chunks.append(chunk)
            await proc.wait()
            return b"".join(chunks), await stderr_task
        finally:
            await cancel_and_wait(stderr_task)

    async def chunks(self, command: Sequence[str]) -> AsyncGenerator[bytes, None]:
        """stdout as it is written, in pieces of whole lines (a large dump is never held
        whole; the last piece may lack its newline), within the same timeout and output bound
        as ``run``; a non-zero exit raises at the end."""
        child = await self._spawn(command)
        proc = child.proc
        assert proc.stdout is not None
        assert proc.stderr is not None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout
        stderr_task = asyncio.ensure_future(_head(proc.stderr, 64 * 1024))
        size = 0
        rest = b""
        try:
            while True:
                # Whole chunks, one timer each: a timer per line would cost more than the parse.
                try:
                    async with asyncio.timeout_at(deadline):
                        chunk = await proc.stdout.read(1024 * 1024)
                except TimeoutError:
                    raise CommandError("timeout", f"{command[0]} did not finish in "
                                                  f"{self.timeout} s") from None
                if not chunk:
                    break
                size += len(chunk)
                if size > self.max_output:
                    raise CommandError("too_large",
                                       f"output of more than {self.max_output} bytes")
                cut = chunk.rfind(b"\n") + 1
                if cut:
                    yield rest + chunk[:cut]
                    rest = chunk[cut:]
                else:
                    rest += chunk
            if rest:
                yield rest
            await proc.wait()
            if proc.returncode != 0:
                text = (await stderr_task).decode(errors="replace").strip()[:500]
                raise CommandError("permission" if "ermission denied" in text else "failed",
                                   f"{command[0]} exited {proc.returncode}: {text}")
        finally:
            await cancel_and_wait(stderr_task)
            await _reap(child)

    async def lines(self, command: Sequence[str]) -> AsyncGenerator[bytes, None]:
        """stdout line by line (each with its newline but perhaps the last), as ``chunks``."""
        async with contextlib.aclosing(self.chunks(command)) as pieces:
            async for piece in pieces:
                *complete, last = piece.split(b"\n")
                for line in complete:
                    yield line + b"\n"
                if last:
                    yield last

    @contextlib.asynccontextmanager
    async def stream(self, command: Sequence[str]) -> AsyncIterator[asyncio.StreamReader]:
        """A long-running command's stdout (``nft monitor``); the process ends with the block."""
        child = await self._spawn(command)
        try:
            assert child.proc.stdout is not None
            yield child.proc.stdout
        finally:
            await _reap(child)


async def _head(stream: asyncio.StreamReader, limit: int) -> bytes:
    """The first ``limit`` bytes of a stream, read to its end (the rest is discarded)."""
    kept = b""
    while chunk := await stream.read(64 * 1024):
        kept = (kept + chunk)[:limit]
    return kept


@dataclass(frozen=True)
class _Child:
    """A started command, and a pidfd naming it (``pidfd_open(2)``, Linux 5.3) to signal it.

    Never ``Process.kill()``: it calls ``Popen.send_signal()``, which first polls the child
    with ``waitpid(WNOHANG)`` (CPython 3.9+); a child that has just exited is reaped by that
    poll, asyncio's child watcher's own ``waitpid`` then fails, and it reports the exit
    status as 255 ("Unknown child process pid N", ../shared/BRIEF.md §9). A pidfd keeps
    naming its process whoever reaps it: signalling one that has exited is ``ESRCH``, never a
    reap, never another process that reused the pid. Where the kernel has no pidfds
    (``pidfd`` is None and the process not yet reaped), ``kill(2)`` by pid: it does not reap
    either; the pid can only be reused once the watcher has reaped it, which sets the
    return code one loop step later, a window that needs the system's whole pid range to be
    used up within it."""

    proc: asyncio.subprocess.Process
    pidfd: int | None

    @classmethod
    def of(cls, proc: asyncio.subprocess.Process) -> _Child:
        try:
            return cls(proc, os.pidfd_open(proc.pid))
        # ESRCH: exited and reaped already, nothing left to signal; else no pidfds here
        # (ENOSYS before Linux 5.3, or a seccomp filter).
        except OSError:
            return cls(proc, None)

    def kill(self) -> None:
        """SIGKILL, unless its exit is known; without reaping it."""
        if self.proc.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            if self.pidfd is not None:
                signal.pidfd_send_signal(self.pidfd, signal.SIGKILL)
            else:
                os.kill(self.proc.pid, signal.SIGKILL)


async def _reap(child: _Child) -> None:
    """Kill (if still running) and wait. What is left in the pipes is read and dropped first:
    asyncio pauses a pipe whose reader fell behind, a paused pipe never reports its end, and
    ``wait()`` waits for the pipes' ends as well as for the exit."""
    proc = child.proc
    try:
        child.kill()
        if proc.stdin is not None:
            proc.stdin.close()
        for pipe in (proc.stdout, proc.stderr):
            if pipe is not None:
                while await pipe.read(1024 * 1024):
                    pass
        await proc.wait()
    finally:
        if child.pidfd is not None:
            os.close(child.pidfd)
