"""Prometheus metrics of the serving process (prometheus-client's default registry).

Metrics updated on every call (RPCs, decisions, quota units) are kept as plain numbers written only by
the event loop's thread and read by prometheus-client when it is scraped: its own counters take a lock
on every increment, which came to a fifth of CheckAccess's time inside the handler. The rest are
prometheus-client's own."""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterator, Sequence
from typing import Generic, TypeVar

from prometheus_client import REGISTRY, Counter, Gauge
from prometheus_client.metrics_core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString


class CounterSeries:
    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0.0

    def inc(self, amount: float = 1.0) -> None:
        self.value += amount


class HistogramSeries:
    __slots__ = ("_bounds", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self._bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # the last one is +Inf
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self._bounds, value)] += 1  # bucket i holds bounds[i-1] < value <= bounds[i]
        self.sum += value


Series = TypeVar("Series", CounterSeries, HistogramSeries)


class _LoopMetric(Collector, Generic[Series]):
    """A labelled metric whose series only the event loop's thread updates."""

    def __init__(self, name: str, documentation: str, labelnames: Sequence[str]) -> None:
        self._name, self._documentation, self._labelnames = name, documentation, tuple(labelnames)
        self._series: dict[tuple[str, ...], Series] = {}
        REGISTRY.register(self)

    def _new_series(self) -> Series:
        raise NotImplementedError

    def _family(self) -> Metric:
        raise NotImplementedError

    def labels(self, *values: str) -> Series:
        series = self._series.get(values)
        if series is None:
            series = self._series[values] = self._new_series()
        return series

    def describe(self) -> Iterator[Metric]:
        yield self._family()


class LoopCounter(_LoopMetric[CounterSeries]):
    def _new_series(self) -> CounterSeries:
        return CounterSeries()

    def _family(self) -> CounterMetricFamily:
        return CounterMetricFamily(self._name, self._documentation, labels=self._labelnames)

    def collect(self) -> Iterator[Metric]:
        family = self._family()
        for values, series in list(self._series.items()):
            family.add_metric(values, series.value)
        yield family


class LoopHistogram(_LoopMetric[HistogramSeries]):
    def __init__(self, name: str, documentation: str, labelnames: Sequence[str], buckets: Sequence[float]) -> None:
        self._bounds = tuple(sorted(buckets))
        super().__init__(name, documentation, labelnames)

    def _new_series(self) -> HistogramSeries:
        return HistogramSeries(self._bounds)

    def _family(self) -> HistogramMetricFamily:
        return HistogramMetricFamily(self._name, self._documentation, labels=self._labelnames)

    def collect(self) -> Iterator[Metric]:
        family = self._family()
        edges = [*map(floatToGoString, self._bounds), "+Inf"]
        for values, series in list(self._series.items()):
            total, running, cumulative = series.sum, 0, []
            for edge, count in zip(edges, list(series.counts), strict=True):
                running += count
                cumulative.append((edge, float(running)))
            family.add_metric(values, cumulative, sum_value=total)
        yield family


SNAPSHOT_REVISION = Gauge("tenantgate_snapshot_revision", "Registry revision of the snapshot being served")
SNAPSHOT_STALE = Gauge("tenantgate_snapshot_stale",
                       "1 while the snapshot comes from the last-known-good file or the registry cannot be read")
SNAPSHOT_STALENESS = Gauge("tenantgate_snapshot_staleness_seconds",
                           "Seconds since the registry was last read successfully")
REGISTRY_ERRORS = Counter("tenantgate_registry_errors_total", "Failed attempts to read the registry")
TENANT_COMPILE_FAILURES = Counter("tenantgate_tenant_compile_failures_total",
                                  "Stored tenant documents this server could not compile (each logged)")
QUOTA_BACKEND_UP = Gauge("tenantgate_quota_backend_up", "1 while the quota counter backend answers")
QUOTA_BACKEND_ERRORS = Counter("tenantgate_quota_backend_errors_total",
                               "ConsumeQuota calls answered by failure policy because the backend failed")
QUOTA_CONSUMED = LoopCounter("tenantgate_quota_consumed_units_total", "Quota units admitted",
                             ["tenant", "quota"])
QUOTA_DENIED = LoopCounter("tenantgate_quota_denied_units_total", "Quota units denied", ["tenant", "quota"])

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


RPC_HANDLED = LoopCounter("tenantgate_rpcs_handled_total", "RPCs answered, by method and status code",
                          ["method", "code"])
RPC_LATENCY = LoopHistogram("tenantgate_rpc_duration_seconds", "Time spent answering an RPC, by method", ["method"],
                            buckets=(0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 1.0))
DECISIONS = LoopCounter("tenantgate_decisions_total", "Access decisions, by tenant and reason", ["tenant", "reason"])
