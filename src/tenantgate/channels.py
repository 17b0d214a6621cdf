"""Client channels: plaintext on loopback, or TLS (with a client certificate for mutual TLS)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import grpc

from tenantgate.errors import ConfigurationError


@dataclass(frozen=True)
class ChannelSecurity:
    """TLS for a client channel, each part as a PEM file or as PEM bytes (the bytes win).

    Without a CA (``ca_file`` or ``ca_pem``: the CA that signed the server's certificate) the channel is
    plaintext. A client certificate and its key make it mutual TLS: the server names the caller from the
    certificate."""

    ca_file: str = ""
    cert_file: str = ""
    key_file: str = ""
    ca_pem: bytes = field(default=b"", repr=False)
    cert_pem: bytes = field(default=b"", repr=False)
    key_pem: bytes = field(default=b"", repr=False)  # a private key: never in a repr

    @classmethod
    def from_environment(cls) -> ChannelSecurity:
        return cls(os.environ.get("TENANTGATE_CA_FILE", ""), os.environ.get("TENANTGATE_CERT_FILE", ""),
                   os.environ.get("TENANTGATE_KEY_FILE", ""))

    @property
    def uses_tls(self) -> bool:
        return bool(self.ca_pem or self.ca_file)

    def credentials(self) -> grpc.ChannelCredentials | None:
        """The channel's TLS credentials, or None for plaintext; the files are read now."""
        chain = self.cert_pem or _read(self.cert_file)
        key = self.key_pem or _read(self.key_file)
        if not self.uses_tls:
            if chain or key:
                # Never fall back to plaintext with a client certificate the caller meant to present.
                raise ConfigurationError("a client certificate needs TLS: give the CA of the server's certificate")
            return None
        if bool(chain) != bool(key):
            raise ConfigurationError("mutual TLS needs both a client certificate and its private key")
        return grpc.ssl_channel_credentials(self.ca_pem or _read(self.ca_file), key or None, chain or None)


def _read(path: str) -> bytes:
    if not path:
        return b""
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise ConfigurationError(f"cannot read a TLS file: {exc}") from None


def open_channel(target: str, security: ChannelSecurity | None = None) -> grpc.Channel:
    credentials = (security or ChannelSecurity()).credentials()
    if credentials is None:
        return grpc.insecure_channel(target)
    return grpc.secure_channel(target, credentials)
