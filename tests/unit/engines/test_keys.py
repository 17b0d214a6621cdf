from __future__ import annotations

import re
import time

import pytest

from tenantgate.engines.keys import DATA_KEY_MAGIC, KeyEngine
from tenantgate.errors import FailedPrecondition, InvalidArgument, NotFound, PermissionDenied
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


def test_a_destroyed_version_is_refused_by_its_state_with_its_own_message() -> None:
    # As the syncer builds it: no material, and the state says why.
    destroyed = KeyVersion("acme", "data", 1, "AES-256-GCM", KeyState.DESTROYED, time.time(), b"", "destroyed", 2)
    snapshot = _snapshot("Active", destroyed, _key("acme", 2, KeyState.DISABLED), _key("acme", 3))
    engine = KeyEngine()
    # Destroyed although also below the floor of 2: the state is the reason given, and no other version stands in.
    with pytest.raises(FailedPrecondition, match=r"^key acme/data/v1 is destroyed$") as caught:
        engine.get(snapshot, "service:storage", "acme", "data", 1)
    assert caught.value.field == "version"
    with pytest.raises(FailedPrecondition, match=r"^key acme/data/v2 is disabled$"):
        engine.get(snapshot, "service:storage", "acme", "data", 2)
    assert engine.get(snapshot, "service:storage", "acme", "data").version == 3
    newest_destroyed = KeyVersion("acme", "data", 2, "AES-256-GCM", KeyState.DESTROYED, time.time(), b"", "destroyed")
    only_destroyed = _snapshot("Active", _key("acme", 1, KeyState.DISABLED), newest_destroyed)
    with pytest.raises(FailedPrecondition, match=r"^key acme/data/v2 is destroyed$"):
        engine.get(only_destroyed, "service:storage", "acme", "data")


STORAGE = "service:storage"


def _keyed(*keys: KeyVersion, spec: dict[str, object] | None = None) -> Snapshot:
    """acme holding ``keys`` under ``spec`` (default: KEYS, with service:inventory reading metadata only)."""
    spec = spec or {**KEYS, "metadata_readers": ["service:inventory"]}
    views = [build_tenant(parse_document(tenant_doc("acme", keys=spec)).tenant, 1, keys),
             build_tenant(parse_document(tenant_doc("globex", keys=KEYS)).tenant, 1, [_key("globex", 1)])]
    return build_snapshot(1, views, time.time())


def _floored(version: int, floor: int, state: KeyState = KeyState.ENABLED) -> KeyVersion:
    return KeyVersion("acme", "data", version, "AES-256-GCM", state, time.time(), bytes([version]) * 32, "", floor)


@pytest.mark.parametrize(
    ("caller", "tenant", "purpose", "version", "error", "message", "field"),
    [
        (STORAGE, "nope", "data", 0, NotFound, "unknown tenant 'nope'", "tenant_id"),
        ("service:other", "acme", "data", 0, PermissionDenied,
         "caller 'service:other' may not read keys of tenant 'acme'", ""),
        ("", "acme", "data", 0, PermissionDenied, "caller '(anonymous)' may not read keys of tenant 'acme'", ""),
        # Reading metadata does not let a caller read keys.
        ("service:inventory", "acme", "data", 0, PermissionDenied,
         "caller 'service:inventory' may not read keys of tenant 'acme'", ""),
        (STORAGE, "acme", "logs", 0, NotFound, "tenant 'acme' has no key for purpose 'logs'", "purpose"),
        (STORAGE, "acme", "data", 9, NotFound, "tenant 'acme' has no version 9 of key 'data'", "version"),
        (STORAGE, "acme", "data", 1, FailedPrecondition,
         "key acme/data/v1 is below the min_decryption_version (2) of acme/data", "version"),
    ],
)
def test_key_refusals_name_their_cause_and_field(caller: str, tenant: str, purpose: str, version: int,
                                                 error: type[Exception], message: str, field: str) -> None:
    snapshot = _keyed(_floored(1, 2), _floored(2, 2))
    with pytest.raises(error, match=f"^{re.escape(message)}$") as caught:
        KeyEngine().get(snapshot, caller, tenant, purpose, version)
    assert caught.value.field == field  # type: ignore[attr-defined]


def test_a_tenant_not_active_is_refused_naming_its_state() -> None:
    suspended = _snapshot("Suspended", _key("acme", 1))
    with pytest.raises(FailedPrecondition, match=r"^tenant 'acme' is Suspended; keys are served to Active tenants "
                                                 r"only$") as caught:
        KeyEngine().get(suspended, STORAGE, "acme", "data")
    assert caught.value.field == "tenant_id"


