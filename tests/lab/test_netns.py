"""The lab's network namespaces are removed whatever happened while they were made."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest

from observer.dataplane.commands import CommandRunner
from observer.lab.netns import Namespaces
from tests.conftest import require_root
from tests.lab.test_lab import namespaces


async def test_a_namespace_whose_add_was_cut_short_is_removed() -> None:
    """The lab interrupted while a pod's namespace is being made: ``ip netns add`` made it,
    but its caller was cancelled before hearing so. ``close`` removes it all the same."""
    require_root()
    real = CommandRunner()

    class Interrupted(CommandRunner):
        async def run(self, command: Sequence[str], *, stdin: bytes | None = None) -> bytes:
            out = await real.run(command, stdin=stdin)
            if command[:3] == ["ip", "netns", "add"]:
                raise asyncio.CancelledError  # the namespace exists; the caller never knows
            return out

    made = Namespaces(Interrupted())
    try:
        with pytest.raises(asyncio.CancelledError):
            await made.create("pod1")
        assert f"{made.prefix}-pod1" in await asyncio.to_thread(namespaces)
    finally:
        await made.close()
    assert made.prefix not in await asyncio.to_thread(namespaces)
