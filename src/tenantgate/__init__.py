"""tenantgate: a multi-tenant policy decision point served over gRPC."""

__version__ = "0.1.0"
