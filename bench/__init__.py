"""Benchmarks (results in docs/benchmarks.md); what they share with the tests is in
``observer.testing``.

They measure the agent as ``observer run`` runs it, which asks for kubernetes_asyncio's parts
it calls before anything imports kubernetes_asyncio (``observer.commands.run``,
``observer/kube/imports.py``): so this package does, first, whichever benchmark runs.
(Code that then needs more of kubernetes_asyncio — the lab's API server — gets it on demand.)
"""

from observer.kube.imports import import_client_parts

import_client_parts()
