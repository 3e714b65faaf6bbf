"""The agent's HTTP endpoints (aiohttp): /metrics, /healthz, /readyz, and — unless disabled
with --no-debug-endpoints — /debug/episodes and /timeline (a page drawing those episodes).

Every handler reads memory only; prometheus_client's collectors run on the event loop, so
nothing scraped may block.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from importlib.resources import files
from typing import Any

from aiohttp import web
from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder

from observer.values import join_host_port

# The page runs only its own inline script and style and talks only to this agent.
TIMELINE_POLICY = ("default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; "
                   "connect-src 'self'; img-src 'self'")


class AgentHttp:
    def __init__(self, *, registry: CollectorRegistry, ready: Callable[[], bool],
                 episodes: Callable[[], dict[str, Any]], debug: bool = True,
                 shutdown_timeout: float = 5.0) -> None:
        self.registry = registry
        self.ready = ready
        self.episodes = episodes
        self.debug = debug
        self.shutdown_timeout = shutdown_timeout
        self.url = ""
        self._page = files("observer.export").joinpath("timeline.html").read_bytes() \
            if debug else b""
        self._runner: web.AppRunner | None = None

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        if self.debug:
            app.router.add_get("/debug/episodes", self._episodes)
            app.router.add_get("/timeline", self._timeline)
        return app

    async def start(self, host: str, port: int) -> str:
        self._runner = web.AppRunner(self.app(), access_log=None,
                                     shutdown_timeout=self.shutdown_timeout)
        await self._runner.setup()
        await web.TCPSite(self._runner, host, port).start()
        bound_host, bound_port = self._runner.addresses[0][:2]
        self.url = f"http://{join_host_port(bound_host, bound_port)}"
        return self.url

    async def stop(self) -> None:
        """Stop accepting connections; requests in progress finish (up to the timeout)."""
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _metrics(self, request: web.Request) -> web.Response:
        encoder, content_type = choose_encoder(request.headers.get("Accept", ""))
        return web.Response(body=encoder(self.registry), headers={"Content-Type": content_type})

    async def _healthz(self, _: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    async def _readyz(self, _: web.Request) -> web.Response:
        if self.ready():
            return web.Response(text="ok\n")
        return web.Response(status=503, text="not ready: initial lists not synced, or stopping\n")

    async def _timeline(self, _: web.Request) -> web.Response:
        return web.Response(body=self._page, content_type="text/html", charset="utf-8",
                            headers={"Content-Security-Policy": TIMELINE_POLICY,
                                     "Cache-Control": "no-cache"})

    async def _episodes(self, _: web.Request) -> web.Response:
        return web.Response(text=json.dumps(self.episodes(), indent=1) + "\n",
                            content_type="application/json")
