"""Advice as patches, not prose (docs/report.md, "Patches").

For each workload whose finding is unsafe or wasteful (``at-risk``, ``no-prestop``,
``over-provisioned``, ``grace-too-short``), a strategic-merge patch of its pod template: the
preStop of each container that needs another one, and ``terminationGracePeriodSeconds`` where
the grace period would not cover the longest preStop plus the app's exit plus the margin.

- The hook is the native sleep action (``lifecycle.preStop.sleep.seconds``, KEP-3960: beta
  and on by default from Kubernetes 1.30, GA in 1.34) when the cluster's ``/version`` says it
  has it, ``exec: [sleep, N]`` otherwise — which needs a ``sleep`` binary in the image
  (distroless images have none), said as a warning.
- The other handler fields are set to ``null`` so the patch replaces the hook whatever it was
  (a strategic merge patch deletes a field given ``null``; kustomize does the same), without
  ``$patch`` directives some tools do not know.
- A hook that runs more than a sleep (``sh -c 'sleep 5 && nginx -s quit'``), an ``httpGet`` or
  another exec is not replaced — it does something a sleep would lose; the note says how long
  it should wait. A bare pod cannot change its hooks in place (pod updates may not change
  them): noted, not patched.
- Without a measured app exit, the grace period is only made to cover the preStop plus the
  margin.
"""

from __future__ import annotations

import json
import math
import re
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from observer.report.per_workload import WorkloadAdvice

PATCHED = ("at-risk", "no-prestop", "over-provisioned", "grace-too-short")
_NEW_PRESTOP = ("at-risk", "no-prestop", "over-provisioned")
SLEEP_ACTION_SINCE = (1, 30)  # KEP-3960: beta, enabled by default
_HANDLERS = ("exec", "httpGet", "tcpSocket", "sleep")
_RESOURCE = {"Deployment": "deployment", "StatefulSet": "statefulset",
             "DaemonSet": "daemonset", "ReplicaSet": "replicaset"}


def has_sleep_action(major: str, minor: str) -> bool | None:
    """Whether a cluster of this ``/version`` runs the preStop sleep action by default (None:
    the version cannot be read). Providers write minors such as ``30+``."""
    found = [re.match(r"\d+", part) for part in (major, minor)]
    if found[0] is None or found[1] is None:
        return None
    return (int(found[0].group()), int(found[1].group())) >= SLEEP_ACTION_SINCE


@dataclass(frozen=True)
class Patch:
    advice: WorkloadAdvice
    body: dict[str, Any] | None  # the strategic merge patch; None: nothing can be patched
    notes: tuple[str, ...]  # what was left alone, and why

    @property
    def title(self) -> str:
        a = self.advice
        return (f"{a.namespace} {a.workload}: {', '.join(a.findings)}; preStop "
                f"{a.sizing.prestop_seconds} s (set by {a.sizing.set_by}, {a.sizing.episodes} "
                f"deletions measured)")

    def command(self) -> str:
        """``kubectl patch`` applying it."""
        a = self.advice
        return shlex.join(["kubectl", "patch", _RESOURCE[a.kind], a.name, "--namespace",
                           a.namespace, "--type", "strategic", "--patch",
                           json.dumps(self.body, separators=(",", ":"))])

    def document(self) -> str:
        """A patch file for kustomize (``patches: [{path: <file>}]``): the target's apiVersion,
        kind and name, then the patch. JSON, which is YAML, after comment lines."""
        a = self.advice
        target = {"apiVersion": "apps/v1", "kind": a.kind,
                  "metadata": {"name": a.name, "namespace": a.namespace}, **(self.body or {})}
        lines = [f"# observer report: {self.title}", *(f"# note: {n}" for n in self.notes)]
        return "\n".join([*lines, json.dumps(target, indent=2)]) + "\n"

    @property
    def file_name(self) -> str:
        a = self.advice
        return f"{a.namespace}.{a.kind.lower()}.{a.name}.yaml"


def _hook(seconds: int, sleep_action: bool) -> dict[str, Any]:
    hook: dict[str, Any] = dict.fromkeys(_HANDLERS)
    if sleep_action:
        hook["sleep"] = {"seconds": seconds}
    else:
        hook["exec"] = {"command": ["sleep", str(seconds)]}
    return hook


def plan(advice: WorkloadAdvice, *, sleep_action: bool, margin: float) -> Patch | None:
    """The patch for one workload (None when its findings ask for none)."""
    if not set(advice.findings) & set(PATCHED):
        return None
    if advice.kind not in _RESOURCE:
        return Patch(advice, None, (
            "a bare pod cannot change its hooks in place: change what creates it",))
    notes: list[str] = []
    lists: dict[str, list[dict[str, Any]]] = {"containers": [], "initContainers": []}
    longest = 0.0
    for container in advice.containers:
        w = container.workload
        wanted = container.suggested_prestop_seconds
        if set(container.findings) & set(_NEW_PRESTOP) and w.prestop.replaceable:
            seconds = math.ceil(wanted)
            lists["initContainers" if w.sidecar else "containers"].append(
                {"name": w.container, "lifecycle": {"preStop": _hook(seconds, sleep_action)}})
            longest = max(longest, seconds)
            continue
        if set(container.findings) & set(_NEW_PRESTOP):
            notes.append(f"container {w.container}: its preStop ({w.prestop.kind}) does more "
                         f"than wait; make it wait {wanted:g} s by hand")
        longest = max(longest, w.prestop.seconds if w.prestop.seconds is not None else wanted)
    spec: dict[str, Any] = {name: items for name, items in lists.items() if items}
    needed = advice.recommended_grace_seconds
    if needed is None:
        needed = math.ceil(longest + margin)
    if advice.grace_seconds < needed:
        spec["terminationGracePeriodSeconds"] = needed
    if not spec:
        return Patch(advice, None, tuple(notes))
    return Patch(advice, {"spec": {"template": {"spec": spec}}}, tuple(notes))


def write(patches: list[Patch], directory: Path) -> list[Path]:
    """One file per patchable workload in ``directory`` (made if missing)."""
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for patch in patches:
        if patch.body is None:
            continue
        path = directory / patch.file_name
        path.write_text(patch.document())
        written.append(path)
    return written


def read(directory: Path) -> list[dict[str, Any]]:
    """The patch documents ``write`` left in ``directory`` (none if it is not there): each
    file's JSON, after its comment lines."""
    if not directory.is_dir():
        return []
    return [json.loads("".join(line for line in path.read_text().splitlines(keepends=True)
                               if not line.startswith("#")))
            for path in sorted(directory.glob("*.yaml"))]


def script(patches: list[Patch]) -> str:
    """``kubectl patch`` commands, each after a comment saying what it is for."""
    lines = ["# observer report --patches -: review, then run (sh)"]
    for patch in patches:
        lines.append(f"# {patch.title}")
        lines += [f"# note: {note}" for note in patch.notes]
        if patch.body is not None:
            lines.append(patch.command())
    return "\n".join(lines) + "\n"
