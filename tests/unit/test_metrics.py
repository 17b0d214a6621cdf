"""The request-path metrics read by prometheus-client at scrape time: what a scrape shows is what was counted."""

from __future__ import annotations

import itertools

import pytest
from prometheus_client import REGISTRY, generate_latest

from tenantgate.metrics import LoopCounter, LoopHistogram

_names = (f"tenantgate_test_{n}" for n in itertools.count())


def scrape() -> str:
    return generate_latest(REGISTRY).decode()


def test_a_counter_shows_each_series_with_its_labels() -> None:
    name = next(_names)
    counter = LoopCounter(f"{name}_total", "test", ["method", "code"])
    counter.labels("CheckAccess", "OK").inc()
    counter.labels("CheckAccess", "OK").inc(2)
    counter.labels("ResolveTenant", "NOT_FOUND").inc()
    body = scrape()
    assert f'{name}_total{{code="OK",method="CheckAccess"}} 3.0' in body
    assert f'{name}_total{{code="NOT_FOUND",method="ResolveTenant"}} 1.0' in body
    assert f"# TYPE {name}_total counter" in body


def test_a_histogram_counts_a_value_equal_to_a_bound_in_that_bucket_and_is_cumulative() -> None:
    name = next(_names)
    histogram = LoopHistogram(name, "test", ["method"], buckets=(0.001, 0.01))
    series = histogram.labels("CheckAccess")
    for value in (0.0005, 0.001, 0.005, 3.0):
        series.observe(value)
    body = scrape()
    assert f'{name}_bucket{{le="0.001",method="CheckAccess"}} 2.0' in body
    assert f'{name}_bucket{{le="0.01",method="CheckAccess"}} 3.0' in body
    assert f'{name}_bucket{{le="+Inf",method="CheckAccess"}} 4.0' in body
    assert f'{name}_count{{method="CheckAccess"}} 4.0' in body
    assert f'{name}_sum{{method="CheckAccess"}} 3.0065' in body


def test_a_name_taken_by_another_metric_is_refused_at_definition() -> None:
    name = next(_names)
    LoopCounter(f"{name}_total", "test", ["tenant"])
    with pytest.raises(ValueError, match=name):
        LoopCounter(f"{name}_total", "test", ["tenant"])
