"""The suite's own guards: a hanging test fails at its timeout with every task's stack printed,
and a run ended by SIGTERM still removes the network namespaces its tests made."""

from __future__ import annotations

import signal
import subprocess
import sys

from tests.conftest import REPO, require_root


def pytest_run(probe: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "pytest", "-s", "-q", "-p", "no:cacheprovider",
         f"tests/probes/{probe}"], cwd=REPO, text=True, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT)


def test_a_hanging_test_fails_at_its_timeout_and_shows_where_each_task_waits() -> None:
    proc = pytest_run("hanging.py")
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 1, out
    assert "Timeout: the test ran for more than 2.0 s" in out
    assert "+++ <Task pending" in out  # the task dump
    assert "waits_forever_for_nothing" in out  # the coroutine the hang is in
    assert "1 failed" in out


def netns_names() -> set[str]:
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True,
                            check=True, timeout=30).stdout
    return {line.split()[0] for line in listed.splitlines() if line.strip()}


def test_a_run_ended_by_sigterm_removes_its_network_namespaces() -> None:
    require_root()
    proc = pytest_run("holding_netns.py")
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()  # the test has made its namespace and holds it
        assert line.startswith("holding "), line + proc.stdout.read()
        name = line.split()[1]
        assert name in netns_names()
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode != 0, out
    assert name not in netns_names(), out
