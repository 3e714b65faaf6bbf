"""observer/kube/imports.py: kubernetes_asyncio's parts the agent calls, the rest on demand.
In processes of their own (this one has imported all of kubernetes_asyncio long ago), with the
installed kubernetes_asyncio and with the oldest of the range pyproject.toml pins."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys

import pytest

from tests.conftest import REPO, missing

OLDEST = "31.1.0"  # the lower end of pyproject.toml's kubernetes_asyncio range

LOADED = """
import sys
def loaded():
    models = [m for m in sys.modules if m.startswith('kubernetes_asyncio.client.models.')]
    return len(models) > 500, 'kubernetes_asyncio.client.api.apps_v1_api' in sys.modules
"""


@pytest.fixture(scope="module", params=["installed", OLDEST])
def client_path(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
                ) -> str:
    """What to put first on the path: nothing (the installed release), or the oldest one."""
    if request.param == "installed":
        return ""
    target = tmp_path_factory.mktemp("kubernetes_asyncio")
    done = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps",
                           "--disable-pip-version-check", "--target", str(target),
                           f"kubernetes_asyncio=={OLDEST}"],
                          capture_output=True, text=True, timeout=300, check=False)
    if done.returncode != 0:
        missing(f"kubernetes_asyncio {OLDEST} could not be installed: {done.stderr[-500:]}")
    return str(target)


async def python(path: str, code: str) -> list[str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        p for p in (path, str(REPO)) if p)}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", LOADED + code, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT, env=env)
    out, _ = await proc.communicate()
    assert proc.returncode == 0, out.decode()
    return out.decode().splitlines()


async def test_the_parts_and_then_a_model_or_another_api_asked_for(client_path: str) -> None:
    assert await python(client_path, f"""
from observer.kube.imports import import_client_parts
print(import_client_parts(), loaded())
import observer.agent  # what the agent imports of it
print(loaded())
from kubernetes_asyncio.client import models
print(models.V1Pod.__name__, loaded())
import kubernetes_asyncio
from kubernetes_asyncio import client
print(client.AppsV1Api.__name__, kubernetes_asyncio.__file__.startswith({client_path!r}),
      client.ApiClient is sys.modules['kubernetes_asyncio.client.api_client'].ApiClient)
""") == ["True (False, False)", "(False, False)", "V1Pod (True, False)", "AppsV1Api True True"]


async def test_nothing_changes_when_kubernetes_asyncio_came_first(client_path: str) -> None:
    assert await python(client_path, """
import kubernetes_asyncio.config
from observer.kube.imports import import_client_parts
print(import_client_parts(), loaded(), '__getattr__' in vars(sys.modules['kubernetes_asyncio']))
""") == ["False (True, True) False"]


async def test_importing_observer_imports_no_kubernetes_asyncio(client_path: str) -> None:
    """Only ``observer run`` asks for the parts: no import of observer's changes anything."""
    assert await python(client_path, """
import observer, observer.cli
print(any(m.startswith('kubernetes_asyncio') for m in sys.modules))
""") == ["False"]
