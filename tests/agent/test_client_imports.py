"""observer/kube/imports.py: kubernetes_asyncio's parts the agent calls, the rest on demand.
In processes of their own: this one has imported all of kubernetes_asyncio long ago."""

from __future__ import annotations

import asyncio
import sys

LOADED = """
import sys
def loaded():
    models = [m for m in sys.modules if m.startswith('kubernetes_asyncio.client.models.')]
    return len(models) > 500, 'kubernetes_asyncio.client.api.apps_v1_api' in sys.modules
"""


async def python(code: str) -> list[str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", LOADED + code, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT)
    out, _ = await proc.communicate()
    assert proc.returncode == 0, out.decode()
    return out.decode().splitlines()


async def test_a_model_or_another_api_asked_for_loads_the_whole_package() -> None:
    assert await python("""
import observer.agent
print(loaded())
from kubernetes_asyncio.client import models
print(models.V1Pod.__name__, loaded())
import kubernetes_asyncio
from kubernetes_asyncio import client
print(client.AppsV1Api.__name__, kubernetes_asyncio.__version__ != '',
      client.ApiClient is sys.modules['kubernetes_asyncio.client.api_client'].ApiClient)
""") == ["(False, False)", "V1Pod (True, False)", "AppsV1Api True True"]


async def test_nothing_changes_when_kubernetes_asyncio_came_first() -> None:
    assert await python("""
import kubernetes_asyncio.config
import observer.agent
print(loaded(), '__getattr__' in vars(sys.modules['kubernetes_asyncio']))
""") == ["(True, True) False"]
