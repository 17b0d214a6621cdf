"""Prometheus metrics of the serving process (prometheus-client's default registry)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

SNAPSHOT_REVISION = Gauge("tenantgate_snapshot_revision", "Registry revision of the snapshot being served")
SNAPSHOT_STALE = Gauge("tenantgate_snapshot_stale",
                       "1 while the snapshot comes from the last-known-good file or the registry cannot be read")
SNAPSHOT_STALENESS = Gauge("tenantgate_snapshot_staleness_seconds",
                           "Seconds since the registry was last read successfully")
REGISTRY_ERRORS = Counter("tenantgate_registry_errors_total", "Failed attempts to read the registry")
QUOTA_BACKEND_UP = Gauge("tenantgate_quota_backend_up", "1 while the quota counter backend answers")
QUOTA_BACKEND_ERRORS = Counter("tenantgate_quota_backend_errors_total",
                               "ConsumeQuota calls answered by failure policy because the backend failed")
QUOTA_CONSUMED = Counter("tenantgate_quota_consumed_units_total", "Quota units admitted",
                         ["tenant", "quota"])
QUOTA_DENIED = Counter("tenantgate_quota_denied_units_total", "Quota units denied", ["tenant", "quota"])

# Per-tenant series are bounded: the first tenants seen get their own, the rest share "_other", so a
# registry of 100,000 tenants cannot explode the series count.
MAX_TENANT_SERIES = 1000
_labelled_tenants: set[str] = set()


def tenant_label(tenant_id: str) -> str:
    if tenant_id in _labelled_tenants:
        return tenant_id
    if len(_labelled_tenants) < MAX_TENANT_SERIES:
        _labelled_tenants.add(tenant_id)
        return tenant_id
    return "_other"
RPC_HANDLED = Counter("tenantgate_rpcs_handled_total", "RPCs answered, by method and status code",
                      ["method", "code"])
RPC_LATENCY = Histogram("tenantgate_rpc_duration_seconds", "Time spent answering an RPC, by method", ["method"],
                        buckets=(0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 1.0))
DECISIONS = Counter("tenantgate_decisions_total", "Access decisions, by tenant and reason", ["tenant", "reason"])
