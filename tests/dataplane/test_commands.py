"""Running tools: missing, failing, hanging, flooding — real processes, clear errors."""

from __future__ import annotations

import pytest

from observer.dataplane.commands import CommandError, CommandRunner


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
