"""The container image carries the agent alone (the Dockerfile removes observer/lab): the
command still starts, and `observer lab` says the lab is not installed. Run with the lab made
unimportable, as scripts/image.sh checks in the built image."""

from __future__ import annotations

import subprocess
import sys

from tests.conftest import REPO

WITHOUT_LAB = "import sys; sys.modules['observer.lab'] = None\nfrom observer.cli import main\n"


def observer(*args: str) -> subprocess.CompletedProcess[str]:
    code = WITHOUT_LAB + f"sys.exit(main({list(args)!r}))"
    return subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True,
                          text=True, timeout=60, check=False)


def test_the_agents_commands_start_without_the_lab() -> None:
    assert observer("--version").stdout.startswith("observer ")
    done = observer("run", "--help")
    assert done.returncode == 0, done.stderr
    assert "--dataplane" in done.stdout


def test_observer_lab_says_it_is_not_installed() -> None:
    done = observer("lab", "--deletions", "1")
    assert done.returncode == 2
    assert "the lab is not part of this installation" in done.stderr
    assert "Traceback" not in done.stderr


def test_other_commands_still_refuse_unknown_flags() -> None:
    done = observer("dataplane", "--no-such-flag")
    assert done.returncode == 2
    assert "unrecognized arguments: --no-such-flag" in done.stderr
