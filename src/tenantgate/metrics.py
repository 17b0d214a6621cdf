"""Prometheus metrics of the serving process (prometheus-client's default registry)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge

SNAPSHOT_REVISION = Gauge("tenantgate_snapshot_revision", "Registry revision of the snapshot being served")
SNAPSHOT_STALE = Gauge("tenantgate_snapshot_stale",
                       "1 while the snapshot comes from the last-known-good file or the registry cannot be read")
SNAPSHOT_STALENESS = Gauge("tenantgate_snapshot_staleness_seconds",
                           "Seconds since the registry was last read successfully")
REGISTRY_ERRORS = Counter("tenantgate_registry_errors_total", "Failed attempts to read the registry")
