"""Finding the Kubernetes API: in-cluster service account first, then a kubeconfig."""

from __future__ import annotations

from typing import Any

from kubernetes_asyncio import client, config


async def load_api_config(kubeconfig: str | None) -> Any:
    """A kubernetes_asyncio Configuration: ``kubeconfig`` when given; otherwise the pod's
    service account when running in a cluster, else $KUBECONFIG or ~/.kube/config."""
    configuration = client.Configuration()
    if kubeconfig is None:
        try:
            config.load_incluster_config(  # type: ignore[no-untyped-call]
                client_configuration=configuration)
            return configuration
        except config.ConfigException:
            pass
    await config.load_kube_config(config_file=kubeconfig, client_configuration=configuration)
    return configuration
