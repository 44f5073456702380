"""API keys, optional: with LIFECYCLE_API_KEYS (comma-separated) or LIFECYCLE_API_KEYS_FILE (one per line) set,
every endpoint but the probes and /metrics needs `Authorization: Bearer <key>`; else a 401 in the one error shape.

    LIFECYCLE_API_KEYS=support-app=k1,k2 lifecycle serve
    curl -s localhost:3000/v1/models -H 'Authorization: Bearer k1'

A key may carry a label (`label=key`): the traces and the feedback name the caller by it, never by the key; an
unlabelled key is named by a digest of it (`key-1a2b3c4d`), a request without keys configured `anonymous`.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from pathlib import Path

if __package__:  # run from the repository (serving.auth)
    from serving.protocol import ApiError
else:  # in a bento: the service's modules lie side by side
    from protocol import ApiError

OPEN_PATHS = {"/readyz", "/livez", "/healthz", "/metrics"}  # probes and scrapers need no key
ANONYMOUS = "anonymous"


def caller(scope) -> str:
    """The label of the key the request came with (set by ApiKeys), for traces and feedback."""
    return scope.get("state", {}).get("caller", ANONYMOUS)


def api_keys(environ=os.environ) -> dict[str, str]:
    """Each configured key and its label."""
    keys = environ.get("LIFECYCLE_API_KEYS", "")
    if environ.get("LIFECYCLE_API_KEYS_FILE"):
        keys += "," + Path(environ["LIFECYCLE_API_KEYS_FILE"]).read_text(encoding="utf-8").replace("\n", ",")
    labelled = {}
    for entry in (e.strip() for e in keys.split(",")):
        if not entry:
            continue
        label, _, key = entry.rpartition("=")
        key = key.strip()
        labelled[key] = label.strip() or "key-" + hashlib.sha256(key.encode()).hexdigest()[:8]
    return labelled


class ApiKeys:
    """ASGI middleware: with keys configured, `Authorization: Bearer <key>` on everything but OPEN_PATHS."""

    def __init__(self, app) -> None:
        self.app, self.keys = app, api_keys()

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http" or not self.keys or scope["path"] in OPEN_PATHS:
            return await self.app(scope, receive, send)
        given = dict(scope["headers"]).get(b"authorization", b"").decode(errors="replace")
        token = given[7:].strip() if given[:7].lower() == "bearer " else ""
        label = next((label for k, label in self.keys.items() if token and hmac.compare_digest(token, k)), None)
        if label is not None:
            scope.setdefault("state", {})["caller"] = label
            return await self.app(scope, receive, send)
        refused = ApiError(
            401,
            "a valid API key is required: send `Authorization: Bearer <key>`",
            "authentication_error",
            code="invalid_api_key" if token else "missing_api_key",
            headers={"WWW-Authenticate": "Bearer"},
        )
        await refused.response()(scope, receive, send)
