"""The last-known-good file holds the whole registry state: whatever is saved loads back equal, field for field,
and a file that lacks a field (one written by an older tenantgate among them) is refused, never defaulted."""

from __future__ import annotations

import base64
import dataclasses
import json
import typing
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tenantgate.errors import StorageError
from tenantgate.model import KeyState, TenantState
from tenantgate.registry.records import KeyRecord, PlanRecord, RegistryState, TenantRecord
from tenantgate.sync import lastgood

# Any JSON document, unicode everywhere: what a tenant's canonical JSON can hold.
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(), children, max_size=4),
    max_leaves=12)
documents = st.one_of(json_values.map(lambda value: json.dumps(value, ensure_ascii=False)), st.text())

# Strategies for fields whose values have a meaning; every other field is generated from its type alone.
BY_NAME: dict[tuple[type, str], st.SearchStrategy[Any]] = {
    (TenantRecord, "document_json"): documents,
    (PlanRecord, "document_json"): documents,
    (TenantRecord, "state"): st.sampled_from([state.value for state in TenantState]) | st.text(),
    (KeyRecord, "state"): st.sampled_from([int(state) for state in KeyState]) | st.integers(),
}
BY_TYPE: dict[Any, st.SearchStrategy[Any]] = {
    str: st.text(),
    int: st.integers(),
    float: st.floats(allow_nan=False),  # times; infinities and -0.0 included
    bytes: st.binary(max_size=64),
}


def records(cls: type) -> st.SearchStrategy[Any]:
    """Records of ``cls`` with every one of its fields generated, so that a field added to the record is
    generated too, and must come back from the file."""
    hints = typing.get_type_hints(cls)
    fields = {}
    for field in dataclasses.fields(cls):
        strategy = BY_NAME.get((cls, field.name), BY_TYPE.get(hints[field.name]))
        if strategy is None:
            raise AssertionError(f"no strategy for {cls.__name__}.{field.name} ({hints[field.name]}): add one here")
        fields[field.name] = strategy
    return st.builds(cls, **fields)


@st.composite
def states(draw: st.DrawFn) -> RegistryState:
    """Registry states as the store reads them: tenants by their id, each tenant's keys under its id."""
    tenants = {record.id: record for record in draw(st.lists(records(TenantRecord), max_size=5,
                                                            unique_by=lambda record: record.id))}
    key_groups = draw(st.dictionaries(st.sampled_from(sorted(tenants)) | st.text() if tenants else st.text(),
                                      st.lists(records(KeyRecord), max_size=4), max_size=5))
    keys = {tenant_id: tuple(dataclasses.replace(key, tenant_id=tenant_id) for key in group)
            for tenant_id, group in key_groups.items()}
    hints = typing.get_type_hints(RegistryState)
    values: dict[str, Any] = {}
    for field in dataclasses.fields(RegistryState):
        if field.name == "tenants":
            values[field.name] = tenants
        elif field.name == "keys":
            values[field.name] = keys
        elif field.name == "plans":
            values[field.name] = {plan.id: plan for plan in draw(st.lists(records(PlanRecord), max_size=3,
                                                                          unique_by=lambda plan: plan.id))}
        elif hints[field.name] in BY_TYPE:
            values[field.name] = draw(BY_TYPE[hints[field.name]])
        else:
            raise AssertionError(f"no strategy for RegistryState.{field.name}: add one here")
    return RegistryState(**values)


