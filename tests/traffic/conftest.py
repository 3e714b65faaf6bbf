"""The world the traffic tests run in (``tests/traffic/topology.py``), made and removed for
each test."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from tests.conftest import require_root, require_tool
from tests.traffic.topology import Topology


@pytest.fixture
async def topology() -> AsyncIterator[Topology]:
    require_root()
    for tool in ("ip", "nft", "sysctl"):
        require_tool(tool)
    made = await Topology.make()
    try:
        yield made
    finally:
        await made.close()