def test_the_floor_version_itself_is_served() -> None:
    snapshot = _keyed(_floored(1, 2), _floored(2, 2), _floored(3, 2, KeyState.DISABLED))
    engine = KeyEngine()
    assert engine.get(snapshot, STORAGE, "acme", "data").version == 2
    assert engine.get(snapshot, STORAGE, "acme", "data", 2).version == 2
    assert engine.metadata(snapshot, STORAGE, "acme", "data").primary_version == 2


def test_without_an_enabled_version_the_newest_is_refused_by_name() -> None:
    snapshot = _keyed(*(_key("acme", version, KeyState.DISABLED) for version in (1, 2, 3)))
    with pytest.raises(FailedPrecondition, match=r"^key acme/data/v3 is disabled$"):
        KeyEngine().get(snapshot, STORAGE, "acme", "data")
    assert KeyEngine().metadata(snapshot, STORAGE, "acme", "data").primary_version == 0


def test_a_purpose_no_longer_declared_is_not_served() -> None:
    old = KeyVersion("acme", "archive", 1, "AES-256-GCM", KeyState.ENABLED, time.time(), b"a" * 32)
    with pytest.raises(NotFound, match="no key for purpose 'archive'"):
        KeyEngine().get(_keyed(_key("acme", 1), old), STORAGE, "acme", "archive")


def test_metadata_for_its_readers_only_and_without_material() -> None:
    snapshot = _keyed(_floored(1, 2), _floored(2, 2), _floored(3, 2, KeyState.DISABLED))
    engine = KeyEngine()
    for caller in ("service:inventory", STORAGE):
        found = engine.metadata(snapshot, caller, "acme", "data")
        assert [(k.version, k.state) for k in found.versions] == [(1, KeyState.ENABLED), (2, KeyState.ENABLED),
                                                                  (3, KeyState.DISABLED)]
        assert (found.primary_version, found.min_decryption_version) == (2, 2)
    with pytest.raises(PermissionDenied, match=r"^caller 'service:web' may not read key metadata of tenant 'acme'$"):
        engine.metadata(snapshot, "service:web", "acme", "data")
    with pytest.raises(NotFound, match="no key for purpose 'logs'"):
        engine.metadata(snapshot, STORAGE, "acme", "logs")


def test_data_keys_open_under_the_version_that_sealed_them_and_nowhere_else() -> None:
    engine = KeyEngine()
    before = _keyed(_key("acme", 1))
    sealed = engine.new_data_key(before, STORAGE, "acme", "data")
    assert len(sealed.plaintext) == 32 and sealed.plaintext not in sealed.wrapped
    assert sealed.wrapped.startswith(DATA_KEY_MAGIC) and sealed.key.version == 1
    assert sealed.plaintext.hex() not in repr(sealed)
    assert engine.new_data_key(before, STORAGE, "acme", "data").plaintext != sealed.plaintext
    rotated = _keyed(_key("acme", 1), _key("acme", 2))
    opened = engine.decrypt_data_key(rotated, STORAGE, "acme", "data", sealed.wrapped)
    assert (opened.plaintext, opened.key.version, opened.wrapped) == (sealed.plaintext, 1, sealed.wrapped)
    assert engine.new_data_key(rotated, STORAGE, "acme", "data").key.version == 2
    refusals: list[tuple[Snapshot, str, str, bytes, type[Exception], str]] = [
        (rotated, "globex", "data", sealed.wrapped, InvalidArgument, "does not open under globex/data/v1"),
        (rotated, "acme", "data", sealed.wrapped[:-1] + bytes([sealed.wrapped[-1] ^ 1]), InvalidArgument,
         "^" + re.escape("wrapped does not open under acme/data/v1 (another tenant's or purpose's, or altered)") + "$"),
        (rotated, "acme", "data", b"x" * 60, InvalidArgument, "^wrapped is not a data key from GetDataKey$"),
        (rotated, "acme", "data", sealed.wrapped[:len(DATA_KEY_MAGIC) + 4 + 12 + 15], InvalidArgument,
         "^wrapped is not a data key from GetDataKey$"),
        (_keyed(_key("acme", 1, KeyState.DISABLED), _key("acme", 2)), "acme", "data", sealed.wrapped,
         FailedPrecondition, "^key acme/data/v1 is disabled$"),
    ]
    for snapshot, tenant, purpose, wrapped, error, message in refusals:
        with pytest.raises(error, match=message) as caught:
            engine.decrypt_data_key(snapshot, STORAGE, tenant, purpose, wrapped)
        if error is InvalidArgument:
            assert caught.value.field == "wrapped"  # type: ignore[attr-defined]
    with pytest.raises(PermissionDenied):
        engine.new_data_key(before, "service:web", "acme", "data")
