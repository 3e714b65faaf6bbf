"""Every episode is measured or abandoned with a reason; the watches recover by themselves."""

from __future__ import annotations

from tests.agent.harness import AgentEnv, Endpoint, key, until
from tests.agent.test_episodes import ready_service
from tests.conftest import ManualClock


async def test_ttl(env: AgentEnv, clock: ManualClock) -> None:
    await ready_service(env, node="node-b")
    env.cluster.set_endpoint("web-abc", "10.0.0.1", ready=False, terminating=True)
    await env.settle_episode(key("web", "10.0.0.1"))
    clock.advance(env.agent.config.episode_ttl + 1)  # housekeeping runs every 10 ms here
    await env.settle_finished(1)
    assert env.abandoned("ttl") == 1
    assert env.sample("endpoint_propagation_in_flight") == 0


async def test_in_flight_cap(env: AgentEnv) -> None:
    await ready_service(env, node="node-b", pods=3)
    env.agent.tracker.max_in_flight = 1
    env.cluster.set_endpoint("web-abc", "10.0.0.1", ready=False, terminating=True)
    await env.settle_episode(key("web", "10.0.0.1"))
    env.cluster.set_endpoint("web-abc", "10.0.0.2", ready=False, terminating=True)
    await until(lambda: env.abandoned("in_flight_cap") == 1, "cap reached")
    assert list(env.agent.tracker.episodes) == [key("web", "10.0.0.1")]


async def test_relist_after_410_abandons_what_the_gap_hid(env: AgentEnv) -> None:
    await ready_service(env, node="node-b", pods=3)
    env.cluster.set_endpoint("web-abc", "10.0.0.1", ready=False, terminating=True)
    await env.settle_episode(key("web", "10.0.0.1"))
    faults = env.cluster.server.faults
    await env.watching("endpointslices")
    faults.stall_streams("endpointslices")
    # Two changes the agent will not see as events: an in-flight endpoint leaves, and a Ready
    # endpoint goes not-ready (an episode whose start time is unknowable).
    env.cluster.drop_endpoint("web-abc", "10.0.0.1")
    env.cluster.set_endpoint("web-abc", "10.0.0.2", ready=False, terminating=True)
    faults.expire_streams("endpointslices")
    await until(lambda: env.restarts("endpointslices", "expired") == 1, "re-list after 410")
    await env.seen("endpointslices")
    assert env.abandoned("watch_gap") == 1  # 10.0.0.2: never started
    env.dataplane.set(key("web", "10.0.0.1"), False)
    await env.settle_finished(1)
    assert env.abandoned("watch_gap") == 2  # 10.0.0.1: its stop time is unknown
    assert env.stage_count("dataplane") == 0
    # After the gap, measurements go on as before.
    env.cluster.set_endpoint("web-abc", "10.0.0.3", ready=False, terminating=True,
                             serving=False)
    env.dataplane.set(key("web", "10.0.0.3"), False)
    env.cluster.pod_terminated("web-2")
    await env.settle_finished(2)
    assert env.stage_count("dataplane") == 1


async def test_dropped_stream_resumes_without_relisting(env: AgentEnv,
                                                        clock: ManualClock) -> None:
    """An update written while the stream is down arrives on catch-up, 1 s after the last line
    before the gap: it happened at some moment in that second. A stage timed from it is not
    observed (its bound is wider than --max-stage-uncertainty) but counted; the next update,
    on the live stream again, is timed as usual."""
    await ready_service(env, node="node-b")
    await env.watching("endpointslices")
    env.reconnects.clear()
    env.cluster.server.faults.drop_streams("endpointslices")
    clock.advance(1.0)
    env.cluster.set_endpoint("web-abc", "10.0.0.1", ready=False, terminating=True,
                             serving=False)  # written while the agent is disconnected
    env.reconnects.set()
    await env.settle_episode(key("web", "10.0.0.1"))
    clock.advance(0.5)
    env.dataplane.set(key("web", "10.0.0.1"), False)
    env.cluster.pod_terminated("web-0")
    await env.settle_finished(1)
    assert env.restarts("endpointslices", "connection") >= 1
    assert env.restarts("endpointslices", "expired") == 0
    assert env.abandoned("watch_gap") == 0
    (episode,) = env.agent.tracker.finished
    assert episode.not_ready.precision == 1.0
    assert env.stage_count("dataplane") == 0
    assert episode.unmeasured == {"dataplane": "uncertain"}  # its stop came live
    assert env.unmeasured("dataplane", "uncertain") == 1
    assert env.outcome("partial") == 1
    # Live again: timed as usual.
    env.cluster.set_endpoint("web-abc", "10.0.0.2", ready=False, terminating=True,
                             serving=False)
    await env.settle_episode(key("web", "10.0.0.2"))
    clock.advance(0.5)
    env.dataplane.set(key("web", "10.0.0.2"), False)
    env.cluster.pod_terminated("web-1")
    await env.settle_finished(2)
    assert env.stage_sum("dataplane") == 0.5
    assert env.outcome("measured") == 1


