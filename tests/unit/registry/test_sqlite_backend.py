"""What only the SQLite store has to prove: a file that goes bad and comes back, a schema from the
future, and destroyed keys that leave no bytes behind in the file."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from tenantgate.errors import ConfigurationError, StorageError
from tenantgate.keywrap import MasterKey, tenant_key_factory
from tenantgate.registry.sqlite import SQLiteStore
from tests.conftest import manifests, tenant_doc


def test_an_unreadable_file_fails_each_call_and_recovers_when_it_is_back(registry_path: Path) -> None:
    store = SQLiteStore(registry_path)
    store.apply(manifests({"acme": tenant_doc("acme")}))
    store.close()
    good = registry_path.read_bytes()
    registry_path.write_bytes(b"this is not a database" * 100)
    with pytest.raises(StorageError, match="not a database"):
        store.current_revision()
    registry_path.write_bytes(good)
    assert store.current_revision() == 1
    store.close()


def test_a_newer_schema_is_refused(registry_path: Path) -> None:
    store = SQLiteStore(registry_path)
    store.current_revision()
    store.close()
    db = sqlite3.connect(registry_path)
    db.execute("INSERT INTO schema_migrations (version, applied_at) VALUES (99, 'later')")
    db.commit()
    db.close()
    with pytest.raises(ConfigurationError, match="schema version 99"):
        SQLiteStore(registry_path).current_revision()


def test_deleting_a_tenant_leaves_none_of_its_wrapped_key_bytes_in_the_files(registry_path: Path,
                                                                            master_key: MasterKey) -> None:
    store = SQLiteStore(registry_path)
    keys = {"purposes": ["data", "backups"], "readers": ["service:storage"]}
    store.apply(manifests({"acme": tenant_doc("acme", state="Archived", retention="0s", keys=keys),
                 "globex": tenant_doc("globex", keys=keys)}), key_factory=tenant_key_factory(master_key))
    doomed = [key.wrapped for key in store.load().keys["acme"]]
    kept = [key.wrapped for key in store.load().keys["globex"]]

    def on_disk() -> bytes:
        return b"".join(p.read_bytes() for p in registry_path.parent.glob(registry_path.name + "*"))

    assert all(wrapped in on_disk() for wrapped in doomed + kept)
    store.transition("acme", "Deleted")
    data = on_disk()
    assert not any(wrapped in data for wrapped in doomed)
    assert all(wrapped in data for wrapped in kept)
    store.close()


def test_a_tenant_a_newer_version_wrote_can_still_be_rotated_archived_and_deleted(registry_path: Path,
                                                                                    master_key: MasterKey) -> None:
    """Administration reads a stored document's key purposes and retention, not its whole schema: a field this
    version does not know (written by a newer tenantgate sharing the registry) does not lock the tenant."""
    store = SQLiteStore(registry_path)
    keys = {"purposes": ["data"], "readers": ["service:storage"], "rotate_every": "1s"}
    store.apply(manifests({"acme": tenant_doc("acme", state="Suspended", keys=keys, retention="0s")}),
                key_factory=tenant_key_factory(master_key))
    with sqlite3.connect(registry_path) as db:
        (text,) = db.execute("SELECT document FROM tenants WHERE id = 'acme'").fetchone()
        db.execute("UPDATE tenants SET document = ? WHERE id = 'acme'",
                   (text.replace('"spec":{', '"spec":{"futureField":1,'),))
    db.close()
    factory = tenant_key_factory(master_key)
    assert store.rotate_key("acme", "data", key_factory=factory).key.version == 2
    store.transition("acme", "Archived")
    assert store.transition("acme", "Deleted").after == "Deleted"
    store.close()
