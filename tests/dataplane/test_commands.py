"""Running tools: missing, failing, hanging, flooding — real processes, clear errors."""

from __future__ import annotations

import asyncio

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
