"""Where an episode's line is written: one canonical log line per episode, once its record is
final (BRIEF §5) — when it finished, or, when its connections are followed, when its traffic
window closed; when it was abandoned. Everything about it, flat."""

from __future__ import annotations

import structlog

from observer.episodes.model import AFTERS, ORIGINS, AbandonReason, Episode
from observer.episodes.observers import EpisodeObserver
from observer.values import join_host_port

log = structlog.get_logger("observer.export")


class EpisodeLog(EpisodeObserver):
    def final(self, episode: Episode) -> None:
        log.info("episode finished", **log_fields(episode))

    def abandoned(self, reason: AbandonReason, episode: Episode | None) -> None:
        if episode is not None:
            log.info("episode abandoned", reason=reason, **log_fields(episode))
        else:
            log.info("episode abandoned before it started", reason=reason)

    def fallback(self, episode: Episode) -> None:
        log.info("endpoint kept by kube-proxy fallback", endpoint=str(episode.key))


def log_fields(episode: Episode) -> dict[str, object]:
    """The canonical line for one episode."""
    fields: dict[str, object] = {
        "service": str(episode.key.service_port),
        "endpoint": join_host_port(episode.key.ip, episode.key.port),
        "pod": episode.pod, "local": episode.local, "cause": episode.cause,
        "fallback": episode.fallback, "unsafe": episode.unsafe,
    }
    if episode.failed_connections:
        fields["failed_connections"] = episode.failed_connections
    if episode.workload is not None:
        fields["namespace"], fields["workload"] = (episode.workload.namespace,
                                                   episode.workload.label)
    fields.update({f"{stage}_seconds": round(v, 6) for stage, v in episode.stages.items()})
    fields.update({f"{stage}_unmeasured": why for stage, why in episode.unmeasured.items()})
    if episode.unsafe_window is not None:
        fields["unsafe_window_seconds"] = round(episode.unsafe_window, 6)
    if episode.headroom is not None:
        fields["headroom_seconds"] = round(episode.headroom, 6)
    traffic = episode.traffic
    if traffic is not None:
        for after in AFTERS:
            fields[f"connections_after_{after}"] = traffic.count(after)
        for origin in ORIGINS:
            fields[f"connections_{origin}"] = sum(n for (o, _), n in traffic.connections.items()
                                                  if o == origin)
        start = episode.deleted or episode.not_ready
        if traffic.last:
            fields["last_connection_seconds"] = round(
                max(t.mono for t in traffic.last.values()) - start.mono, 6)
        if traffic.cut is not None:
            fields["connections_cut"] = traffic.cut
        if traffic.lost:
            fields["traffic_events_lost"] = True
    return fields
