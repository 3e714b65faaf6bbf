"""Run only by tests/test_suite_guards.py, in a pytest of its own: a test that holds a network
namespace (printing its name) until the run is ended by a signal."""

from __future__ import annotations

import threading

from tests.netns import Netns


def test_holds_a_namespace(netns: Netns) -> None:
    print(f"holding {netns.name}", flush=True)
    threading.Event().wait()
