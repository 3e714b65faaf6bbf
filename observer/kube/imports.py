"""kubernetes_asyncio, imported in the parts the agent calls.

Importing any module of kubernetes_asyncio first runs its packages' ``__init__``: the top package
imports ``client``, whose ``__init__`` imports every generated API class (``core_v1_api`` alone
is 2.8 MB of source) and ``client.models``, every model (~700 modules). In kubernetes_asyncio
36.1 on CPython 3.11 that is 65 MiB of resident memory (``python -c "import
kubernetes_asyncio.client"``: 76 MiB against 11 for the bare interpreter), in every agent of
every node: a known cost of the generated clients (kubernetes-client/python#771: "importing
the Python Kubernetes client imports every model and api"; tomplus/kubernetes_asyncio#293).
The agent calls ``ApiClient``, ``Configuration``, three API classes and the config loaders, and
reads the API's JSON itself (``_preload_content=False``, observer/kube/watch.py): it never
builds a model.

So ``observer run`` calls ``import_client_parts`` before anything imports kubernetes_asyncio
(``observer.commands.run``; the benchmarks, which measure the agent as it runs, do it in
``bench/__init__.py``; nothing else does, and importing observer changes nothing):
kubernetes_asyncio's four packages are registered without running their ``__init__`` and the
modules the agent uses are imported from them; the names the agent and kubernetes_asyncio's
config loaders take from ``client`` are set on it. A package asked for any other name runs its
own ``__init__`` then (a module ``__getattr__``, PEP 562), so code in the same process that
needs a model or another API class gets it, at the full cost. The agent's modules: 50 MiB
resident instead of 83 (docs/benchmarks.md).

It depends on the layout of kubernetes_asyncio's generated packages (the module names below):
the same in 31.1 and 36.1, the ends of the range pyproject.toml pins, both tested
(tests/agent/test_client_imports.py). Should a release move them, the call imports all of
kubernetes_asyncio instead and says so: the agent works, at the full cost.
"""

from __future__ import annotations

import importlib.util
import sys
import threading
from types import ModuleType

import structlog

log = structlog.get_logger("observer.kube")

_lock = threading.Lock()


def _deferred(name: str) -> ModuleType:
    """Package ``name`` registered, its ``__init__`` not run until a name it lacks is asked for.
    Its parent must be registered already (finding a submodule imports its parent)."""
    spec = importlib.util.find_spec(name)
    if spec is None or spec.loader is None or spec.submodule_search_locations is None:
        raise ImportError(f"no package {name} (is kubernetes_asyncio installed?)", name=name)
    loader = spec.loader
    package = importlib.util.module_from_spec(spec)

    def complete(attribute: str) -> object:
        with _lock:
            if package.__dict__.pop("__getattr__", None) is not None:
                loader.exec_module(package)
        return getattr(package, attribute)

    package.__getattr__ = complete  # type: ignore[method-assign]
    sys.modules[name] = package
    parent, _, child = name.rpartition(".")
    if parent:
        setattr(sys.modules[parent], child, package)
    return package


def import_client_parts() -> bool:
    """Import kubernetes_asyncio's modules the agent uses, not its packages' ``__init__``;
    whether it did (not when kubernetes_asyncio was imported already, or its layout is not
    the one known)."""
    if "kubernetes_asyncio" in sys.modules:
        return False
    try:
        _import_parts()
    except (ImportError, AttributeError) as error:
        for name in [m for m in sys.modules if m.startswith("kubernetes_asyncio")]:
            del sys.modules[name]
        importlib.import_module("kubernetes_asyncio.client")
        importlib.import_module("kubernetes_asyncio.config")
        log.info("kubernetes_asyncio imported whole: its layout is not the one known",
                 error=str(error))
        return False
    return True


def _import_parts() -> None:
    for name in _PACKAGES:
        _deferred(name)
    # One by one and in this order: ``from package import module`` would ask the package for
    # the name first (running its ``__init__``), and ``api_client`` takes ``rest`` from it.
    modules = {name: importlib.import_module(f"kubernetes_asyncio.client.{name}")
               for name in _MODULES}
    client = sys.modules["kubernetes_asyncio.client"]
    for name, module in _NAMES.items():
        setattr(client, name, getattr(modules[module], name))
    importlib.import_module("kubernetes_asyncio.config")  # its __init__: just its loaders


_PACKAGES = ("kubernetes_asyncio", "kubernetes_asyncio.client", "kubernetes_asyncio.client.api",
             "kubernetes_asyncio.client.models")
_MODULES = ("exceptions", "configuration", "rest", "api_client", "api.core_v1_api",
            "api.discovery_v1_api", "api.events_v1_api")
# What the agent and kubernetes_asyncio's config loaders take from ``client``.
_NAMES = {"Configuration": "configuration", "ApiClient": "api_client",
          "CoreV1Api": "api.core_v1_api", "DiscoveryV1Api": "api.discovery_v1_api",
          "EventsV1Api": "api.events_v1_api"}
