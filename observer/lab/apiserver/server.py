"""The HTTP face of the local API server (aiohttp).

Paths, query parameters, content negotiation, watch framing and error bodies follow the
Kubernetes API concepts page (https://kubernetes.io/docs/reference/using-api/api-concepts/)
and ``k8s.io/apiserver/pkg/endpoints/handlers``. A watch is one chunked HTTP response whose body
is a sequence of JSON objects ``{"type": ..., "object": ...}``, one per line.

Longer than the house's ~600 lines, on purpose: it is one aiohttp application, whose routes,
middlewares and handlers share the server's state (the store, the faults, the events kept
encoded, the stop); split across modules they would pass all of it around. What holds no state
is in ``http.py``; what the handlers do to objects is in ``registry.py``, ``store.py``,
``patching.py`` and ``selectors.py``.
"""

from __future__ import annotations

import asyncio
import base64
import bisect
import contextlib
import json
import secrets
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any

import yaml
from aiohttp import web

from observer import __version__
from observer.clock import Clock
from observer.lab.apiserver import discovery, errors
from observer.lab.apiserver.catalog import RESOURCES
from observer.lab.apiserver.errors import ApiError
from observer.lab.apiserver.faults import Faults, StreamControl
from observer.lab.apiserver.http import (
    Negotiated,
    decode_continue,
    encode_continue,
    error_response,
    json_response,
    query_bool,
    reject_duplicates,
    strip_type,
)
from observer.lab.apiserver.patching import json_patch, merge_patch, strategic_merge_patch
from observer.lab.apiserver.registry import DeleteOptions, FieldValidation, Registry, WriteOptions
from observer.lab.apiserver.resources import ResourceType
from observer.lab.apiserver.selectors import (
    FieldSelector,
    LabelSelector,
    parse_field_selector,
    parse_label_selector,
)
from observer.lab.apiserver.store import Obj, Store, TooOld
from observer.lab.apiserver.tls import ServingCert, self_signed
from observer.values import join_host_port

