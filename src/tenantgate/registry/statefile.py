"""The registry state as JSON: the one codec of the last-known-good file's content (``sync/lastgood.py``
writes and reads the file).

Records are written field by field from their dataclass fields and read back strictly: content that lacks
a field, or names one this version does not know, is refused, never read with a default (a missing key
version floor would serve retired key versions). Content of an older format is refused for the same reason.
Adding a field to a record needs nothing here unless its type is new (then ``_fields_of`` says so).
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import typing
from typing import Any, TypeVar

from tenantgate.registry.records import KeyRecord, PlanRecord, RegistryState, TenantRecord

# 3: every field of every record (format 2 lost KeyRecord.min_decryption_version) and the registry's identity.
# 4: plans. A format 3 file is read as a registry without plans, which it is: no version writing it knew any.
FORMAT = 4
OLDEST_FORMAT = _WITHOUT_PLANS = 3  # the oldest format read

_SCALARS = (str, int, float, bytes)
_Record = TypeVar("_Record", TenantRecord, KeyRecord, PlanRecord)


def _fields_of(cls: type) -> tuple[tuple[str, type], ...]:
    """(name, type) of each field of a record; only the types the file can hold exactly."""
    hints = typing.get_type_hints(cls)
    fields = tuple((f.name, hints[f.name]) for f in dataclasses.fields(cls))
    for name, kind in fields:
        if kind not in _SCALARS:
            raise TypeError(f"{cls.__name__}.{name} is a {kind}; the last-known-good file holds str, int, float and "
                            "bytes fields: give it a codec here")
    return fields


_FIELDS = {cls: _fields_of(cls) for cls in (TenantRecord, KeyRecord, PlanRecord)}


def _encode(record: TenantRecord | KeyRecord | PlanRecord) -> dict[str, Any]:
    encoded: dict[str, Any] = {}
    for name, kind in _FIELDS[type(record)]:
        value = getattr(record, name)
        encoded[name] = base64.b64encode(value).decode("ascii") if kind is bytes else value
    return encoded


def _decode(cls: type[_Record], raw: Any) -> _Record:
    if not isinstance(raw, dict):
        raise ValueError(f"a {cls.__name__} is not an object")
    kinds = dict(_FIELDS[cls])
    missing, unknown = kinds.keys() - raw.keys(), raw.keys() - kinds.keys()
    if missing or unknown:
        problems = [f"{what} field(s) {', '.join(sorted(names))}"
                    for what, names in (("missing", missing), ("unknown", unknown)) if names]
        raise ValueError(f"a {cls.__name__} with {'; '.join(problems)}")
    return cls(**{name: _value(raw[name], kind, f"{cls.__name__}.{name}") for name, kind in kinds.items()})


def _value(value: Any, kind: type, where: str) -> Any:
    """``value`` as read from JSON, checked to be of ``kind`` (JSON's true and false are not numbers)."""
    if not isinstance(value, bool):
        if (kind is str and isinstance(value, str)) or (kind is int and isinstance(value, int)):
            return value
        if kind is float and isinstance(value, (int, float)):
            return float(value)
        if kind is bytes and isinstance(value, str):
            try:
                return base64.b64decode(value, validate=True)
            except binascii.Error as exc:
                raise ValueError(f"{where} is not base64: {exc}") from None
    raise ValueError(f"{where} should be {kind.__name__}, not {type(value).__name__}")


def encode(state: RegistryState, saved_at: float) -> dict[str, Any]:
    """The file's content: ``state`` and when it was saved."""
    return {
        "format": FORMAT,
        "registry_id": state.registry_id,
        "revision": state.revision,
        "saved_at": saved_at,
        "tenants": [_encode(record) for record in state.tenants.values()],
        "keys": {tenant_id: [_encode(key) for key in keys] for tenant_id, keys in state.keys.items()},
        "plans": [_encode(record) for record in state.plans.values()],
    }


def decode(body: Any) -> tuple[RegistryState, float]:
    """The state and save time in a file's content; ValueError when it is not exactly what ``encode`` writes."""
    if not isinstance(body, dict):
        raise ValueError("not a last-known-good file")
    found = body.get("format")
    if found != FORMAT and not (found == _WITHOUT_PLANS and "plans" not in body):
        if isinstance(found, int) and not isinstance(found, bool) and found < FORMAT:
            raise ValueError(f"written by an older tenantgate (format {found}, this one reads {FORMAT}) that did not "
                             "save every field, key version floors among them; not used, as it could serve retired "
                             "key versions")
        if isinstance(found, int) and not isinstance(found, bool):
            raise ValueError(f"written by a newer tenantgate (format {found}, this one reads {FORMAT})")
        raise ValueError("not a last-known-good file (no format)")
    tenants: dict[str, TenantRecord] = {}
    for raw in _list(body.get("tenants"), "tenants"):
        record = _decode(TenantRecord, raw)
        if record.id in tenants:
            raise ValueError(f"tenant {record.id!r} twice")
        tenants[record.id] = record
    grouped = body.get("keys")
    if not isinstance(grouped, dict):
        raise ValueError("keys is not an object")
    keys: dict[str, tuple[KeyRecord, ...]] = {}
    for tenant_id, raw_keys in grouped.items():
        keys[tenant_id] = tuple(_decode(KeyRecord, raw) for raw in _list(raw_keys, f"keys of {tenant_id!r}"))
        if any(key.tenant_id != tenant_id for key in keys[tenant_id]):
            raise ValueError(f"a key of another tenant among the keys of {tenant_id!r}")
    plans: dict[str, PlanRecord] = {}
    for raw in _list(body.get("plans"), "plans") if found == FORMAT else ():
        plan = _decode(PlanRecord, raw)
        if plan.id in plans:
            raise ValueError(f"plan {plan.id!r} twice")
        plans[plan.id] = plan
    state = RegistryState(_value(body.get("revision"), int, "revision"), tenants, keys,
                          _value(body.get("registry_id"), str, "registry_id"), plans)
    return state, _value(body.get("saved_at"), float, "saved_at")


def _list(value: Any, where: str) -> list[Any]:
    if not isinstance(value, list):
        raise ValueError(f"{where} is not a list")
    return value
