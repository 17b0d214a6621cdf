"""Envelope encryption of tenant keys under the master key (AES-256-GCM from `cryptography`).

A wrapped key is ``nonce || ciphertext+tag``; the associated data binds it to its tenant, purpose and
version, so a wrapped key copied to another tenant's row fails to unwrap instead of being served there.
"""

from __future__ import annotations

import base64
import binascii
import os
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from tenantgate.errors import ConfigurationError, FailedPrecondition

KEY_BYTES = 32
NONCE_BYTES = 12
ALGORITHM = "AES-256-GCM"


class KeyProvider(Protocol):
    """Where the key-encryption key lives: wraps and unwraps tenant keys without handing its bytes out.
    ``MasterKey`` (read from a file or the environment) is the one provider today; a KMS or HSM would be
    another behind the same two calls."""

    def wrap(self, material: bytes, *, tenant_id: str, purpose: str, version: int) -> bytes: ...

    def unwrap(self, wrapped: bytes, *, tenant_id: str, purpose: str, version: int) -> bytes: ...


class MasterKey:
    """The key-encryption key. Its bytes are never printed."""

    __slots__ = ("_aead",)

    def __init__(self, material: bytes) -> None:
        if len(material) != KEY_BYTES:
            raise ConfigurationError(f"the master key must be {KEY_BYTES} bytes, got {len(material)}")
        self._aead = AESGCM(material)

    def __repr__(self) -> str:
        return "MasterKey(<redacted>)"

    @classmethod
    def from_base64(cls, text: str, *, source: str) -> MasterKey:
        try:
            material = base64.b64decode(text.strip(), validate=True)
        except (binascii.Error, ValueError):
            raise ConfigurationError(f"{source}: the master key is not valid base64") from None
        if len(material) != KEY_BYTES:
            raise ConfigurationError(f"{source}: the master key must decode to {KEY_BYTES} bytes, "
                                     f"got {len(material)}")
        return cls(material)

    @classmethod
    def from_file(cls, path: str | Path) -> MasterKey:
        try:
            text = Path(path).read_text(encoding="ascii")
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigurationError(f"cannot read the master key file {path}: {exc}") from None
        return cls.from_base64(text, source=str(path))

    def wrap(self, material: bytes, *, tenant_id: str, purpose: str, version: int) -> bytes:
        nonce = os.urandom(NONCE_BYTES)
        return nonce + self._aead.encrypt(nonce, material, _binding(tenant_id, purpose, version))

    def unwrap(self, wrapped: bytes, *, tenant_id: str, purpose: str, version: int) -> bytes:
        try:
            return self._aead.decrypt(wrapped[:NONCE_BYTES], wrapped[NONCE_BYTES:],
                                      _binding(tenant_id, purpose, version))
        except (InvalidTag, ValueError):
            raise FailedPrecondition(
                f"key {tenant_id}/{purpose} v{version} does not unwrap under the configured master key"
            ) from None


def new_data_key() -> bytes:
    return AESGCM.generate_key(bit_length=KEY_BYTES * 8)


def tenant_key_factory(master_key: KeyProvider) -> Callable[[str, str, int], tuple[bytes, str]]:
    """Makes new tenant keys: random AES-256, wrapped under the master key before they reach a store."""

    def factory(tenant_id: str, purpose: str, version: int) -> tuple[bytes, str]:
        return master_key.wrap(new_data_key(), tenant_id=tenant_id, purpose=purpose, version=version), ALGORITHM

    return factory


def generate_master_key_file(path: str | Path) -> None:
    """Write a fresh master key (base64 on one line), readable by the owner only."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="ascii") as handle:
        handle.write(base64.b64encode(os.urandom(KEY_BYTES)).decode("ascii") + "\n")


def _binding(tenant_id: str, purpose: str, version: int) -> bytes:
    return f"tenantgate/v1|{tenant_id}|{purpose}|{version}".encode()
