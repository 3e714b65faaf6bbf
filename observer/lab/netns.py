"""Named network namespaces for the lab's nodes: created with ``ip netns add``, always removed."""

from __future__ import annotations

import asyncio
import os
import shutil
import uuid

import structlog

from observer.dataplane.commands import CommandError, CommandRunner

log = structlog.get_logger("observer.lab")


def can_use_namespaces() -> str | None:
    """None if the lab can make network namespaces here, else why not."""
    if os.geteuid() != 0:
        return "not running as root"
    for tool in ("ip", "nft", "iptables-nft-restore", "iptables-legacy-restore"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed"
    return None


class Namespaces:
    """The lab's network namespaces, made with ``runner`` (``ip netns``), each removed by
    ``close``."""

    def __init__(self, runner: CommandRunner | None = None) -> None:
        self.prefix = f"obs-lab-{uuid.uuid4().hex[:6]}"
        self.names: list[str] = []
        self.runner = runner or CommandRunner()

    async def create(self, node: str) -> str:
        name = f"{self.prefix}-{node}"
        # Known before it exists: an add cut short (the lab interrupted while it makes a pod)
        # may have made it all the same, and ``close`` must remove it.
        self.names.append(name)
        await self.runner.run(["ip", "netns", "add", name])
        return name

    async def close(self) -> None:
        while self.names:
            name = self.names.pop()
            try:
                await self.runner.run(["ip", "netns", "del", name])
            except CommandError as error:
                if await asyncio.to_thread(os.path.exists, f"/run/netns/{name}"):  # it was made
                    log.warning("network namespace left behind", netns=name, error=str(error))
