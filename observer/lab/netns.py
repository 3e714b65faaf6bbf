"""Named network namespaces for the lab's nodes: created with ``ip netns add``, always removed."""

from __future__ import annotations

import contextlib
import os
import shutil
import uuid

from observer.dataplane.commands import CommandError, CommandRunner


def can_use_namespaces() -> str | None:
    """None if the lab can make network namespaces here, else why not."""
    if os.geteuid() != 0:
        return "not running as root"
    for tool in ("ip", "nft", "iptables-nft-restore", "iptables-legacy-restore"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed"
    return None


class Namespaces:
    def __init__(self) -> None:
        self.prefix = f"obs-lab-{uuid.uuid4().hex[:6]}"
        self.names: list[str] = []
        self._runner = CommandRunner()

    async def create(self, node: str) -> str:
        name = f"{self.prefix}-{node}"
        await self._runner.run(["ip", "netns", "add", name])
        self.names.append(name)
        return name

    async def close(self) -> None:
        for name in self.names:
            with contextlib.suppress(CommandError):
                await self._runner.run(["ip", "netns", "del", name])
        self.names.clear()
