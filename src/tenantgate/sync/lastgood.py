"""The last-known-good copy of the registry on disk, for a cold start while the registry is unreachable.

It holds what the registry holds (documents and wrapped keys, never plaintext), written to a temporary
file and renamed, so a reader sees the old file or the new one, never half of one.
"""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path
from typing import Any

from tenantgate.errors import StorageError
from tenantgate.registry.store import KeyRecord, RegistryState, TenantRecord

FORMAT = 2


def save(path: Path, state: RegistryState, saved_at: float) -> None:
    body = {
        "format": FORMAT,
        "revision": state.revision,
        "saved_at": saved_at,
        "tenants": [{"id": r.id, "document": r.document_json, "digest": r.digest, "revision": r.revision,
                     "state": r.state, "state_since": r.state_since} for r in state.tenants.values()],
        "keys": [{"tenant_id": k.tenant_id, "purpose": k.purpose, "version": k.version,
                  "wrapped": base64.b64encode(k.wrapped).decode(), "algorithm": k.algorithm, "state": k.state,
                  "created_at": k.created_at} for keys in state.keys.values() for k in keys],
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        json.dump(body, handle, separators=(",", ":"))
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)


def load(path: Path) -> tuple[RegistryState, float]:
    """The saved state and when it was saved; StorageError when there is none to use."""
    try:
        body: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
        if body.get("format") != FORMAT:
            raise StorageError(f"{path}: unknown last-known-good format {body.get('format')!r}")
        tenants = {t["id"]: TenantRecord(t["id"], t["document"], t["digest"], int(t["revision"]), t["state"],
                                         float(t["state_since"])) for t in body["tenants"]}
        keys: dict[str, list[KeyRecord]] = {}
        for k in body["keys"]:
            keys.setdefault(k["tenant_id"], []).append(KeyRecord(
                k["tenant_id"], k["purpose"], int(k["version"]), base64.b64decode(k["wrapped"]), k["algorithm"],
                int(k["state"]), float(k["created_at"])))
        state = RegistryState(int(body["revision"]), tenants, {t: tuple(v) for t, v in keys.items()})
        return state, float(body["saved_at"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise StorageError(f"cannot use the last-known-good snapshot {path}: {exc}") from exc
