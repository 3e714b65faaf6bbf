"""The HTTP details of the lab API server that hold no state: JSON responses, content
negotiation (an object, a Table, or only metadata), boolean query parameters as Go reads them,
strict JSON, continue tokens — as ``k8s.io/apiserver/pkg/endpoints/handlers`` has them."""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Mapping
from typing import Any

from aiohttp import web

from observer.lab.apiserver import errors
from observer.lab.apiserver.errors import ApiError
from observer.lab.apiserver.store import Obj


def json_response(body: Any, status: int = 200,
                   headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(body=json.dumps(body, separators=(",", ":")).encode(), status=status,
                        content_type="application/json", headers=headers)


def error_response(error: ApiError) -> web.Response:
    return json_response(error.status(), error.code, error.headers)


def strip_type(obj: Obj) -> Obj:
    """List items carry no kind/apiVersion, as in the real server's typed lists."""
    return {k: v for k, v in obj.items() if k not in ("kind", "apiVersion")}


class Negotiated:
    """What the client asked to receive: the object, a Table, or only metadata."""

    def __init__(self, accept: str, include_object: str) -> None:
        self.table_version: str | None = None
        self.metadata_only = False
        json_ok = not accept.strip()
        for clause in accept.split(","):
            parts = [p.strip() for p in clause.split(";")]
            media, params = parts[0], dict(p.split("=", 1) for p in parts[1:] if "=" in p)
            if media not in ("application/json", "application/yaml", "*/*", "application/*"):
                continue
            if params.get("g") == "meta.k8s.io" and params.get("as") == "Table":
                if self.table_version is None and not self.metadata_only:
                    self.table_version = params.get("v", "v1")
            elif params.get("g") == "meta.k8s.io" and params.get("as", "").startswith(
                    "PartialObjectMetadata"):
                if self.table_version is None:
                    self.metadata_only = True
            elif "as" not in params:
                json_ok = True
        if self.table_version is None and not self.metadata_only and not json_ok:
            raise ApiError(406, "NotAcceptable",
                           f"only the following media types are accepted: application/json, "
                           f"application/yaml ({accept!r} given)")
        if include_object not in ("", "None", "Metadata", "Object"):
            raise errors.bad_request(f"invalid includeObject value {include_object!r}")
        self.include_object = include_object or "Metadata"


def query_bool(query: Mapping[str, str], name: str) -> bool:
    """A boolean query parameter as Go's strconv.ParseBool reads it."""
    value = query.get(name, "")
    if value in ("", "0", "f", "F", "false", "FALSE", "False"):
        return False
    if value in ("1", "t", "T", "true", "TRUE", "True"):
        return True
    raise errors.bad_request(f'Invalid value: "{value}": {name} must be a boolean')


def reject_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """JSON objects with a key twice are rejected, as ``fieldValidation=Strict`` would; the real
    server's Warn mode keeps the last one, which is also what this would do were it lenient."""
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f'duplicate field "{key}"')
        out[key] = value
    return out


def encode_continue(revision: int, start: str) -> str:
    token = json.dumps({"v": "meta.k8s.io/v1", "rv": revision, "start": start + "\x00"})
    return base64.urlsafe_b64encode(token.encode()).decode().rstrip("=")


def decode_continue(token: str) -> tuple[int, str]:
    try:
        padded = token + "=" * (-len(token) % 4)
        data = json.loads(base64.urlsafe_b64decode(padded))
        revision, start = int(data["rv"]), str(data["start"]).rstrip("\x00")
    except (ValueError, KeyError, TypeError, binascii.Error):
        raise errors.bad_request("continue key is not valid: incorrect encoded start "
                                 "resourceVersion (version meta.k8s.io/v1)") from None
    if data.get("v") != "meta.k8s.io/v1":
        raise errors.bad_request("continue key is not valid: server does not recognize this "
                                 "encoded key")
    return revision, start