def typed(value: Any) -> Any:
    """``value`` with the type of every field beside it: 1 and 1.0 compare equal, but a float field read back
    as an int is not the same record."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return type(value), tuple((field.name, typed(getattr(value, field.name)))
                                  for field in dataclasses.fields(value))
    if isinstance(value, dict):
        return {key: typed(item) for key, item in value.items()}
    if isinstance(value, tuple):
        return tuple(typed(item) for item in value)
    return type(value), value


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(state=states(), saved_at=st.floats(allow_nan=False))
def test_what_is_saved_loads_back_equal_field_for_field(tmp_path: Path, state: RegistryState, saved_at: float) -> None:
    path = tmp_path / "last-known-good.json"
    lastgood.save(path, state, saved_at)
    loaded, loaded_at = lastgood.load(path)
    assert loaded == state
    assert typed(loaded) == typed(state)
    assert dataclasses.asdict(loaded) == dataclasses.asdict(state)
    assert (type(loaded_at), loaded_at) == (float, saved_at)
    assert lastgood.identify(path) == lastgood.Held(state.registry_id, state.revision)


KEY = KeyRecord("acme", "data", 2, b"\x00wrapped\xff", "AES-256-GCM", int(KeyState.ENABLED), 1700000000.5,
                min_decryption_version=2)
STATE = RegistryState(7, {"acme": TenantRecord("acme", '{"metadata":{"name":"Ácme ☃"}}', "d1", 7, "Active", 1.5)},
                      {"acme": (KEY,)}, "registry-a")


def test_the_key_version_floor_is_in_the_file(tmp_path: Path) -> None:
    path = tmp_path / "last-known-good.json"
    lastgood.save(path, STATE, 1.0)
    (saved,) = json.loads(path.read_text())["keys"]["acme"]
    assert saved["min_decryption_version"] == 2
    assert lastgood.load(path)[0].keys["acme"][0].min_decryption_version == 2


def written(tmp_path: Path, body: dict[str, Any]) -> Path:
    path = tmp_path / "last-known-good.json"
    path.write_text(json.dumps(body))
    return path


def test_a_file_that_lacks_a_field_is_refused_not_defaulted(tmp_path: Path) -> None:
    body = lastgood.encode(STATE, 1.0)
    del body["keys"]["acme"][0]["min_decryption_version"]
    with pytest.raises(StorageError, match=r"missing field.*min_decryption_version"):
        lastgood.load(written(tmp_path, body))
    assert lastgood.identify(tmp_path / "last-known-good.json") is not None


def test_a_file_of_the_previous_format_is_refused_and_may_be_replaced(tmp_path: Path) -> None:
    # What format 2 wrote: no key version floor, no registry identity.
    old = {"format": 2, "revision": 7, "saved_at": 1.0,
           "tenants": [{"id": "acme", "document": "{}", "digest": "d1", "revision": 7, "state": "Active",
                        "state_since": 1.5}],
           "keys": [{"tenant_id": "acme", "purpose": "data", "version": 2,
                     "wrapped": base64.b64encode(b"w").decode(), "algorithm": "AES-256-GCM", "state": 1,
                     "created_at": 1.0}]}
    path = written(tmp_path, old)
    with pytest.raises(StorageError, match=r"older tenantgate.*format 2.*key version floors"):
        lastgood.load(path)
    held = lastgood.identify(path)
    assert held is not None and held.outdated
    assert lastgood.refusal(held, STATE) is None


def test_a_file_of_the_format_before_plans_is_read_as_a_registry_without_plans(tmp_path: Path) -> None:
    body = lastgood.encode(STATE, 1.0)
    del body["plans"]
    path = written(tmp_path, {**body, "format": 3})
    assert lastgood.load(path) == (STATE, 1.0)
    assert lastgood.identify(path) == lastgood.Held(STATE.registry_id, STATE.revision)
    with pytest.raises(StorageError, match="unknown field"):  # a format 4 file is read strictly
        lastgood.load(written(tmp_path, {**body, "plans": [{"id": "p", "document_json": "{}", "digest": "",
                                                            "revision": 1, "colour": "red"}]}))


@pytest.mark.parametrize("body, problem", [
    ({**lastgood.encode(STATE, 1.0), "format": 99}, "newer tenantgate"),
    ({**lastgood.encode(STATE, 1.0), "revision": "7"}, "revision should be int"),
    ({**lastgood.encode(STATE, 1.0), "keys": {"globex": lastgood.encode(STATE, 1.0)["keys"]["acme"]}},
     "key of another tenant"),
    ([], "not a last-known-good file"),
])
def test_a_damaged_or_newer_file_is_refused_and_kept(tmp_path: Path, body: Any, problem: str) -> None:
    path = written(tmp_path, body)
    with pytest.raises(StorageError, match=problem):
        lastgood.load(path)
    held = lastgood.identify(path)
    assert held is not None and problem in held.unreadable
    refusal = lastgood.refusal(held, STATE)
    assert refusal is not None and "--replace-snapshot-file" in refusal.advice


def test_only_a_later_revision_of_the_same_registry_replaces_a_file() -> None:
    held = lastgood.Held("registry-a", 7)
    assert lastgood.refusal(None, STATE) is None  # no file yet
    assert lastgood.refusal(held, STATE) is None
    assert lastgood.refusal(held, dataclasses.replace(STATE, revision=8)) is None
    older = lastgood.refusal(held, dataclasses.replace(STATE, revision=6))
    assert older is not None and "restored from a backup" in older.reason
    other = lastgood.refusal(held, dataclasses.replace(STATE, registry_id="registry-b", revision=70))
    assert other is not None and "registry-a" in other.reason and "registry-b" in other.reason
