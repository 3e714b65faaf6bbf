"""The real kubectl binary, run against the lab API server by tests."""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path


class Kubectl:
    def __init__(self, binary: str, kubeconfig: Path) -> None:
        self.binary = binary
        self.env = {**os.environ, "KUBECONFIG": str(kubeconfig),
                    "HOME": str(kubeconfig.parent)}  # kubectl's discovery cache goes here

    async def __call__(self, *args: str, stdin: str | None = None,
                       ok: bool = True) -> tuple[int, str, str]:
        proc = await asyncio.create_subprocess_exec(
            self.binary, *args, env=self.env,
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE)
        out, err = await asyncio.wait_for(proc.communicate(stdin.encode() if stdin else None), 60)
        code = proc.returncode if proc.returncode is not None else -1
        if ok:
            assert code == 0, f"kubectl {' '.join(args)} failed ({code}): {err.decode()}"
        return code, out.decode(), err.decode()

    async def json(self, *args: str) -> dict:  # type: ignore[type-arg]
        _, out, _ = await self(*args, "-o", "json")
        return json.loads(out)  # type: ignore[no-any-return]
