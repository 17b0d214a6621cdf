"""The contract's bounds on what a check names, checked wherever a request enters: the servicers, the Envoy
adapter, and the SDK's front doors (which refuse an oversized request before it travels). A leaf: the client
reads them without importing the server."""

from __future__ import annotations

MAX_ID = 63  # a tenant id; an environment name
MAX_ACTION = 64
MAX_RESOURCE = 1024
MAX_TOKEN_BYTES = 16 * 1024
