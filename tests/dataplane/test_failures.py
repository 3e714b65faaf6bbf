"""A dataplane that cannot be read: every failure is counted and the source keeps polling.

The stand-ins for ``iptables-legacy-save`` are real executables put first on PATH, so the
real subprocess path (spawn, timeout, output bound, exit status) is what is exercised."""

from __future__ import annotations

import asyncio
import os
import stat
from pathlib import Path

import pytest

from observer.clock import SystemClock
from observer.dataplane.commands import CommandRunner
from observer.dataplane.iptables import IptablesReader, save_parsed
from observer.dataplane.model import DataplaneParseError
from observer.dataplane.nftables import KubeProxyTables, nft_table_state
from observer.dataplane.sources import MonitorSource, PollingSource
from tests.agent.harness import until
from tests.dataplane.test_netns import Health

SCRIPTS = {
    "garbage": "#!/bin/sh\necho '*nat'\necho 'this is not a rule'\necho COMMIT\n",
    "truncated": "#!/bin/sh\necho '*nat'\necho ':KUBE-SERVICES - [0:0]'\n",
    "hang": "#!/bin/sh\nexec /bin/sleep 30\n",
    "fail": "#!/bin/sh\necho 'iptables: permission denied (you must be root)' >&2\nexit 4\n",
}
REASONS = {"garbage": "garbage", "truncated": "garbage", "hang": "timeout",
           "fail": "permission", "missing": "missing_tool"}


@pytest.mark.parametrize("behaviour", sorted(REASONS))
async def test_failures_are_counted_and_polling_goes_on(behaviour: str, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    if behaviour != "missing":
        for name in ("iptables-legacy-save", "ip6tables-legacy-save"):
            script = tmp_path / name
            script.write_text(SCRIPTS[behaviour])
            script.chmod(script.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", str(tmp_path))
    health = Health()
    reader = IptablesReader(CommandRunner(timeout=0.2), "legacy")
    source = PollingSource(reader=reader, clock=SystemClock(), metrics=health, interval=0.01)
    task = asyncio.create_task(source.run(lambda change: None))
    try:
        # Three failed reads, however long a busy machine makes them take (the CPU budget
        # spaces reads out by what they cost).
        await until(lambda: len(health.errors) >= 3, "three failed reads")
        assert health.errors[:3] == [REASONS[behaviour]] * 3
        assert not task.done()  # still polling
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


@pytest.mark.parametrize("command", ["iptables-legacy-save", "nft"])
async def test_a_dump_rejected_mid_stream_is_stopped_at_once(
        command: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A parse error while the dump is still being written ends the command there and then,
    not whenever the garbage collector finalizes the abandoned stream (by then, perhaps, on a
    closed event loop, leaving its process and pipes behind)."""
    pid_file = tmp_path / "pid"
    script = tmp_path / command
    script.write_text(f"#!/bin/sh\necho $$ > {pid_file}\necho '*nat'\n"
                      "echo 'this is not a rule'\nexec /bin/sleep 30\n")
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", str(tmp_path))
    runner = CommandRunner(timeout=10)
    read = (nft_table_state(runner, "ip") if command == "nft"
            else save_parsed(runner, [command, "-t", "nat"]))
    with pytest.raises(DataplaneParseError):
        await read
    assert not os.path.exists(f"/proc/{pid_file.read_text().strip()}")  # noqa: ASYNC240


async def test_event_driven_reads_that_keep_failing_do_not_spin(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`nft monitor` runs but every full read fails at once: a failure a second, counted,
    the source still running — not a loop of failing reads as fast as they can fail."""
    script = tmp_path / "nft"
    script.write_text('#!/bin/sh\ncase "$*" in *monitor*) exec /bin/sleep 30;; esac\n'
                      'echo "nft: no such luck" >&2\nexit 1\n')
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", str(tmp_path))
    health = Health()
    runner = CommandRunner(timeout=5)
    source = MonitorSource(mode="nftables", runner=runner,
                           clock=SystemClock(), metrics=health, tables=KubeProxyTables())
    task = asyncio.create_task(source.run(lambda change: None))
    try:
        await asyncio.sleep(1.5)
        assert health.errors in (["failed"], ["failed", "failed"])
        assert not task.done()
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
