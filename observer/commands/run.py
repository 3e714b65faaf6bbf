"""``observer run``: the node agent, until SIGTERM or SIGINT."""

from __future__ import annotations

import asyncio

import structlog

from observer.clock import SystemClock
from observer.config import AgentConfig
from observer.kube.imports import import_client_parts
from observer.tasks import stop_on_signals

log = structlog.get_logger("observer")


async def run(settings: AgentConfig, *, kubeconfig: str | None) -> int:
    """0 after a clean stop; 2 when the agent cannot start (no node name, no API client
    configuration, a dataplane or conntrack that cannot be read as asked)."""
    # Before anything imports kubernetes_asyncio: the parts the agent calls, not all of it.
    import_client_parts()
    from kubernetes_asyncio import client, config

    from observer.agent import build_agent
    from observer.dataplane.commands import CommandError
    from observer.kube.connect import load_api_config
    from observer.traffic.source import TrafficError

    if not settings.node_name:
        log.error("no node name: pass --node-name or set NODE_NAME")
        return 2
    try:
        configuration = await load_api_config(kubeconfig)
    except (config.ConfigException, OSError) as error:
        log.error("cannot load Kubernetes client configuration", error=str(error))
        return 2
    stop = asyncio.Event()
    stop_on_signals(stop)
    async with client.ApiClient(configuration) as api:
        try:
            agent = await build_agent(settings, api=api, clock=SystemClock())
        except CommandError as error:
            log.error("cannot read the dataplane; pass --dataplane none to measure the "
                      "controller stage only", mode=settings.dataplane.mode, error=str(error))
            return 2
        except TrafficError as error:
            log.error("cannot follow connections (--traffic on); pass --traffic auto to run "
                      "without", reason=error.reason, error=str(error))
            return 2
        await agent.run(stop)
    return 0
