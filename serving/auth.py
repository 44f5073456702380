"""API keys, optional: with LIFECYCLE_API_KEYS (comma-separated) or LIFECYCLE_API_KEYS_FILE (one per line) set,
every endpoint but the probes and /metrics needs `Authorization: Bearer <key>`; else a 401 in the one error shape.

    LIFECYCLE_API_KEYS=k1,k2 lifecycle serve
    curl -s localhost:3000/v1/models -H 'Authorization: Bearer k1'
"""

from __future__ import annotations

import hmac
import os
from pathlib import Path

if __package__:  # run from the repository (serving.auth)
    from serving.protocol import ApiError
else:  # in a bento: the service's modules lie side by side
    from protocol import ApiError

OPEN_PATHS = {"/readyz", "/livez", "/healthz", "/metrics"}  # probes and scrapers need no key


def api_keys(environ=os.environ) -> set[str]:
    keys = environ.get("LIFECYCLE_API_KEYS", "")
    if environ.get("LIFECYCLE_API_KEYS_FILE"):
        keys += "," + Path(environ["LIFECYCLE_API_KEYS_FILE"]).read_text(encoding="utf-8").replace("\n", ",")
    return {k.strip() for k in keys.split(",") if k.strip()}


class ApiKeys:
    """ASGI middleware: with keys configured, `Authorization: Bearer <key>` on everything but OPEN_PATHS."""

    def __init__(self, app) -> None:
        self.app, self.keys = app, api_keys()

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http" or not self.keys or scope["path"] in OPEN_PATHS:
            return await self.app(scope, receive, send)
        given = dict(scope["headers"]).get(b"authorization", b"").decode(errors="replace")
        token = given[7:].strip() if given[:7].lower() == "bearer " else ""
        if token and any(hmac.compare_digest(token, k) for k in self.keys):
            return await self.app(scope, receive, send)
        refused = ApiError(
            401,
            "a valid API key is required: send `Authorization: Bearer <key>`",
            "authentication_error",
            code="invalid_api_key" if token else "missing_api_key",
            headers={"WWW-Authenticate": "Bearer"},
        )
        await refused.response()(scope, receive, send)
