from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import pytest

from tenantgate import metrics
from tenantgate.config import describe, load_serve_config
from tenantgate.errors import ConfigurationError
from tenantgate.logs import JsonFormatter


def test_file_then_environment_then_flags(tmp_path: Path) -> None:
    file = tmp_path / "tenantgate.yaml"
    file.write_text("listen: 127.0.0.1:6001\nsync-interval: 1.5\nadmins: [user:a]\nworkers: 1\n"
                    "registry: sqlite:///var/lib/tg.db\n")
    environ = {"TENANTGATE_LISTEN": "127.0.0.1:6002", "TENANTGATE_ADMINS": "user:b, user:c",
               "TENANTGATE_REGISTRY": "postgresql://app:secret@db/tg", "TENANTGATE_TRUST_CALLER_METADATA": "true"}
    config = load_serve_config(str(file), environ, {"listen": "127.0.0.1:6003", "max_staleness": None})
    assert config.listen == "127.0.0.1:6003"  # flag over environment over file
    assert config.sync_interval == 1.5  # file, nothing above it
    assert config.admins == ("user:b", "user:c") and config.trust_caller_metadata
    assert config.registry == "postgresql://app:secret@db/tg"
    shown = describe(config)
    assert shown["registry"] == "postgresql://app:***@db/tg" and "secret" not in json.dumps(shown)


def test_every_problem_is_reported_once_each(tmp_path: Path) -> None:
    file = tmp_path / "bad.yaml"
    file.write_text("workers: many\nlisten: 0.0.0.0:80\nsurprise: 1\n")
    with pytest.raises(ConfigurationError) as caught:
        load_serve_config(str(file), {"TENANTGATE_MAX_STALENESS": "soon", "TENANTGATE_DECISION_LOG_SAMPLE": "2"}, {})
    lines = caught.value.message.splitlines()[1:]
    assert any("bad.yaml: workers must be an integer, got 'many'" in line for line in lines)
    assert any("bad.yaml: unknown setting 'surprise'" in line for line in lines)
    assert any("TENANTGATE_MAX_STALENESS: max_staleness must be a number" in line for line in lines)
    assert any("decision log sample must be between 0 and 1, got 2.0" in line for line in lines)
    assert any("listen address '0.0.0.0:80' is not loopback" in line for line in lines)
    assert len(lines) == 5


def test_the_registry_setting_has_one_name_and_the_old_one_is_refused_with_it(tmp_path: Path) -> None:
    file = tmp_path / "tenantgate.yaml"
    file.write_text("registry: sqlite:///var/lib/tg.db\n")
    assert load_serve_config(str(file), {}, {}).registry == "sqlite:///var/lib/tg.db"
    assert load_serve_config("", {"TENANTGATE_REGISTRY": "sqlite:///b.db"}, {}).registry == "sqlite:///b.db"
    assert "registry" in describe(load_serve_config("", {}, {}))
    file.write_text("registry_url: sqlite:///var/lib/tg.db\n")
    with pytest.raises(ConfigurationError) as caught:
        load_serve_config(str(file), {}, {})
    assert [line.strip() for line in caught.value.message.splitlines()[1:]] == [
        f"{file}: setting 'registry_url' is now called 'registry'; rename it"]


def test_otel_is_off_by_default_and_needs_its_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    assert describe(load_serve_config("", {}, {}))["otel"] is False
    monkeypatch.setitem(sys.modules, "opentelemetry.instrumentation.grpc", None)  # as if not installed
    with pytest.raises(ConfigurationError) as caught:
        load_serve_config("", {"TENANTGATE_OTEL": "true"}, {})
    assert "pip install 'tenantgate[otel]'" in caught.value.message


def test_json_log_lines_carry_the_event_fields() -> None:
    record = logging.LogRecord("tenantgate.keys", logging.INFO, __file__, 1, "key access %s", ("x",), None)
    record.tenant_id = "acme"
    record.decision_id = "d-1"
    line = json.loads(JsonFormatter().format(record))
    assert line["message"] == "key access x" and line["tenant_id"] == "acme" and line["decision_id"] == "d-1"
    assert line["level"] == "info" and line["logger"] == "tenantgate.keys"


def test_per_tenant_metric_labels_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(metrics, "MAX_TENANT_SERIES", 3)
    monkeypatch.setattr(metrics, "_labelled_tenants", set())
    assert [metrics.tenant_label(f"t{i}") for i in range(5)] == ["t0", "t1", "t2", "_other", "_other"]
    assert metrics.tenant_label("t1") == "t1"
