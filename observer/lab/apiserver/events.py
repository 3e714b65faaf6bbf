"""``events.k8s.io/v1`` Events: stored, validated and served so that the agent's Events of
unsafe terminations can be written (create, and a patch for their series) and read back with
``kubectl get events``.

Validation follows ``pkg/apis/core/validation/events.go`` (``ValidateEventCreate`` for the
``events.k8s.io/v1`` version), the parts a writer can get wrong: ``eventTime``,
``reportingController`` (a domain-prefixed path), ``reportingInstance``, ``action`` and
``reason`` present (at most 128 characters), ``type`` Normal or Warning, ``note`` at most 1 kB,
``regarding`` in the Event's own namespace. Columns are the server-side table of
``pkg/printers/internalversion`` (``printEvent``): Last Seen, Type, Reason, Object, Message.
The lab serves no ``v1`` (core) Events: ``kubectl get events`` resolves ``events`` through
discovery to this group, and ``kubectl describe pod`` (which lists core Events) shows none.
"""

from __future__ import annotations

import re
from typing import Any

from observer.kube.apitime import parse_time
from observer.lab.apiserver.errors import Cause
from observer.lab.apiserver.resources import Column, ResourceType, human_duration
from observer.lab.apiserver.store import Obj

_TEXT_LIMIT = 128
_NOTE_LIMIT = 1024
_DOMAIN_PATH = re.compile(r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?/[^/].*$")


def _required(event: Obj, field: str) -> list[Cause]:
    value = event.get(field)
    if not value:
        return [Cause("FieldValueRequired", "Required value", field)]
    if field != "eventTime" and len(str(value)) > _TEXT_LIMIT:
        return [Cause("FieldValueTooLong", f"Too long: may not be more than {_TEXT_LIMIT} "
                      "bytes", field)]
    return []


def _validate(event: Obj) -> list[Cause]:
    causes = [c for field in ("eventTime", "reportingController", "reportingInstance",
                              "action", "reason") for c in _required(event, field)]
    controller = event.get("reportingController")
    if controller and not _DOMAIN_PATH.match(str(controller)):
        causes.append(Cause("FieldValueInvalid", "Invalid value: must be a domain-prefixed "
                            "path (such as \"acme.io/foo\")", "reportingController"))
    if event.get("type") not in ("Normal", "Warning"):
        causes.append(Cause("FieldValueNotSupported", f"Unsupported value: "
                            f"\"{event.get('type', '')}\": supported values: \"Normal\", "
                            "\"Warning\"", "type"))
    if len(str(event.get("note") or "").encode()) > _NOTE_LIMIT:
        causes.append(Cause("FieldValueTooLong", f"Too long: may not be more than "
                            f"{_NOTE_LIMIT} bytes", "note"))
    regarding = event.get("regarding") or {}
    namespace = event["metadata"].get("namespace", "")
    if regarding.get("namespace") not in (None, "", namespace):
        causes.append(Cause("FieldValueInvalid", "Invalid value: does not match event.namespace",
                            "regarding.namespace"))
    return causes


def _last_seen(event: Obj) -> str | None:
    series = event.get("series") or {}
    return series.get("lastObservedTime") or event.get("eventTime")


def _row(event: Obj, now: float) -> list[Any]:
    seen = _last_seen(event)
    regarding = event.get("regarding") or {}
    kind = str(regarding.get("kind", "")).lower()
    count = (event.get("series") or {}).get("count")
    last = human_duration(now - parse_time(seen)) if seen else "<unknown>"
    return [last if count is None else f"{last} (x{count})", event.get("type", ""),
            event.get("reason", ""), f"{kind}/{regarding.get('name', '')}",
            event.get("note", "")]


EVENTS = ResourceType(
    group="events.k8s.io", version="v1", resource="events", kind="Event",
    model="EventsV1Event", short_names=("ev",), has_status=False, initial_status=dict,
    graceful_delete=False,
    selectable={"metadata.name": lambda o: o["metadata"]["name"],
                "metadata.namespace": lambda o: o["metadata"].get("namespace", ""),
                "reason": lambda o: o.get("reason", ""),
                "type": lambda o: o.get("type", "")},
    default=lambda event: event, validate=_validate, validate_update=lambda new, old: [],
    columns=(Column("Last Seen", "string", "", "Time of the last occurrence (and how many, "
                    "for a series)."),
             Column("Type", "string", "", "Type of this event (Normal, Warning)."),
             Column("Reason", "string", "", "Why the action was taken."),
             Column("Object", "string", "", "The object this event is about."),
             Column("Message", "string", "", "A human-readable description.")),
    row=_row)