ENCODED_EVENTS = 4096  # watch event lines kept encoded for the next watcher that sends them
MAX_BODY_BYTES = 3 * 1024 * 1024  # apiserver's default --max-request-body-bytes is 3 MiB
DEFAULT_WATCH_TIMEOUT = 1800.0  # the real server picks [minRequestTimeout, 2x); 1800 s default
_CONTINUE_EXPIRED = (
    "The provided continue parameter is too old to display a consistent list result. You can "
    "start a new list without the continue parameter, or use the continue token in this "
    "response to retrieve the remainder of the results. Continuing with the provided token "
    "results in an inconsistent list - objects that were created, modified, or deleted between "
    "the time the first chunk was returned and now may show up in the list."
)
_UNAUTHENTICATED_PATHS = ("/healthz", "/livez", "/readyz", "/version", "/version/")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class ApiServer:
    """A Kubernetes API server for pods and EndpointSlices, for tests and the lab."""

    def __init__(self, *, clock: Clock, token: str | None = None, history_limit: int = 10_000,
                 bookmark_interval: float = 60.0, max_body_bytes: int = MAX_BODY_BYTES,
                 watcher_capacity: int = 10_000) -> None:
        self.clock = clock
        self.token = token if token is not None else secrets.token_urlsafe(24)
        self.store = Store(history_limit=history_limit, watcher_capacity=watcher_capacity)
        self.faults = Faults()
        self.registries = {rt.resource: Registry(rt, store=self.store, clock=clock)
                           for rt in RESOURCES}
        self.bookmark_interval = bookmark_interval
        # What /version says; a test may play an older cluster (e.g. one without the preStop
        # sleep action, before 1.30).
        self.kube_version = dict(discovery.KUBE_VERSION)
        self.max_body_bytes = max_body_bytes
        self.url = ""
        self._runner: web.AppRunner | None = None
        self._cert: ServingCert | None = None
        self._stopping = asyncio.Event()
        # Watch event lines already encoded, by (resource, resourceVersion, event type, metadata
        # only): a change sent to many watchers is serialized once, as the real watch cache
        # does (KEP-1152, "cachingObject"). Every stored version has its own resourceVersion.
        self._encoded: OrderedDict[tuple[str, str, str, bool], bytes] = OrderedDict()

    # lifecycle -------------------------------------------------------------------------------

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self._errors, self._auth, self._faults],
                              client_max_size=self.max_body_bytes)
        router = app.router
        router.add_get("/version", self._version)
        # The generated clients (kubernetes_asyncio's VersionApi.get_code) ask for "/version/",
        # which kube-apiserver answers as well.
        router.add_get("/version/", self._version)
        router.add_get("/healthz", self._ok)
        router.add_get("/livez", self._ok)
        router.add_get("/readyz", self._ok)
        router.add_get("/api", self._api)
        router.add_get("/apis", self._apis)
        router.add_get("/api/{version}", self._resource_list)
        router.add_get("/apis/{group}", self._api_group)
        router.add_get("/apis/{group}/{version}", self._resource_list)
        router.add_get("/openapi/v3", self._openapi_index)
        router.add_get("/openapi/v3/api/{version}", self._openapi)
        router.add_get("/openapi/v3/apis/{group}/{version}", self._openapi)
        for rt in RESOURCES:
            reg = self.registries[rt.resource]
            base = rt.prefix
            # A cluster-scoped resource's collection is its only one; a namespaced resource
            # has one per namespace and a read-only one across all of them.
            collection = (f"{base}/namespaces/{{namespace}}/{rt.resource}" if rt.namespaced
                          else f"{base}/{rt.resource}")
            if rt.namespaced:
                router.add_route("*", f"{base}/{rt.resource}",
                                 self._bind(self._cluster_collection, reg))
            router.add_route("*", collection, self._bind(self._collection, reg))
            router.add_route("*", f"{collection}/{{name}}", self._bind(self._item, reg))
            if rt.has_status:
                router.add_route("*", f"{collection}/{{name}}/status",
                                 self._bind(self._status, reg))
        return app

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        self._cert = self_signed([host])
        return await self._serve(host, port)

    async def restart(self, down: float) -> None:
        """Go away for ``down`` seconds and come back on the same address with the same
        certificate and data, as a restarted API server in front of the same etcd does: open
        connections are cut, watches must resume."""
        if self._runner is None:
            raise RuntimeError("the server has not started")
        host, port = self._runner.addresses[0][:2]
        self.faults.drop_streams()
        await self._runner.cleanup()
        self._runner = None
        await asyncio.sleep(down)
        await self._serve(host, port)

    async def _serve(self, host: str, port: int) -> str:
        assert self._cert is not None
        self._runner = web.AppRunner(self.app(), access_log=None, shutdown_timeout=2.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port, ssl_context=self._cert.server_context())
        await site.start()
        bound_host, bound_port = self._runner.addresses[0][:2]
        self.url = f"https://{join_host_port(bound_host, bound_port)}"
        return self.url

    @property
    def ca_pem(self) -> bytes:
        """The serving certificate, which clients trust as their CA."""
        if self._cert is None:
            raise RuntimeError("the server has not started")
        return self._cert.cert_pem

    async def stop(self) -> None:
        self._stopping.set()
        for watcher in self.store.watchers():
            watcher.close("server shutting down")
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    def kubeconfig(self, *, namespace: str = "default", ca_file: Path | None = None
                   ) -> dict[str, Any]:
        ca = {"certificate-authority": str(ca_file)} if ca_file is not None else {
            "certificate-authority-data": base64.b64encode(self.ca_pem).decode()}
        return {
            "apiVersion": "v1", "kind": "Config", "current-context": "observer-lab",
            "clusters": [{"name": "observer-lab", "cluster": {"server": self.url, **ca}}],
            "users": [{"name": "observer-lab", "user": {"token": self.token}}],
            "contexts": [{"name": "observer-lab", "context": {
                "cluster": "observer-lab", "user": "observer-lab", "namespace": namespace}}],
            "preferences": {},
        }

    def write_kubeconfig(self, path: Path, *, ca_file: Path | None = None) -> None:
        """With ``ca_file``, the certificate goes there and the kubeconfig names it: clients
        then need no temporary copy (kubernetes_asyncio makes one per load of inline
        ``certificate-authority-data`` and never closes its descriptor)."""
        path.parent.mkdir(parents=True, exist_ok=True)
        if ca_file is not None:
            ca_file.write_bytes(self.ca_pem)
        path.write_text(yaml.safe_dump(self.kubeconfig(ca_file=ca_file), sort_keys=False))
        path.chmod(0o600)

    # middlewares -----------------------------------------------------------------------------

    @web.middleware
    async def _errors(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            return await handler(request)
        except ApiError as error:
            return error_response(error)
        except web.HTTPRequestEntityTooLarge:
            return error_response(errors.too_large(self.max_body_bytes))
        except web.HTTPNotFound:
            return error_response(ApiError(404, "NotFound",
                                            "the server could not find the requested resource",
                                            {"causes": [{"reason": "UnexpectedServerResponse",
                                                         "message": "404 page not found"}]}))
        except web.HTTPMethodNotAllowed as error:
            return error_response(errors.method_not_allowed(error.method))

    @web.middleware
    async def _auth(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path not in _UNAUTHENTICATED_PATHS:
            header = request.headers.get("Authorization", "")
            if not secrets.compare_digest(header.encode(), f"Bearer {self.token}".encode()):
                raise errors.unauthorized()
        return await handler(request)

    @web.middleware
    async def _faults(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        for fault in self.faults.take(request.method, request.path_qs):
            if fault.delay:
                await asyncio.sleep(fault.delay)
            if fault.code == 429:
                raise errors.too_many_requests(fault.retry_after or 1)
            if fault.code:
                raise errors.server_error(fault.code, fault.retry_after)
        return await handler(request)

    # discovery -------------------------------------------------------------------------------

    async def _apis(self, _: web.Request) -> web.Response:
        return json_response(discovery.api_group_list())

    async def _openapi_index(self, _: web.Request) -> web.Response:
        return json_response(discovery.openapi_index(__version__))

    async def _ok(self, _: web.Request) -> web.Response:
        return web.Response(text="ok")

    async def _version(self, _: web.Request) -> web.Response:
        return json_response(discovery.version(__version__, self.kube_version))

    async def _api(self, request: web.Request) -> web.Response:
        return json_response(discovery.api_versions(request.host))

    async def _api_group(self, request: web.Request) -> web.Response:
        group = request.match_info["group"]
        if group not in {rt.group for rt in RESOURCES}:
            raise web.HTTPNotFound()
        return json_response(discovery.api_group(group))

    async def _resource_list(self, request: web.Request) -> web.Response:
        body = discovery.resource_list(request.match_info.get("group", ""),
                                       request.match_info["version"])
        if body is None:
            raise web.HTTPNotFound()
        return json_response(body)

    async def _openapi(self, request: web.Request) -> web.Response:
        body = discovery.openapi_document(request.match_info.get("group", ""),
                                          request.match_info["version"])
        if body is None:
            raise web.HTTPNotFound()
        return json_response(body)

    # request helpers -------------------------------------------------------------------------

    @staticmethod
    def _bind(method: Callable[[web.Request, Registry], Awaitable[web.StreamResponse]],
              reg: Registry) -> Handler:
        async def handler(request: web.Request) -> web.StreamResponse:
            return await method(request, reg)
        return handler

    async def _body(self, request: web.Request) -> Any:
        raw = await request.read()
        if len(raw) > self.max_body_bytes:
            raise errors.too_large(self.max_body_bytes)
        if not raw.strip():
            raise errors.bad_request("the request body is empty")
        media = request.content_type
        try:
            if media in ("application/yaml", "application/apply-patch+yaml"):
                return yaml.safe_load(raw)
            if media.startswith("application/") and media.endswith("json"):
                return json.loads(raw, object_pairs_hook=reject_duplicates)
        except (ValueError, yaml.YAMLError) as error:
            raise errors.bad_request(f"couldn't get version/kind; json parse error: {error}"
                                     ) from error
        raise errors.unsupported_media_type(media)

    @staticmethod
    def _write_options(request: web.Request) -> WriteOptions:
        query = request.query
        dry_run = query.getall("dryRun", [])
        if any(d != "All" for d in dry_run):
            raise errors.bad_request(f"Invalid value: {dry_run}: supported values: \"All\"")
        validation = query.get("fieldValidation", "Warn")
        if validation not in ("Ignore", "Warn", "Strict"):
            raise errors.bad_request(f'Invalid value: "{validation}": fieldValidation must be one '
                                     'of "Ignore", "Warn", or "Strict"')
        checked: FieldValidation = validation  # type: ignore[assignment]
        return WriteOptions(dry_run=bool(dry_run), field_validation=checked)

    def _respond(self, reg: Registry, request: web.Request, obj: Obj, status: int = 200,
                 options: WriteOptions | None = None) -> web.Response:
        negotiated = Negotiated(request.headers.get("Accept", ""),
                                 request.query.get("includeObject", ""))
        response = json_response(self._render(reg.rt, negotiated, obj, table_headers=True),
                                  status)
        for warning in options.warnings if options else []:
            response.headers.add("Warning", f'299 - {json.dumps(warning)}')
        return response

    def _render(self, rt: ResourceType, negotiated: Negotiated, obj: Obj, *,
                table_headers: bool) -> Obj:
        if negotiated.table_version:
            return self._table(rt, negotiated, [obj], {}, headers=table_headers)
        if negotiated.metadata_only:
            return {"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1",
                    "metadata": obj["metadata"]}
        return obj

    def _table(self, rt: ResourceType, negotiated: Negotiated, objs: list[Obj],
               list_meta: dict[str, Any], *, headers: bool = True) -> Obj:
        now = self.clock.wall()
        rows = []
        for obj in objs:
            row: dict[str, Any] = {"cells": rt.row(obj, now)}
            if negotiated.include_object == "Object":
                row["object"] = obj
            elif negotiated.include_object == "Metadata":
                row["object"] = {"kind": "PartialObjectMetadata",
                                 "apiVersion": f"meta.k8s.io/{negotiated.table_version}",
                                 "metadata": obj["metadata"]}
            rows.append(row)
        table: Obj = {"kind": "Table", "apiVersion": f"meta.k8s.io/{negotiated.table_version}",
                      "metadata": list_meta, "rows": rows}
        if headers:
            table["columnDefinitions"] = [c.to_dict() for c in rt.columns]
        return table

    # collections -----------------------------------------------------------------------------

    async def _cluster_collection(self, request: web.Request, reg: Registry) -> web.StreamResponse:
        if request.method != "GET":
            raise errors.method_not_allowed(request.method)
        return await self._list_or_watch(request, reg, None)

    async def _collection(self, request: web.Request, reg: Registry) -> web.StreamResponse:
        namespace = request.match_info.get("namespace", "")
        if request.method == "GET":
            return await self._list_or_watch(request, reg, namespace or None)
        if request.method == "POST":
            options = self._write_options(request)
            created = reg.create(namespace, await self._body(request), options)
            return self._respond(reg, request, created, 201, options)
        if request.method == "DELETE":
            return await self._delete_collection(request, reg, namespace)
        raise errors.method_not_allowed(request.method)

    def _selectors(self, request: web.Request, reg: Registry) -> tuple[LabelSelector,
                                                                        FieldSelector]:
        labels = parse_label_selector(request.query.get("labelSelector", ""))
        fields = parse_field_selector(request.query.get("fieldSelector", ""),
                                      supported=frozenset(reg.rt.selectable),
                                      resource=reg.rt.resource)
        return labels, fields

    @staticmethod
    def _predicate(reg: Registry, labels: LabelSelector,
                   fields: FieldSelector) -> Callable[[Obj], bool]:
        def predicate(obj: Obj) -> bool:
            return (labels.matches(obj["metadata"].get("labels") or {})
                    and fields.matches(lambda name: reg.rt.selectable[name](obj)))
        return predicate

    @staticmethod
    def _revision(text: str, name: str = "resourceVersion") -> int:
        try:
            value = int(text)
        except ValueError:
            raise errors.bad_request(f'Invalid value: "{text}": {name}: invalid resource '
                                     'version') from None
        if value < 0:
            raise errors.bad_request(f'Invalid value: "{text}": {name}: must be non-negative')
        return value

    async def _list_or_watch(self, request: web.Request, reg: Registry,
                             namespace: str | None) -> web.StreamResponse:
        query = request.query
        labels, fields = self._selectors(request, reg)
        negotiated = Negotiated(request.headers.get("Accept", ""), query.get("includeObject", ""))
        if query_bool(query, "watch"):
            return await self._watch(request, reg, namespace, labels, fields, negotiated)
        return self._list(request, reg, namespace, labels, fields, negotiated)

    def _list(self, request: web.Request, reg: Registry, namespace: str | None,
              labels: LabelSelector, fields: FieldSelector,
              negotiated: Negotiated) -> web.Response:
        query = request.query
        rv_text, match = query.get("resourceVersion", ""), query.get("resourceVersionMatch", "")
        limit = self._revision(query["limit"], "limit") if query.get("limit") else 0
        token = query.get("continue", "")
        if match and not rv_text:
            raise errors.bad_request("resourceVersionMatch is forbidden unless resourceVersion "
                                     "is provided")
        if match not in ("", "Exact", "NotOlderThan"):
            raise errors.bad_request(f'Unsupported value: "{match}": supported values: "Exact", '
                                     '"NotOlderThan"')
        if token and rv_text:
            raise errors.bad_request("specifying resource version is not allowed when using "
                                     "continue")
        at: int | None = None
        start = ""
        if token:
            at, start = decode_continue(token)
        elif rv_text and rv_text != "0":
            wanted = self._revision(rv_text)
            if match == "Exact":
                at = wanted
            elif wanted > self.store.revision:
                raise ApiError(504, "Timeout", f"Too large resource version: {wanted}, current: "
                                               f"{self.store.revision}",
                               {"causes": [{"reason": "ResourceVersionTooLarge",
                                            "message": "Too large resource version"}],
                                "retryAfterSeconds": 1}, {"Retry-After": "1"})
        try:
            state, order = self.store.ordered(reg.rt.resource, at)
        except TooOld as error:
            raise errors.expired(_CONTINUE_EXPIRED if token else str(error)) from error
        revision = at if at is not None else self.store.revision
        predicate = self._predicate(reg, labels, fields)
        counting = labels.empty and not fields.requirements  # remainingItemCount is exact
        matching: list[Obj] = []
        remaining = 0
        for index in range(bisect.bisect_right(order, start) if start else 0, len(order)):
            object_namespace, _, name = order[index].partition("/")
            if namespace is not None and object_namespace != namespace:
                continue
            obj = state[(object_namespace, name)]
            if not predicate(obj):
                continue
            if limit and len(matching) == limit:
                remaining += 1
                if not counting:
                    break
                continue
            matching.append(obj)
        meta: dict[str, Any] = {"resourceVersion": str(revision)}
        if remaining:
            last = matching[-1]["metadata"]
            meta["continue"] = encode_continue(revision, f"{last.get('namespace', '')}/"
                                                          f"{last['name']}")
            if counting:
                meta["remainingItemCount"] = remaining
        if negotiated.table_version:
            return json_response(self._table(reg.rt, negotiated, matching, meta))
        if negotiated.metadata_only:
            return json_response({
                "kind": "PartialObjectMetadataList", "apiVersion": "meta.k8s.io/v1",
                "metadata": meta,
                "items": [{"metadata": o["metadata"]} for o in matching]})
        return json_response({"kind": f"{reg.rt.kind}List", "apiVersion": reg.rt.api_version,
                               "metadata": meta, "items": [strip_type(o) for o in matching]})

    async def _watch(self, request: web.Request, reg: Registry, namespace: str | None,
                     labels: LabelSelector, fields: FieldSelector,
                     negotiated: Negotiated) -> web.StreamResponse:
        rv_text, since, timeout, bookmarks = self._watch_params(request.query)
        response = web.StreamResponse(headers={"Content-Type": "application/json",
                                               "Cache-Control": "no-cache, private"})
        response.enable_chunked_encoding()
        await response.prepare(request)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout

        async def send(event_type: str, obj: Obj) -> None:
            await response.write(json.dumps({"type": event_type, "object": obj},
                                            separators=(",", ":")).encode() + b"\n")

        try:
            watcher = self.store.watch(reg.rt.resource, namespace=namespace,
                                       predicate=self._predicate(reg, labels, fields), since=since)
        except TooOld as error:
            await send("ERROR", errors.expired(str(error)).status())
            await response.write_eof()
            return response
        control = StreamControl(reg.rt.resource, wake=watcher.nudge,
                                stalled=self.faults.stall_new_streams)
        self.faults.streams.add(control)
        next_bookmark = loop.time() + self.bookmark_interval
        first_table = True
        try:
            while True:
                now = loop.time()
                if now >= deadline or self._stopping.is_set():
                    break
                if control.drop:
                    if request.transport is not None:
                        request.transport.abort()
                    return response
                if control.expire:
                    self.store.compact()
                    await send("ERROR", errors.expired(
                        f"too old resource version: {rv_text or 0} ({self.store.oldest})"
                    ).status())
                    break
                if control.stalled:
                    await asyncio.sleep(min(0.05, deadline - now))
                    continue
                for line in control.inject:
                    await response.write(line)
                control.inject.clear()
                while watcher.queue:
                    event_type, obj = watcher.queue.popleft()
                    await response.write(self._event_line(reg.rt, negotiated, event_type, obj,
                                                          table_headers=first_table))
                    first_table = False
                if watcher.closed:
                    break
                if bookmarks and now >= next_bookmark:
                    await send("BOOKMARK", {
                        "kind": reg.rt.kind, "apiVersion": reg.rt.api_version,
                        "metadata": {"resourceVersion": str(self.store.revision)}})
                    next_bookmark = now + self.bookmark_interval
                wake_at = min(deadline, next_bookmark) if bookmarks else deadline
                await watcher.wait(max(wake_at - now, 0.0))
        except ConnectionResetError:  # the client went away; nothing to finish
            return response
        finally:
            self.store.unwatch(watcher)
            self.faults.streams.discard(control)
        with contextlib.suppress(ConnectionResetError):
            await response.write_eof()
        return response

    def _watch_params(self, query: Mapping[str, str]) -> tuple[str, int | None, float, bool]:
        """A watch's resourceVersion as given, the revision to start after (None: now), its
        timeout, and whether it takes bookmarks."""
        rv_text = query.get("resourceVersion", "")
        since = None if rv_text in ("", "0") else self._revision(rv_text)
        timeout = (float(self._revision(query["timeoutSeconds"], "timeoutSeconds"))
                   if query.get("timeoutSeconds") else DEFAULT_WATCH_TIMEOUT)
        if query_bool(query, "sendInitialEvents"):
            raise errors.bad_request("sendInitialEvents (streaming lists, KEP-3157) is not "
                                     "supported by this server; list, then watch")
        return rv_text, since, timeout, query_bool(query, "allowWatchBookmarks")

    def _event_line(self, rt: ResourceType, negotiated: Negotiated, event_type: str,
                    obj: Obj, *, table_headers: bool) -> bytes:
        """One watch event's line: its object as the client asked, a Table's row (with the
        column headers in a stream's first) or the object (encoded once, for every watcher
        that asks the same)."""
        if negotiated.table_version:
            return json.dumps({"type": event_type, "object": self._table(
                rt, negotiated, [obj], {}, headers=table_headers)},
                separators=(",", ":")).encode() + b"\n"
        key = (rt.resource, obj["metadata"]["resourceVersion"], event_type,
               negotiated.metadata_only)
        line = self._encoded.get(key)
        if line is None:
            line = json.dumps({"type": event_type, "object": self._render(
                rt, negotiated, obj, table_headers=False)}, separators=(",", ":")).encode() + b"\n"
            self._encoded[key] = line
            if len(self._encoded) > ENCODED_EVENTS:
                self._encoded.popitem(last=False)
        return line

    async def _delete_collection(self, request: web.Request, reg: Registry,
                                 namespace: str) -> web.Response:
        labels, fields = self._selectors(request, reg)
        options = await self._delete_options(request)
        predicate = self._predicate(reg, labels, fields)
        deleted = []
        for key, obj in sorted(self.store.items(reg.rt.resource).items()):
            if key[0] == namespace and predicate(obj):
                deleted.append(strip_type(reg.delete(namespace, key[1], options).obj))
        return json_response({"kind": f"{reg.rt.kind}List", "apiVersion": reg.rt.api_version,
                               "metadata": {"resourceVersion": str(self.store.revision)},
                               "items": deleted})

    # items -----------------------------------------------------------------------------------

    async def _item(self, request: web.Request, reg: Registry) -> web.StreamResponse:
        return await self._object(request, reg, status=False)

    async def _status(self, request: web.Request, reg: Registry) -> web.StreamResponse:
        if request.method == "DELETE":
            raise errors.method_not_allowed(request.method)
        return await self._object(request, reg, status=True)

    async def _object(self, request: web.Request, reg: Registry, *,
                      status: bool) -> web.StreamResponse:
        namespace, name = request.match_info.get("namespace", ""), request.match_info["name"]
        if request.method == "GET":
            return self._respond(reg, request, reg.get(namespace, name))
        if request.method == "PUT":
            options = self._write_options(request)
            updated = reg.update(namespace, name, await self._body(request), options,
                                 status=status)
            return self._respond(reg, request, updated, 200, options)
        if request.method == "PATCH":
            options = self._write_options(request)
            patched = self._apply_patch(request.content_type, reg.get(namespace, name),
                                        await self._body(request))
            updated = reg.patch(namespace, name, patched, options, status=status)
            return self._respond(reg, request, updated, 200, options)
        if request.method == "DELETE":
            result = reg.delete(namespace, name, await self._delete_options(request))
            if not result.deleted or reg.rt.graceful_delete:
                return self._respond(reg, request, result.obj)
            meta = result.obj["metadata"]
            details: dict[str, Any] = {"name": name, "kind": reg.rt.resource, "uid": meta["uid"]}
            if reg.rt.group:
                details["group"] = reg.rt.group
            return json_response({"kind": "Status", "apiVersion": "v1", "metadata": {},
                                   "status": "Success", "details": details})
        raise errors.method_not_allowed(request.method)

    @staticmethod
    def _apply_patch(content_type: str, current: Obj, patch: Any) -> Any:
        if content_type == "application/merge-patch+json":
            return merge_patch(current, patch)
        if content_type == "application/strategic-merge-patch+json":
            return strategic_merge_patch(current, patch)
        if content_type == "application/json-patch+json":
            return json_patch(current, patch)
        if content_type == "application/apply-patch+yaml":
            raise ApiError(415, "UnsupportedMediaType",
                           "server-side apply is not implemented by the observer lab API server; "
                           "use client-side apply (kubectl apply without --server-side)")
        raise errors.unsupported_media_type(content_type)

    async def _delete_options(self, request: web.Request) -> DeleteOptions:
        query = request.query
        body: Any = {}
        if request.can_read_body:
            raw = await request.read()
            if raw.strip():
                try:
                    body = json.loads(raw)
                except ValueError as error:
                    raise errors.bad_request(f"invalid DeleteOptions: {error}") from error
        if not isinstance(body, dict):
            raise errors.bad_request("DeleteOptions must be a JSON object")
        grace = body.get("gracePeriodSeconds")
        if "gracePeriodSeconds" in query:
            grace = self._revision(query["gracePeriodSeconds"], "gracePeriodSeconds")
        if grace is not None and (not isinstance(grace, int) or isinstance(grace, bool)):
            raise errors.bad_request("gracePeriodSeconds must be an integer")
        preconditions = body.get("preconditions") or {}
        dry_run = list(query.getall("dryRun", [])) + list(body.get("dryRun") or [])
        if any(d != "All" for d in dry_run):
            raise errors.bad_request(f"Invalid value: {dry_run}: supported values: \"All\"")
        return DeleteOptions(grace_period_seconds=grace, uid=preconditions.get("uid"),
                             resource_version=preconditions.get("resourceVersion"),
                             dry_run=bool(dry_run))
