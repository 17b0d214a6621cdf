"""Tenant keys: who may read which, which version is served, and data keys wrapped under them.

Only callers in a tenant's ``keys.readers`` get material; ``keys.metadata_readers`` (and readers) may
see versions and states. Only Active tenants are served. A version that is disabled, destroyed or below
the purpose's ``min_decryption_version`` is refused with its reason; there is never a fallback key.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from tenantgate.errors import FailedPrecondition, InvalidArgument, NotFound, PermissionDenied
from tenantgate.keywrap import KEY_BYTES, NONCE_BYTES
from tenantgate.model import KeyState, TenantState
from tenantgate.snapshot import KeyVersion, Snapshot, TenantView

# A wrapped data key: magic, the tenant key version (4 bytes), nonce, ciphertext and tag.
DATA_KEY_MAGIC = b"tgdk1"
_VERSION = struct.Struct(">I")


@dataclass(frozen=True, slots=True)
class KeyMetadata:
    versions: tuple[KeyVersion, ...]
    primary_version: int
    min_decryption_version: int


@dataclass(frozen=True, slots=True)
class DataKey:
    key: KeyVersion
    plaintext: bytes
    wrapped: bytes

    def __repr__(self) -> str:
        return f"DataKey(key_id={self.key.key_id!r}, <redacted>)"


def _data_key_binding(key: KeyVersion) -> bytes:
    return f"tenantgate/v1/data-key|{key.tenant_id}|{key.purpose}|{key.version}".encode()


class KeyEngine:
    def _tenant(self, snapshot: Snapshot, caller: str, tenant_id: str, *, metadata: bool = False) -> TenantView:
        tenant = snapshot.tenants.get(tenant_id)
        if tenant is None:
            raise NotFound(f"unknown tenant {tenant_id!r}", field="tenant_id")
        # The caller check comes before anything that would tell an outsider about the tenant's keys.
        keys = tenant.spec.keys
        allowed = caller in keys.readers or (metadata and caller in keys.metadata_readers)
        if not caller or not allowed:
            what = "key metadata" if metadata else "keys"
            raise PermissionDenied(f"caller {caller or '(anonymous)'!r} may not read {what} of tenant {tenant_id!r}")
        if tenant.state is not TenantState.ACTIVE:
            raise FailedPrecondition(f"tenant {tenant_id!r} is {tenant.state.value}; keys are served to Active "
                                     "tenants only", field="tenant_id")
        return tenant

    @staticmethod
    def _versions(tenant: TenantView, purpose: str) -> tuple[KeyVersion, ...]:
        versions = tenant.keys.get(purpose) if purpose in tenant.spec.keys.purposes else None
        if not versions:
            raise NotFound(f"tenant {tenant.id!r} has no key for purpose {purpose!r}", field="purpose")
        return versions

    @staticmethod
    def _primary(versions: tuple[KeyVersion, ...]) -> KeyVersion | None:
        newest = versions[-1]
        floor = newest.min_decryption_version
        if newest.state is KeyState.ENABLED and newest.version >= floor:
            return newest  # the usual case, without a generator
        return next((k for k in reversed(versions) if k.state is KeyState.ENABLED and k.version >= floor), None)

    def get(self, snapshot: Snapshot, caller: str, tenant_id: str, purpose: str, version: int = 0) -> KeyVersion:
        """The key (``version`` 0: the primary, the newest enabled one)."""
        versions = self._versions(self._tenant(snapshot, caller, tenant_id), purpose)
        if version:
            key = next((k for k in versions if k.version == version), None)
            if key is None:
                raise NotFound(f"tenant {tenant_id!r} has no version {version} of key {purpose!r}", field="version")
        else:
            key = self._primary(versions) or versions[-1]
        return self._usable(key)

    @staticmethod
    def _usable(key: KeyVersion) -> KeyVersion:
        if key.state is not KeyState.ENABLED:
            raise FailedPrecondition(f"key {key.key_id} is {key.state.name.lower()}", field="version")
        if key.version < key.min_decryption_version:
            raise FailedPrecondition(f"key {key.key_id} is below the min_decryption_version "
                                     f"({key.min_decryption_version}) of {key.tenant_id}/{key.purpose}",
                                     field="version")
        if key.unavailable:
            raise FailedPrecondition(f"key {key.key_id} is unavailable: {key.unavailable}")
        return key

    def metadata(self, snapshot: Snapshot, caller: str, tenant_id: str, purpose: str) -> KeyMetadata:
        versions = self._versions(self._tenant(snapshot, caller, tenant_id, metadata=True), purpose)
        primary = self._primary(versions)
        return KeyMetadata(versions, primary.version if primary else 0, versions[-1].min_decryption_version)

    def new_data_key(self, snapshot: Snapshot, caller: str, tenant_id: str, purpose: str) -> DataKey:
        key = self.get(snapshot, caller, tenant_id, purpose)
        plaintext = AESGCM.generate_key(bit_length=KEY_BYTES * 8)
        nonce = os.urandom(NONCE_BYTES)
        sealed = AESGCM(key.material).encrypt(nonce, plaintext, _data_key_binding(key))
        return DataKey(key, plaintext, DATA_KEY_MAGIC + _VERSION.pack(key.version) + nonce + sealed)

    def decrypt_data_key(self, snapshot: Snapshot, caller: str, tenant_id: str, purpose: str,
                         wrapped: bytes) -> DataKey:
        header = len(DATA_KEY_MAGIC) + _VERSION.size
        if not wrapped.startswith(DATA_KEY_MAGIC) or len(wrapped) < header + NONCE_BYTES + 16:
            raise InvalidArgument("wrapped is not a data key from GetDataKey", field="wrapped")
        (version,) = _VERSION.unpack(wrapped[len(DATA_KEY_MAGIC):header])
        key = self.get(snapshot, caller, tenant_id, purpose, version)
        nonce, sealed = wrapped[header:header + NONCE_BYTES], wrapped[header + NONCE_BYTES:]
        try:
            plaintext = AESGCM(key.material).decrypt(nonce, sealed, _data_key_binding(key))
        except InvalidTag:
            raise InvalidArgument(f"wrapped does not open under {key.key_id} (another tenant's or purpose's, or "
                                  "altered)", field="wrapped") from None
        return DataKey(key, plaintext, wrapped)
