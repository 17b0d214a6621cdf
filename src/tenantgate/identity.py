"""How callers name themselves to the server.

For now the caller's identity (e.g. ``service:storage``) travels in this call metadata; client
certificates (mTLS) are to replace it for deployments that cannot trust the network.
"""

CALLER_METADATA = "x-tenantgate-caller"
