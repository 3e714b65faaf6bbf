"""A raw HTTP client for the lab API server: for what typed clients will not send."""

from __future__ import annotations

import json
import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import aiohttp

from observer.lab.apiserver.server import ApiServer


@asynccontextmanager
async def raw_session(server: ApiServer, *, token: str | None = None
                      ) -> AsyncIterator[aiohttp.ClientSession]:
    context = ssl.create_default_context(cadata=server.ca_pem.decode())
    headers = {"Authorization": f"Bearer {token if token is not None else server.token}"}
    async with aiohttp.ClientSession(base_url=server.url, headers=headers,
                                     connector=aiohttp.TCPConnector(ssl=context)) as session:
        yield session


async def read_events(response: aiohttp.ClientResponse, count: int) -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = []
    while len(events) < count:
        line = await response.content.readline()
        if not line:
            break
        events.append(json.loads(line))
    return events
