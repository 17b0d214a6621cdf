from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

import pytest

from tenantgate.errors import ConfigurationError, FailedPrecondition, StorageError
from tenantgate.keywrap import MasterKey
from tenantgate.registry.sqlite import SQLiteStore
from tenantgate.registry.store import open_store
from tests.conftest import key_factory_for, tenant_doc


def test_apply_creates_then_is_idempotent(store: SQLiteStore) -> None:
    docs = {"acme": tenant_doc("acme"), "globex": tenant_doc("globex")}
    first = store.apply(docs)
    assert first.revision == 1
    assert [(c.tenant_id, c.action) for c in first.changes] == [("acme", "create"), ("globex", "create")]
    again = store.apply(docs)
    assert (again.revision, again.changes) == (1, ())
    assert store.current_revision() == 1


def test_update_reports_field_differences_and_bumps_one_revision(store: SQLiteStore) -> None:
    store.apply({"acme": tenant_doc("acme", plan="free")})
    result = store.apply({"acme": tenant_doc("acme", plan="pro", features=["sso"])})
    assert result.revision == 2
    (change,) = result.changes
    assert change.action == "update"
    assert "~ spec.plan: free -> pro" in change.differences
    assert "+ spec.features: ['sso']" in change.differences


def test_dry_run_changes_nothing(store: SQLiteStore) -> None:
    result = store.apply({"acme": tenant_doc("acme")}, dry_run=True)
    assert result.dry_run and result.changes
    assert store.current_revision() == 0
    assert store.load().tenants == {}


def test_tenants_missing_from_manifests_are_kept_unless_pruned(store: SQLiteStore) -> None:
    store.apply({"acme": tenant_doc("acme"), "globex": tenant_doc("globex")})
    assert store.apply({"acme": tenant_doc("acme")}).changes == ()
    pruned = store.apply({"acme": tenant_doc("acme")}, prune=True)
    assert [(c.tenant_id, c.action) for c in pruned.changes] == [("globex", "delete")]
    assert set(store.load().tenants) == {"acme"}


def test_changes_since_names_every_tenant_changed_after_a_revision(store: SQLiteStore) -> None:
    store.apply({"a1": tenant_doc("a1"), "b1": tenant_doc("b1")})
    store.apply({"a1": tenant_doc("a1", plan="x"), "b1": tenant_doc("b1")})
    store.apply({"a1": tenant_doc("a1", plan="x")}, prune=True)
    changes = store.changes_since(1)
    assert changes.revision == 3
    assert set(changes.tenants) == {"a1", "b1"}
    assert changes.tenants["b1"] is None
    record = changes.tenants["a1"]
    assert record is not None and record.document["spec"]["plan"] == "x" and record.revision == 2


def test_keys_are_generated_once_and_stored_only_wrapped(store: SQLiteStore, master_key: MasterKey) -> None:
    doc = tenant_doc("acme", keys={"purposes": ["data"], "readers": ["service:storage"]})
    with pytest.raises(FailedPrecondition, match="no master key"):
        store.apply({"acme": doc})
    assert store.current_revision() == 0
    store.apply({"acme": doc}, key_factory=key_factory_for(master_key))
    (key,) = store.load().keys["acme"]
    material = master_key.unwrap(key.wrapped, tenant_id="acme", purpose="data", version=1)
    assert len(material) == 32 and material not in key.wrapped
    assert store.apply({"acme": doc}, key_factory=key_factory_for(master_key)).changes == ()
    assert store.load().keys["acme"] == (key,)


def test_concurrent_writers_get_gap_free_revisions_in_commit_order(registry_path: Path) -> None:
    writers = 4
    per_writer = 10
    errors: list[BaseException] = []

    def write(worker: int) -> None:
        own = SQLiteStore(registry_path)
        try:
            for n in range(per_writer):
                own.apply({f"w{worker}": tenant_doc(f"w{worker}", plan=str(n))})
        except BaseException as exc:  # reported below
            errors.append(exc)
        finally:
            own.close()

    threads = [threading.Thread(target=write, args=(w,)) for w in range(writers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    db = sqlite3.connect(registry_path)
    revisions = [row[0] for row in db.execute("SELECT revision FROM changes ORDER BY revision")]
    db.close()
    assert revisions == list(range(1, writers * per_writer + 1))


def test_registry_urls() -> None:
    with pytest.raises(ConfigurationError, match="unsupported registry URL scheme 'mysql'"):
        open_store("mysql://x")
    with pytest.raises(ConfigurationError, match="no scheme"):
        open_store("registry.db")


def test_a_newer_schema_is_refused(registry_path: Path) -> None:
    opened = SQLiteStore(registry_path)
    opened.current_revision()
    opened.close()
    db = sqlite3.connect(registry_path)
    db.execute("UPDATE meta SET value = '99' WHERE key = 'schema_version'")
    db.commit()
    db.close()
    with pytest.raises(ConfigurationError, match="schema version 99"):
        SQLiteStore(registry_path).current_revision()


def test_an_unreadable_file_fails_each_call_and_recovers_when_it_is_back(registry_path: Path) -> None:
    opened = SQLiteStore(registry_path)
    opened.apply({"acme": tenant_doc("acme")})
    opened.close()
    good = registry_path.read_bytes()
    registry_path.write_bytes(b"this is not a database" * 100)
    for suffix in ("-wal", "-shm"):
        Path(f"{registry_path}{suffix}").unlink(missing_ok=True)
    with pytest.raises(StorageError, match="not a database"):
        opened.current_revision()
    registry_path.write_bytes(good)
    assert opened.current_revision() == 1
    opened.close()
