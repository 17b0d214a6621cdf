from __future__ import annotations

import time

import pytest

from tenantgate.engines.keys import KeyEngine
from tenantgate.errors import FailedPrecondition, NotFound, PermissionDenied
from tenantgate.model import KeyState
from tenantgate.registry.manifest import parse_document
from tenantgate.snapshot import KeyVersion, Snapshot, build_snapshot, build_tenant
from tests.conftest import tenant_doc

KEYS = {"purposes": ["data", "backups"], "readers": ["service:storage"]}


def _key(tenant: str, version: int, state: KeyState = KeyState.ENABLED, unavailable: str = "") -> KeyVersion:
    return KeyVersion(tenant, "data", version, "AES-256-GCM", state, time.time(), bytes([version]) * 32, unavailable)


def _snapshot(state: str = "Active", *keys: KeyVersion) -> Snapshot:
    views = [build_tenant(parse_document(tenant_doc("acme", state=state, keys=KEYS)).tenant, 1, keys),
             build_tenant(parse_document(tenant_doc("globex", keys=KEYS)).tenant, 1, [_key("globex", 1)])]
    return build_snapshot(1, views, time.time())


def test_reader_gets_the_newest_enabled_version_or_an_explicit_one() -> None:
    snapshot = _snapshot("Active", _key("acme", 1), _key("acme", 2), _key("acme", 3, KeyState.DISABLED))
    engine = KeyEngine()
    assert engine.get(snapshot, "service:storage", "acme", "data").version == 2
    assert engine.get(snapshot, "service:storage", "acme", "data", 1).material == bytes([1]) * 32
    with pytest.raises(FailedPrecondition, match="acme/data/v3 is disabled"):
        engine.get(snapshot, "service:storage", "acme", "data", 3)


def test_refusals() -> None:
    engine = KeyEngine()
    snapshot = _snapshot("Active", _key("acme", 1))
    with pytest.raises(PermissionDenied):
        engine.get(snapshot, "service:other", "acme", "data")
    with pytest.raises(PermissionDenied):
        engine.get(snapshot, "", "acme", "data")
    with pytest.raises(NotFound, match="unknown tenant"):
        engine.get(snapshot, "service:storage", "nope", "data")
    with pytest.raises(NotFound, match="no key for purpose 'backups'"):
        engine.get(snapshot, "service:storage", "acme", "backups")
    with pytest.raises(NotFound, match="no key for purpose 'logs'"):
        engine.get(snapshot, "service:storage", "acme", "logs")
    with pytest.raises(NotFound, match="no version 9"):
        engine.get(snapshot, "service:storage", "acme", "data", 9)
    with pytest.raises(FailedPrecondition, match="is Suspended"):
        engine.get(_snapshot("Suspended", _key("acme", 1)), "service:storage", "acme", "data")
    with pytest.raises(FailedPrecondition, match="unavailable: no master key"):
        engine.get(_snapshot("Active", _key("acme", 1, unavailable="no master key")), "service:storage", "acme",
                   "data")
