"""Who may read which tenant key: the tenant's ``keys.readers``, for a purpose it declares, while Active."""

from __future__ import annotations

from tenantgate.errors import FailedPrecondition, NotFound, PermissionDenied
from tenantgate.model import KeyState, TenantState
from tenantgate.snapshot import KeyVersion, Snapshot


class KeyEngine:
    def get(self, snapshot: Snapshot, caller: str, tenant_id: str, purpose: str, version: int = 0) -> KeyVersion:
        """The key (``version`` 0: the newest enabled one). Never falls back to another key."""
        tenant = snapshot.tenants.get(tenant_id)
        if tenant is None:
            raise NotFound(f"unknown tenant {tenant_id!r}", field="tenant_id")
        # The caller check comes before anything that would tell an outsider about the tenant's keys.
        if not caller or caller not in tenant.spec.keys.readers:
            raise PermissionDenied(f"caller {caller or '(anonymous)'!r} may not read keys of tenant {tenant_id!r}")
        if tenant.state is not TenantState.ACTIVE:
            raise FailedPrecondition(f"tenant {tenant_id!r} is {tenant.state.value}; keys are served to Active "
                                     "tenants only", field="tenant_id")
        versions = tenant.keys.get(purpose) if purpose in tenant.spec.keys.purposes else None
        if not versions:
            raise NotFound(f"tenant {tenant_id!r} has no key for purpose {purpose!r}", field="purpose")
        if version:
            key = next((k for k in versions if k.version == version), None)
            if key is None:
                raise NotFound(f"tenant {tenant_id!r} has no version {version} of key {purpose!r}", field="version")
        else:
            key = next((k for k in reversed(versions) if k.state is KeyState.ENABLED), versions[-1])
        if key.state is not KeyState.ENABLED:
            raise FailedPrecondition(f"key {key.key_id} is {key.state.name.lower()}", field="version")
        if key.unavailable:
            raise FailedPrecondition(f"key {key.key_id} is unavailable: {key.unavailable}")
        return key