async def test_retry_after_is_a_floor_for_the_backoff(env: AgentEnv) -> None:
    await ready_service(env, node="node-b")
    faults = env.cluster.server.faults
    faults.fail_next(2, code=429, retry_after=7, method="GET", path="endpointslices.*watch")
    await env.watching("endpointslices")
    faults.drop_streams("endpointslices")
    await until(lambda: env.restarts("endpointslices", "http_error") == 2, "two 429s")
    assert [s for s in env.sleeps if s >= 7] == [7.0, 7.0]
    env.cluster.set_endpoint("web-abc", "10.0.0.1", ready=False, terminating=True)
    await env.settle_episode(key("web", "10.0.0.1"))  # and it recovered


async def test_server_errors_on_list_are_retried(env: AgentEnv) -> None:
    faults = env.cluster.server.faults
    await env.watching("pods")
    faults.fail_next(3, code=503, retry_after=None, method="GET",  # lists of the node's pods
                     path=r"pods\?(?!.*watch).*spec\.nodeName")
    faults.expire_streams("pods")  # forces a re-list, which now fails three times
    await until(lambda: env.restarts("pods", "http_error") == 3, "three 503s")
    await until(lambda: env.restarts("pods", "expired") == 1, "expired counted")
    env.cluster.create_pod("late", "node-a", "10.0.0.9")
    await env.seen("pods")


async def test_malformed_events_are_counted_and_skipped(env: AgentEnv) -> None:
    await ready_service(env, node="node-b")
    faults = env.cluster.server.faults
    await env.watching("endpointslices")
    faults.inject_line(b'{"type":"MODIFIED","object":{"metadata":{"name":"x","namespace":'
                       b'"default"},"endpoints":"nope","addressType":"IPv4"}}\n',
                       "endpointslices")
    faults.inject_line(b'{"type":"ADDED","object":{"kind":\n', "endpointslices")
    faults.inject_line(b'{"type":"SURPRISE","object":{}}\n', "endpointslices")
    await until(lambda: env.invalid("endpointslices", "malformed") == 1, "malformed object")
    # The first bad line ends the stream (the rest of it is not trusted); the watch resumes.
    await until(lambda: env.restarts("endpointslices", "malformed") >= 1, "resumed")
    assert env.invalid("endpointslices", "malformed_event") >= 1
    env.cluster.set_endpoint("web-abc", "10.0.0.1", ready=False, terminating=True,
                             serving=False)
    env.dataplane.set(key("web", "10.0.0.1"), False)
    env.cluster.pod_terminated("web-0")
    await env.settle_finished(1)
    assert env.stage_count("dataplane") == 1


async def test_a_truncated_line_does_not_swallow_the_next_event(env: AgentEnv) -> None:
    """A proxy cut one event short and the next one was glued to it: the agent resumes from
    the last good version and gets the real event again."""
    await ready_service(env, node="node-b")
    await env.watching("endpointslices")
    env.cluster.server.faults.inject_line(b'{"type":"MODIFIED","object":{"metadata":',
                                          "endpointslices")  # no newline
    env.cluster.set_endpoint("web-abc", "10.0.0.1", ready=False, terminating=True,
                             serving=False)
    await until(lambda: env.restarts("endpointslices", "malformed") == 1, "resumed")
    env.dataplane.set(key("web", "10.0.0.1"), False)
    env.cluster.pod_terminated("web-0")
    await env.settle_finished(1)
    assert env.stage_count("dataplane") == 1


async def test_episode_view_lists_sources(env: AgentEnv) -> None:
    await ready_service(env, node="node-b")
    env.cluster.set_endpoint("web-abc", "10.0.0.1", ready=False, terminating=True)
    await env.settle_episode(key("web", "10.0.0.1"))
    view = env.agent.episodes_view()
    (episode,) = view["in_flight"]
    assert episode["service"] == "default/web:http"
    assert episode["endpoint"] == {"ip": "10.0.0.1", "port": 8080}
    assert episode["timestamps"]["not_ready"]["source"] == "slice_watch"
    assert episode["outcome"] == "in_flight"


async def test_unnamed_port(env: AgentEnv, clock: ManualClock) -> None:
    uid = "uid-x"
    env.cluster.put_slice("api-1", "api", Endpoint("10.1.0.1", "node-b", "api-0", uid),
                          port_name="")
    await env.seen("endpointslices")
    unnamed = key("api", "10.1.0.1", port_name="")
    assert str(unnamed) == "default/api -> 10.1.0.1:8080"
    env.dataplane.set(unnamed, True)
    env.cluster.set_endpoint("api-1", "10.1.0.1", ready=False, terminating=True,
                             serving=False)
    await env.settle_episode(unnamed)
    clock.advance(0.5)
    env.dataplane.set(unnamed, False)
    env.cluster.drop_endpoint("api-1", "10.1.0.1")
    await env.settle_finished(1)
    assert env.stage_sum("dataplane") == 0.5
    assert env.agent.tracker.finished[0].key == unnamed
