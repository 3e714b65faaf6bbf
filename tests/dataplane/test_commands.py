"""Running tools: missing, failing, hanging, flooding — real processes, clear errors."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import random

import pytest

from observer.dataplane.commands import CommandError, CommandRunner
from observer.tasks import cancel_and_wait


async def test_output_is_returned() -> None:
    assert await CommandRunner().run(["printf", "a\\nb"]) == b"a\nb"


@pytest.mark.parametrize(("argv", "runner", "reason"), [
    (["observer-no-such-tool"], CommandRunner(), "missing_tool"),
    (["sh", "-c", "echo boom >&2; exit 3"], CommandRunner(), "failed"),
    (["sleep", "30"], CommandRunner(timeout=0.2), "timeout"),
    (["head", "-c", "100000", "/dev/zero"], CommandRunner(max_output=1000), "too_large"),
])
async def test_failures_have_reasons(argv: list[str], runner: CommandRunner,
                                     reason: str) -> None:
    with pytest.raises(CommandError) as raised:
        await runner.run(argv)
    assert raised.value.reason == reason
    if reason == "failed":
        assert "boom" in str(raised.value)


def test_netns_goes_through_ip_netns_exec_never_a_shell() -> None:
    assert CommandRunner(netns="n1").argv(["nft", "-j", "list", "ruleset"]) == [
        "ip", "netns", "exec", "n1", "nft", "-j", "list", "ruleset"]


@pytest.mark.parametrize("steps", range(4))
async def test_cancelled_while_starting_never_hangs(steps: int) -> None:
    # CPython gh-103847: cancelling create_subprocess_exec while it connects the pipes can
    # wait forever for the process it killed (three pipes make it likely on 3.11).
    for _ in range(10):
        task = asyncio.create_task(CommandRunner().run(["cat"], stdin=b"x"))
        for _ in range(steps):
            await asyncio.sleep(0)
        async with asyncio.timeout(10):
            await cancel_and_wait(task)


async def test_leaving_a_stream_unread_never_hangs() -> None:
    # `yes` fills the reader's buffer until asyncio pauses the pipe; ending the stream must
    # still reap the process (a paused pipe never reports its end on its own).
    async with asyncio.timeout(10):
        async with CommandRunner().stream(["yes"]) as out:
            await out.readline()
            await asyncio.sleep(0.3)


class _Records(logging.Handler):
    """asyncio's child watcher's complaints, as it logs them (from its own thread)."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


async def _read_first_piece(runner: CommandRunner) -> None:
    # A reader that has what it needs before the command ends (or whose read is superseded)
    # leaves early: the command has written everything and is exiting as the block closes.
    async with contextlib.aclosing(runner.chunks(["printf", "x\\n"])) as pieces:
        async for _ in pieces:
            break


async def _cancel_after_output(runner: CommandRunner) -> None:
    # A read cancelled once the command's output has ended, before its exit is reported.
    task = asyncio.create_task(runner.run(["printf", "x"]))
    while not task.done():
        await asyncio.sleep(0)
        if task.done() or random.random() < 0.5:
            break
    await cancel_and_wait(task)


def _no_pidfds(pid: int) -> int:
    raise OSError(errno.ENOSYS, "pidfd_open: not implemented (a kernel before 5.3)")


@pytest.mark.parametrize("pidfds", [True, False], ids=["pidfd", "no-pidfd"])
async def test_ending_a_finished_command_never_loses_an_exit_status(
        pidfds: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    # Popen.send_signal() (under asyncio's Process.kill()) first polls the child with waitpid;
    # for a child that just exited that poll reaps it, the child watcher's own waitpid then
    # fails: it logs "Unknown child process pid N, will report returncode 255" and the exit
    # status is lost (../shared/BRIEF.md §9). Commands ended early, many at once, the way the
    # dataplane sources end a superseded read and the lab's kube-proxies end at shutdown.
    if not pidfds:
        monkeypatch.setattr(os, "pidfd_open", _no_pidfds)
    records = _Records()
    logging.getLogger("asyncio").addHandler(records)
    runner = CommandRunner()
    try:
        for _ in range(100):
            await asyncio.gather(*(_read_first_piece(runner) for _ in range(4)),
                                 *(_cancel_after_output(runner) for _ in range(4)))
            # Alongside, commands that succeed must say so: no exit status of 255.
            assert await asyncio.gather(*(runner.run(["true"]) for _ in range(4))) == [b""] * 4
    finally:
        logging.getLogger("asyncio").removeHandler(records)
    assert records.messages == []
