"""The deployment examples in deploy/ are real: they parse, their probes reach the ports the server is
told to listen on, and the dashboard queries metrics the server exports."""

from __future__ import annotations

import json
import re
from typing import Any

import yaml
from prometheus_client import REGISTRY

import tenantgate.metrics  # noqa: F401  (registers the metrics)
from tenantgate.cli import build_parser
from tenantgate.server.app import LIVENESS_HEALTH
from tests.conftest import REPO

DEPLOY = REPO / "deploy"


def _container() -> dict[str, Any]:
    documents = list(yaml.safe_load_all((DEPLOY / "kubernetes.yaml").read_text()))
    (deployment,) = [d for d in documents if d["kind"] == "Deployment"]
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    return container


def test_kubernetes_probes_point_at_the_ports_the_server_listens_on() -> None:
    container = _container()
    args = build_parser().parse_args(container["args"])
    assert args.command == "serve"
    decision_port = int(args.listen.rpartition(":")[2])
    ports = {port["name"]: port["containerPort"] for port in container["ports"]}
    assert ports["grpc"] == decision_port
    assert ports["admin"] == int(args.admin_listen.rpartition(":")[2])
    assert ports["metrics"] == int(args.metrics_listen.rpartition(":")[2])
    assert container["readinessProbe"]["grpc"] == {"port": decision_port}
    assert container["livenessProbe"]["grpc"] == {"port": decision_port, "service": LIVENESS_HEALTH}
    assert args.tls_cert and args.client_ca  # not loopback, so TLS


def test_the_dashboard_queries_only_metrics_the_server_exports() -> None:
    dashboard = json.loads((DEPLOY / "grafana-dashboard.json").read_text())
    exported = {metric.name for metric in REGISTRY.collect()}
    queried = {re.sub(r"_(total|bucket|sum|count)$", "", name) for panel in dashboard["panels"]
               for target in panel["targets"] for name in re.findall(r"tenantgate_[a-z_]+", target["expr"])}
    assert queried and queried <= exported, queried - exported


def test_the_systemd_unit_starts_the_server_and_stops_it_with_sigterm() -> None:
    unit = (DEPLOY / "tenantgate.service").read_text()
    assert re.search(r"^ExecStart=\S+/tenantgate serve$", unit, re.M)
    assert "KillSignal=SIGTERM" in unit and "TENANTGATE_CONFIG=" in unit
