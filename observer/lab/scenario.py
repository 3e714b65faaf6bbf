"""The lab run: a control plane, N emulated nodes each with a real agent, and a stream of
pod deletions; afterwards, every measured episode next to the truth.

Workloads: Deployments ``careful`` (preStop ``exec sleep --prestop``) and ``hasty`` (no
preStop), each with two pods per node behind a Service. The Deployments and their ReplicaSets
are real API objects (what ``observer report`` reads); the lab creates and deletes the pods
itself, with the ReplicaSet as their owner. Deletions alternate between them; three in four
are rolling replacements (the new pod is created first), one in four a plain deletion (the
replacement comes after). So both safe and unsafe terminations happen.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import json
import random
import tempfile
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import structlog
from kubernetes_asyncio import client, config

from observer.agent import Agent, build_agent, given, open_dataplane
from observer.clock import Clock
from observer.config import AgentConfig, DataplaneSettings, TrafficSettings, WatchSettings
from observer.dataplane.cilium import BPF_ROOT
from observer.dataplane.commands import CommandRunner
from observer.dataplane.memory import MemoryDataplane
from observer.kube.lifecycle import containers_of, known_prestop_seconds
from observer.kube.owners import TEMPLATE_HASH_LABEL
from observer.lab.apiserver.patching import strategic_merge_patch
from observer.lab.apiserver.registry import DeleteOptions, WriteOptions
from observer.lab.apiserver.server import ApiServer
from observer.lab.apps import PodRuntime, Sockets
from observer.lab.cilium import CiliumAgent, CiliumProgrammer
from observer.lab.clients import STREAMS, Backends, Clients
from observer.lab.config import MODES, LabConfig
from observer.lab.controller import NAMESPACE, EndpointSliceController
from observer.lab.kubelet import Kubelet
from observer.lab.kubeproxy import (
    IptablesProgrammer,
    KubeProxy,
    MemoryProgrammer,
    NftProgrammer,
    Programmer,
)
from observer.lab.netns import Namespaces, can_use_namespaces
from observer.lab.network import FABRIC_ADDRESS, LabNetwork, node_address
from observer.lab.traffic import NodeView, traffic_result
from observer.lab.truth import Truth
from observer.tasks import cancel_and_wait

log = structlog.get_logger("observer.lab")
Hook = Callable[["LabRun"], Awaitable[None]]
CLUSTER_IPS = {"careful": "172.30.0.10", "hasty": "172.30.0.11", "draining": "172.30.0.12",
               "streaming": "172.30.0.13"}
POD_PORT = 8080
_SAFE = "bcdfghjklmnpqrstvwxz2456789"  # k8s.io/apimachinery/pkg/util/rand SafeEncodeString


def template_hash(template: dict[str, Any]) -> str:
    """A pod template's hash as the deployment controller writes it: FNV-32a of the template
    (``controller.ComputeHash``; here of its JSON), its decimal digits safe-encoded."""
    digest = 0x811C9DC5
    for byte in json.dumps(template, sort_keys=True).encode():
        digest = ((digest ^ byte) * 0x01000193) & 0xFFFFFFFF
    return "".join(_SAFE[int(d) % len(_SAFE)] for d in str(digest))
TRAFFIC_SLACK = 2.0  # seconds an endpoint is followed past the ingress' longest delay


@dataclass
class Node:
    name: str
    index: int
    kubelet: Kubelet
    kube_proxy: KubeProxy
    netns: str | None
    memory: MemoryDataplane | None  # the node's dataplane when there is no namespace
    runtime: PodRuntime | None = None  # real pods: with network namespaces
    agent: Agent | None = None


@dataclass
class LabRun:
    config: LabConfig
    dataplane: str  # what really ran (memory when namespaces were not possible)
    note: str | None
    truth: Truth
    nodes: list[Node]
    kubeconfig: Path
    elapsed: float = 0.0
    tasks: list[asyncio.Task[None]] = field(default_factory=list)
    traffic: dict[str, Any] | None = None  # what the clients and the agents saw (real pods)
    # Per workload: pods deleted, and the preStop seconds their specs made them wait.
    deletions: dict[str, int] = field(default_factory=dict)
    prestop_spent: dict[str, float] = field(default_factory=dict)


class Lab:
    def __init__(self, config: LabConfig, *, clock: Clock,
                 announce: Callable[[str], None] = lambda _: None,
                 progress: Callable[[str], None] = lambda _: None,
                 patches: Sequence[dict[str, Any]] = ()) -> None:
        self.config = config
        # Strategic-merge patches of the Deployments (``observer report --patches`` files,
        # as documents), applied through the API server's own patching before any pod exists.
        self.patches = patches
        self.clock = clock
        self.announce = announce
        self.progress = progress  # a line saying what is going on (observer.lab.command)
        self.rng = random.Random(config.seed)
        self.truth = Truth()
        # Bookmarks well within the agents' inactivity timeout, as a real API server's are.
        self.server = ApiServer(clock=clock, bookmark_interval=min(
            5.0, config.watch_inactivity_timeout / 3))
        self.namespaces = Namespaces()
        self.network: LabNetwork | None = None
        self.clients = Clients(clock=clock, rate=config.request_rate,
                               rng=random.Random(self.rng.random()))
        self.backends: list[Backends] = []
        self._sockets: list[Sockets] = []
        self.workloads = config.workloads
        # "<deployment>-<hash>" → its ReplicaSet as owner reference, and its template.
        self._owners: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {}
        self._pod_counter = 0
        self.deletions_done = 0  # pods really deleted (fast churn can find no victim)
        self._victims: set[str] = set()
        self._tmp = tempfile.TemporaryDirectory(prefix="observer-lab-")
        self.kubeconfig = Path(self._tmp.name) / "kubeconfig"
        # --dataplane cilium: a BPF filesystem of the lab's own; each node's maps under it.
        self.bpffs: Path | None = None
        self._cilium: list[CiliumAgent] = []
        # The agents' API client, their stops and tasks (one run a Lab).
        self._api: client.ApiClient | None = None
        self._stops: list[asyncio.Event] = []
        self._agent_tasks: list[asyncio.Task[None]] = []

    # set-up ----------------------------------------------------------------------------------

    async def _programmer(self, mode: str, netns: str | None,
                          memory: MemoryDataplane | None) -> Programmer:
        if memory is not None:
            return MemoryProgrammer(memory)
        runner = CommandRunner(netns=netns)
        if mode == "cilium":
            assert self.bpffs is not None
            assert netns is not None
            # Cilium without BPF masquerading installs masquerading rules (CILIUM_POST_nat),
            # which turn conntrack on in the node's namespace: the traffic evidence sees pod
            # traffic. (Here one for an egress device the lab has not: it rewrites nothing.)
            await runner.run(["nft", "-f", "-"], stdin=(
                b"add table ip cilium-masquerade\nadd chain ip cilium-masquerade postrouting "
                b"{ type nat hook postrouting priority 100 ; }\nadd rule ip cilium-masquerade "
                b"postrouting oifname \"cilium-egress\" masquerade\n"))
            agent = CiliumAgent(str(self.bpffs / netns))
            self._cilium.append(agent)
            return CiliumProgrammer(agent)
        agents_mode, backend = MODES[mode]
        if agents_mode == "nftables":
            return NftProgrammer(runner)
        assert agents_mode == "iptables", f"no programmer for {mode}"
        assert backend is not None
        return IptablesProgrammer(runner, backend)

    async def _node(self, index: int, mode: str) -> Node:
        name = f"node-{index + 1}"
        netns = await self.namespaces.create(name) if mode != "memory" else None
        runtime = None
        if netns is not None and self.network is not None:
            await self.network.join(index, netns)
            runtime = PodRuntime(self.network, netns, POD_PORT)
        memory = MemoryDataplane(clock=self.clock, mode="nftables") if netns is None else None
        programmer = await self._programmer(mode, netns, memory)
        kube_proxy = KubeProxy(node=name, server=self.server, truth=self.truth, clock=self.clock,
                               config=self.config, programmer=programmer,
                               cluster_ips={w: CLUSTER_IPS[w] for w in self.workloads},
                               rng=random.Random(self.rng.random()))
        kubelet = Kubelet(node=name, index=index, server=self.server, truth=self.truth,
                          clock=self.clock, config=self.config,
                          rng=random.Random(self.rng.random()), runtime=runtime)
        return Node(name, index, kubelet, kube_proxy, netns, memory, runtime)

    def _template(self, workload: str) -> dict[str, Any]:
        """The Deployment's pod template as the lab creates it (``careful``: a preStop sleep of
        ``--prestop``); what its pods run is whatever the Deployment's template says then."""
        app: dict[str, Any] = {"name": "app", "image": "app:1",
                               "ports": [{"containerPort": 8080}]}
        if workload == "careful" and self.config.prestop > 0:
            app["lifecycle"] = {"preStop": {"exec": {"command": [
                "sleep", f"{self.config.prestop:g}"]}}}
        return {"metadata": {"labels": {"app": workload}},
                "spec": {"terminationGracePeriodSeconds": self.config.grace,
                         "containers": [app]}}

    def _create_workload(self, workload: str, replicas: int) -> None:
        spec = {"replicas": replicas, "selector": {"matchLabels": {"app": workload}},
                "template": self._template(workload)}
        self.server.registries["deployments"].create(NAMESPACE, {
            "metadata": {"name": workload}, "spec": spec}, WriteOptions())

    def _apply_patches(self) -> None:
        """Each patch document onto its Deployment, merged as the server merges a
        ``kubectl patch --type strategic`` (observer/lab/apiserver/patching.py)."""
        deployments = self.server.registries["deployments"]
        for document in self.patches:
            meta = document["metadata"]
            if document.get("kind") != "Deployment" or meta.get("namespace") != NAMESPACE:
                continue
            body = {k: v for k, v in document.items()
                    if k not in ("apiVersion", "kind", "metadata")}
            current = deployments.get(NAMESPACE, meta["name"])
            deployments.update(NAMESPACE, meta["name"], strategic_merge_patch(current, body),
                               WriteOptions())

    def _replica_set(self, workload: str) -> tuple[dict[str, Any], dict[str, Any]]:
        """The ReplicaSet of the Deployment's current template, as the deployment controller
        makes it (``<deployment>-<pod-template-hash>``, the hash label on it, its selector and
        its template; observer/kube/owners.py): its owner reference and its template. A patched
        template gets a ReplicaSet of its own, as a rollout does."""
        deployment = self.server.registries["deployments"].get(NAMESPACE, workload)
        template = copy.deepcopy(deployment["spec"]["template"])
        digest = template_hash(template)
        key = f"{workload}-{digest}"
        if key not in self._owners:
            labels = {**template["metadata"].get("labels", {}), TEMPLATE_HASH_LABEL: digest}
            template["metadata"]["labels"] = labels
            owner = {"apiVersion": "apps/v1", "kind": "Deployment", "name": workload,
                     "uid": deployment["metadata"]["uid"], "controller": True,
                     "blockOwnerDeletion": True}
            replica_set = self.server.registries["replicasets"].create(NAMESPACE, {
                "metadata": {"name": key, "ownerReferences": [owner], "labels": labels},
                "spec": {"replicas": deployment["spec"].get("replicas", 1),
                         "selector": {"matchLabels": labels}, "template": template}},
                WriteOptions())
            self._owners[key] = ({**owner, "kind": "ReplicaSet", "name": key,
                                  "uid": replica_set["metadata"]["uid"]}, template)
        return self._owners[key]

    def _create_pod(self, workload: str, node: str) -> str:
        self._pod_counter += 1
        name = f"{workload}-{self._pod_counter}"
        owner, template = self._replica_set(workload)
        self.server.registries["pods"].create(NAMESPACE, {
            "metadata": {"labels": dict(template["metadata"]["labels"]), "name": name,
                         "ownerReferences": [owner]},
            "spec": {**copy.deepcopy(template["spec"]), "nodeName": node}}, WriteOptions())
        return name

    def _running(self, workload: str) -> list[dict[str, Any]]:
        """Running, Ready, not deleting pods of a workload, oldest first."""
        pods = self.server.store.items("pods").items()
        return [p for (ns, _), p in sorted(pods, key=lambda kv: int(kv[0][1].rsplit("-")[-1]))
                if ns == NAMESPACE and (p["metadata"].get("labels") or {}).get("app") == workload
                and not p["metadata"].get("deletionTimestamp")
                and any(c.get("type") == "Ready" and c.get("status") == "True"
                        for c in (p.get("status") or {}).get("conditions") or [])]

    def _has_started(self, name: str) -> bool:
        """Ready by now — or already deleted again by a later deletion (fast churn)."""
        pod = self.server.store.get("pods", (NAMESPACE, name))
        return pod is None or bool((pod.get("status") or {}).get("podIP"))

    async def _until(self, predicate: Callable[[], bool], what: str, within: float) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within
        while not predicate():
            if loop.time() > deadline:
                raise TimeoutError(f"lab: timed out waiting for {what}")
            await asyncio.sleep(0.02)

    # the run ---------------------------------------------------------------------------------

    async def run(self, *, ready: Hook | None = None, serve: Hook | None = None) -> LabRun:
        """Set up, delete pods, wait for every episode to end. ``ready`` runs once every agent
        is up, before anything is deleted (to start scraping them); with ``serve``, it all
        stays up after the deletions until ``serve`` returns."""
        started = self.clock.monotonic()
        mode: str = self.config.dataplane
        note = None
        if mode != "memory" and (why := can_use_namespaces()) is not None:
            note = f"in-memory dataplane: network namespaces need root and the tools ({why})"
            mode = "memory"
        self.progress(f"setting up {self.config.nodes} nodes ({mode})")
        run = LabRun(self.config, mode, note, self.truth, [], self.kubeconfig, tasks=[])
        try:
            await self._cluster(run)
            await self._agents(run)
            if ready is not None:
                await ready(run)
            await self._workloads(run)
            if self.network is not None:
                await self._start_clients(run)
            self.progress("pods running" + (", clients sending" if self.network else ""))
            await self._deletions(run)
            if self.network is not None:
                run.traffic = await self._traffic(run)
            run.elapsed = self.clock.monotonic() - started
            if serve is not None:
                await serve(run)
            return run
        finally:
            await self._clean_up(run)

    async def _cluster(self, run: LabRun) -> None:
        """The API server, the network and the BPF filesystem, the controller, and each
        node's kubelet and kube-proxy, once every kube-proxy has synced."""
        await self.server.start("127.0.0.1", 0)
        if run.dataplane == "cilium":
            self.bpffs = Path(self._tmp.name) / "bpf"
            self.bpffs.mkdir()
            await CommandRunner().run(["mount", "-t", "bpf", "bpf", str(self.bpffs)])
        if run.dataplane != "memory":
            self.network = LabNetwork(self.namespaces, self.config.nodes)
            await self.network.start()
        self.server.write_kubeconfig(self.kubeconfig, ca_file=self.kubeconfig.with_name("ca.crt"))
        controller = EndpointSliceController(
            server=self.server, truth=self.truth, clock=self.clock,
            delay=self.config.controller_delay, rng=random.Random(self.rng.random()))
        run.tasks.append(asyncio.create_task(controller.run()))
        for index in range(self.config.nodes):
            node = await self._node(index, run.dataplane)
            run.nodes.append(node)
            run.tasks.append(asyncio.create_task(node.kubelet.run()))
            run.tasks.append(asyncio.create_task(node.kube_proxy.run()))
        async with asyncio.timeout(30):
            for node in run.nodes:
                await node.kube_proxy.synced.wait()

    async def _agents(self, run: LabRun) -> None:
        """A real agent per node, each until its stop is set; announced once all are ready."""
        configuration = client.Configuration()
        await config.load_kube_config(config_file=str(self.kubeconfig),
                                      client_configuration=configuration)
        self._api = client.ApiClient(configuration)
        for node in run.nodes:
            stop = asyncio.Event()
            self._stops.append(stop)
            node.agent = await self._agent(node, self._api)
            self._agent_tasks.append(asyncio.create_task(node.agent.run(stop)))
        await self._until(lambda: all(n.agent and n.agent.ready() and n.agent.http.url
                                      for n in run.nodes), "agents ready", 30)
        self.announce(str(self.kubeconfig))
        for node in run.nodes:
            assert node.agent is not None
            self.announce(node.agent.http.url)

    async def _clean_up(self, run: LabRun) -> None:
        """Each step runs even when one before it fails or is cancelled (the stack runs them
        last to first): nothing may outlive the lab."""
        async with contextlib.AsyncExitStack() as cleanup:
            cleanup.callback(self._tmp.cleanup)
            if self.bpffs is not None:
                cleanup.push_async_callback(CommandRunner().run, ["umount", str(self.bpffs)])
            for maps in self._cilium:
                cleanup.callback(maps.close)
            cleanup.push_async_callback(self.namespaces.close)
            for node in run.nodes:
                if node.runtime is not None:
                    cleanup.push_async_callback(node.runtime.close)
            for sockets in self._sockets:
                cleanup.callback(sockets.close)
            cleanup.push_async_callback(self.clients.stop)
            cleanup.push_async_callback(self.server.stop)
            if self._api is not None:
                cleanup.push_async_callback(self._api.close)
            cleanup.push_async_callback(cancel_and_wait, *self._agent_tasks, *run.tasks)
            for stop in self._stops:
                stop.set()
            if self._agent_tasks:  # they stop themselves (readyz, watches, HTTP) in their bound
                await asyncio.wait(self._agent_tasks, timeout=15)

    async def _agent(self, node: Node, api: client.ApiClient) -> Agent:
        settings = AgentConfig(
            node_name=node.name, listen=("127.0.0.1", 0), housekeeping_interval=0.5,
            episode_ttl=self.config.episode_ttl,
            terminal_pod_watch=self.config.terminal_pod_watch,
            watch=WatchSettings(backoff_initial=0.05, backoff_max=1.0,
                                inactivity_timeout=self.config.watch_inactivity_timeout),
            dataplane=DataplaneSettings(
                mode=MODES[self.config.dataplane][0] if node.memory is None else "auto",
                netns=node.netns, options=({BPF_ROOT.name: str(self.bpffs / node.netns)}
                                           if self.bpffs and node.netns else {}),
                poll_interval=self.config.poll_interval, poll_max_cpu=self.config.poll_max_cpu),
            # Connections are followed where there are real pods; long enough after an
            # episode's end for the ingress to have caught up.
            traffic=TrafficSettings(mode="on" if node.runtime is not None else "off",
                                    window=self.config.ingress_delay.high + TRAFFIC_SLACK),
            histogram_buckets=self.config.histogram_buckets)
        return await build_agent(settings, api=api, clock=self.clock, dataplane=(
            given(node.memory) if node.memory is not None else open_dataplane))

    async def _workloads(self, run: LabRun) -> None:
        for workload in self.workloads:
            self._create_workload(workload, self.config.replicas * len(run.nodes))
        self._apply_patches()
        for workload in self.workloads:
            for replica in range(self.config.replicas * len(run.nodes)):
                self._create_pod(workload, run.nodes[replica % len(run.nodes)].name)
        expected = self.config.replicas * len(run.nodes)
        await self._until(lambda: all(len(self._running(w)) == expected
                                      for w in self.workloads), "pods running", 30)
        # Programmed everywhere before the first deletion.
        await self._until(lambda: all(len(n.kube_proxy.programmed.get(w, [])) == expected
                                      for n in run.nodes for w in self.workloads),
                          "rules programmed", 30)

    async def _start_clients(self, run: LabRun) -> None:
        """On every node, a client through each service address and a kept-alive one, and
        the ``streaming`` workload's streams; in the fabric, the ingress-like client, its
        backends from the EndpointSlices. Cilium's maps
        carry no traffic here (no BPF programs load them): with ``--dataplane cilium`` only
        the ingress-like client runs, straight to pod addresses."""
        assert self.network is not None
        for node in run.nodes if run.dataplane != "cilium" else ():
            assert node.netns is not None
            sockets = Sockets(node.netns)
            self._sockets.append(sockets)
            for workload in self.workloads:
                vip = CLUSTER_IPS[workload]
                self.clients.start(self.clients.service(sockets, node.name, workload, vip, 80))
                self.clients.start(self.clients.keepalive(sockets, node.name, workload, vip,
                                                          80))
                for _ in range(STREAMS if workload == "streaming" else 0):
                    self.clients.start(self.clients.stream(sockets, node.name, workload, vip,
                                                           80))
        sockets = Sockets(self.network.fabric)
        self._sockets.append(sockets)
        for workload in self.config.fronted:
            backends = Backends(self.server, workload, self.config.ingress_delay,
                                random.Random(self.rng.random()))
            self.backends.append(backends)
            self.clients.start(backends.run())
            self.clients.start(self.clients.ingress(sockets, workload, POD_PORT, backends))

    async def _traffic(self, run: LabRun) -> dict[str, Any]:
        """Stop the clients once the ingress has caught up with the last change, let every
        agent close its traffic windows, then put the clients' truth beside the agents'
        counts."""
        assert self.network is not None
        self.progress(f"waiting for the ingress and the agents' traffic windows{self._so_far()}")
        await self._until(lambda: all(b.settled for b in self.backends), "ingress caught up",
                          self.config.ingress_delay.high + 30)
        await self.clients.stop()
        await self._until(lambda: all(n.agent is not None and n.agent.book is not None
                                      and not n.agent.book.following
                                      for n in run.nodes), "traffic windows closed",
                          self.config.ingress_delay.high + TRAFFIC_SLACK + 30)
        pod_nodes = {server.ip: node.name for node in run.nodes
                     for server in (node.runtime.servers.values() if node.runtime else ())}
        attempts = {ip: await self.network.attempts(ip) for ip in pod_nodes}
        views = {}
        for node in run.nodes:
            assert node.agent is not None
            episodes = [*node.agent.tracker.finished, *node.agent.tracker.episodes.values()]
            views[node.name] = NodeView(
                address=node_address(node.index), registry=node.agent.registry,
                stops={e.key.ip: e.stopped.mono for e in episodes if e.stopped is not None})
        return traffic_result(self.clients.requests, attempts, pod_nodes, views,
                              FABRIC_ADDRESS, self.backends, self.clients.cuts)

    def _so_far(self) -> str:
        requests = self.clients.requests
        if not requests:
            return ""
        failed = sum(1 for r in requests if r.outcome != "ok")
        return f" (requests {len(requests)}, failed {failed})"

    async def _deletions(self, run: LabRun) -> None:
        pending: set[asyncio.Task[None]] = set()  # only the unfinished: long runs stay bounded
        try:
            for i in range(self.config.deletions):
                workload = self.workloads[i % len(self.workloads)]
                rolling = i % 4 != 3
                task = asyncio.create_task(self._replace(workload, run, rolling))
                pending.add(task)
                task.add_done_callback(pending.discard)
                self.progress(f"deleting {i + 1}/{self.config.deletions}{self._so_far()}")
                await asyncio.sleep(self.config.spacing)
            await asyncio.gather(*pending)
        finally:  # cancelled (or one failed): the others end with it
            await cancel_and_wait(*pending)
        self.progress(f"waiting for the last pods to stop and every agent to finish"
                      f"{self._so_far()}")
        # Every episode ends: the pods are gone and every agent has finished with them.
        await self._until(lambda: all(e.stopped is not None
                                      for e in self.truth.episodes.values()),
                          "pods stopped", self.config.grace + 30)
        await self._until(lambda: not self.server.store.items("pods") or all(
            p["metadata"].get("deletionTimestamp") is None
            for p in self.server.store.items("pods").values()), "pods gone", 30)
        await asyncio.sleep(self.config.min_sync_period + self.config.proxy_delay.high + 0.5)
        await self._until(lambda: all(n.agent is not None and not n.agent.tracker.episodes
                                      for n in run.nodes), "agents done", 30)

    async def _replace(self, workload: str, run: LabRun, rolling: bool) -> None:
        nodes = run.nodes
        # A victim every node already routes to: its removal is an episode on every node.
        # (Under fast churn a new pod can be Running before any kube-proxy has it.)
        victims = [p for p in self._running(workload)
                   if p["metadata"]["name"] not in self._victims
                   and all((p.get("status") or {}).get("podIP")
                           in n.kube_proxy.programmed.get(workload, []) for n in nodes)]
        if not victims:
            return
        victim = victims[0]
        name = str(victim["metadata"]["name"])
        self._victims.add(name)
        target = self.rng.choice(nodes).name
        if rolling:
            replacement = self._create_pod(workload, target)
            await self._until(lambda: self._has_started(replacement), "replacement ready", 30)
        ip = str((victim.get("status") or {}).get("podIP"))
        self.server.registries["pods"].delete(NAMESPACE, name, DeleteOptions())
        self._victims.discard(name)  # deleting now: no longer Running for _running
        self.deletions_done += 1
        run.deletions[workload] = run.deletions.get(workload, 0) + 1
        run.prestop_spent[workload] = run.prestop_spent.get(workload, 0.0) + (
            known_prestop_seconds(containers_of(victim.get("spec") or {})) or 0.0)
        self.truth.deleted(service=f"{NAMESPACE}/{workload}:http", ip=ip, port=8080, pod=name,
                           node=str(victim["spec"]["nodeName"]),
                           at=self.clock.monotonic())
        if not rolling:
            await asyncio.sleep(0.5)
            self._create_pod(workload, target)
