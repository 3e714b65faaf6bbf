from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from tests.report.test_report import Agents


@pytest.fixture
async def agents() -> AsyncIterator[Agents]:
    """Real agent expositions over HTTP, one server per emulated node; stopped after."""
    served = Agents()
    try:
        yield served
    finally:
        for runner in served.runners:
            await runner.cleanup()
