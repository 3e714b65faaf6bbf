"""Run only by tests/test_suite_guards.py, in a pytest of its own: a test that never ends."""

from __future__ import annotations

import asyncio

import pytest


async def waits_forever_for_nothing() -> None:
    await asyncio.Event().wait()


@pytest.mark.timeout(2)
async def test_hangs() -> None:
    await waits_forever_for_nothing()
