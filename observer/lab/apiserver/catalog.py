"""Every resource type the lab API server serves."""

from __future__ import annotations

from observer.lab.apiserver.events import EVENTS
from observer.lab.apiserver.resources import CORE_AND_APPS, ResourceType

RESOURCES: tuple[ResourceType, ...] = (*CORE_AND_APPS, EVENTS)
