"""observer: measure how long Kubernetes endpoint removal takes to reach each node's dataplane."""

from observer.kube.imports import import_client_parts

__version__ = "0.1.0"

# Before any module of observer imports kubernetes_asyncio: its parts, not all of it (65 MiB).
import_client_parts()
