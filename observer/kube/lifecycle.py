"""What a pod spec says about termination: each container's preStop hook and how long it
holds the container before SIGTERM, and the grace period.

Read by the agent (to tell the app's own shutdown time from the preStop delay), by
``observer report`` (workload findings) and by the lab's kubelet (which runs the hooks it
reads here). Shapes handled, as people write them:

- the native ``sleep`` action (``lifecycle.preStop.sleep.seconds``, KEP-3960);
- ``exec`` of ``sleep N`` (GNU ``sleep``: several operands add up, suffixes ``s m h d``),
  also through ``busybox``, and shell scripts ``sh -c 'sleep 15 && nginx -s quit'``: the
  ``sleep`` commands the script runs one after the other add up, other commands count as
  instant;
- ``["sh", "-c", "sleep", "15"]`` — ``-c`` takes one string, so ``15`` becomes ``$0`` and
  ``sleep`` runs without an operand and fails at once: a preStop of 0 s;
- ``httpGet``: the duration is whatever the server takes — unknown;
- any other ``exec``: unknown; ``tcpSocket`` (never run for lifecycle hooks) or nothing: none.

Numbers written as strings (``"15"``) are accepted where a number belongs.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

# prestop kinds, as `observer report --json` writes them.
EXEC_SLEEP = "exec-sleep"
SLEEP_ACTION = "sleep-action"
HTTP = "http"
EXEC = "exec"  # an exec hook that is not (or does not start with) a sleep: duration unknown
NONE = "none"

DEFAULT_GRACE_SECONDS = 30  # pkg/apis/core/v1/defaults.go
_SHELLS = {"sh", "bash", "ash", "dash", "zsh", "ksh"}
_SLEEP_OPERAND = re.compile(r"^(\d+(?:\.\d*)?|\.\d+)([smhd]?)$")
_UNIT = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}
_SEPARATORS = re.compile(r"&&|\|\||[;\n|]")


@dataclass(frozen=True, slots=True)
class PreStop:
    kind: str
    seconds: float | None  # how long the hook holds the container before SIGTERM; None: unknown
    runs_more: bool = False  # an exec-sleep script that also runs other commands

    @property
    def replaceable(self) -> bool:
        """The hook does nothing but wait (or there is none): a patch may replace it with a
        sleep of another length without losing anything."""
        return self.kind in (NONE, SLEEP_ACTION) or (self.kind == EXEC_SLEEP
                                                      and not self.runs_more)


@dataclass(frozen=True, slots=True)
class ContainerLifecycle:
    name: str
    prestop: PreStop
    serves: bool  # declares ports (or nothing in the pod does): a container traffic reaches
    sidecar: bool = False  # an init container with restartPolicy Always (in initContainers)


def number(value: Any) -> float | None:
    """A JSON number or a string holding one; None for anything else."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value.strip())
        except ValueError:
            return None
    return None


def _sleep_operands(words: Sequence[str]) -> float | None:
    """GNU sleep's total for its operands; None when one is not a duration; 0 without any
    (sleep fails at once)."""
    total = 0.0
    for word in words:
        match = _SLEEP_OPERAND.match(word)
        if match is None:
            return None
        total += float(match.group(1)) * _UNIT[match.group(2)]
    return total


def _program(word: str) -> str:
    return word.rsplit("/", 1)[-1]


def _sleep_operands_of(words: Sequence[str]) -> list[str] | None:
    """The operands when ``words`` run ``sleep`` (directly or through busybox), else None."""
    if words and _program(words[0]) == "busybox":
        words = words[1:]
    if not words or _program(words[0]) != "sleep":
        return None
    return list(words[1:])


def _script(script: str) -> tuple[float, bool] | None:
    """The sleeps a ``sh -c`` script runs one after another, and whether it runs anything
    else; None if it runs none (or one whose time cannot be read, ``sleep $DELAY``)."""
    total, found, more = 0.0, False, False
    for part in _SEPARATORS.split(script):
        try:
            words = shlex.split(part)
        except ValueError:
            return None
        operands = _sleep_operands_of(words)
        if operands is None:
            more = more or bool(words)
            continue
        seconds = _sleep_operands(operands)
        if seconds is None:
            return None
        total, found = total + seconds, True
    return (total, more) if found else None


def _exec_sleep(command: Sequence[Any]) -> tuple[float, bool] | None:
    """How long an exec hook's command sleeps, and whether it does more than sleep; None when
    it is not a sleep (or says so in a way that cannot be read)."""
    words = [str(word) for word in command]
    operands = _sleep_operands_of(words)
    if operands is not None:
        seconds = _sleep_operands(operands)
        return None if seconds is None else (seconds, False)
    if (len(words) >= 3 and _program(words[0]) in _SHELLS
            and re.fullmatch(r"-[a-z]*c[a-z]*", words[1])):
        return _script(words[2])
    return None


def prestop_of(container: Mapping[str, Any]) -> PreStop:
    lifecycle = container.get("lifecycle")
    hook = lifecycle.get("preStop") if isinstance(lifecycle, Mapping) else None
    if not isinstance(hook, Mapping):
        return PreStop(NONE, None)
    sleep = hook.get("sleep")
    if isinstance(sleep, Mapping):
        return PreStop(SLEEP_ACTION, number(sleep.get("seconds")))
    exec_ = hook.get("exec")
    if isinstance(exec_, Mapping):
        command = exec_.get("command")
        found = _exec_sleep(command) if isinstance(command, list) else None
        return PreStop(EXEC_SLEEP, *found) if found is not None else PreStop(EXEC, None)
    if isinstance(hook.get("httpGet"), Mapping):
        return PreStop(HTTP, None)
    return PreStop(NONE, None)


def containers_of(pod_spec: Mapping[str, Any]) -> list[ContainerLifecycle]:
    """The containers that run for the pod's lifetime: regular ones and sidecars (init
    containers with ``restartPolicy: Always``, KEP-753). A container serves when it declares
    ports, or when no container of the pod declares any (ports are optional in the API)."""
    running: list[tuple[Mapping[str, Any], bool]] = [
        (c, False) for c in _items(pod_spec.get("containers")) if isinstance(c, Mapping)]
    running += [(c, True) for c in _items(pod_spec.get("initContainers"))
                if isinstance(c, Mapping) and c.get("restartPolicy") == "Always"]
    any_ports = any(c.get("ports") for c, _ in running)
    return [ContainerLifecycle(name=str(c.get("name", "")), prestop=prestop_of(c),
                               serves=bool(c.get("ports")) or not any_ports, sidecar=sidecar)
            for c, sidecar in running]


def _items(value: Any) -> list[Any]:
    """A list's items; anything else (absent, malformed) has none."""
    return value if isinstance(value, list) else []


def grace_seconds(pod_spec: Mapping[str, Any]) -> float:
    value = number(pod_spec.get("terminationGracePeriodSeconds"))
    return DEFAULT_GRACE_SECONDS if value is None else value


def known_prestop_seconds(containers: Iterable[ContainerLifecycle]) -> float | None:
    """The longest preStop of a pod's containers (hooks run in parallel), or None when one of
    them takes an unknown time."""
    longest = 0.0
    for container in containers:
        if container.prestop.kind == NONE:
            continue
        if container.prestop.seconds is None:
            return None
        longest = max(longest, container.prestop.seconds)
    return longest
