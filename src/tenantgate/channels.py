"""Client channels: plaintext on loopback, or TLS (with a client certificate for mutual TLS)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import grpc

from tenantgate.errors import ConfigurationError


@dataclass(frozen=True)
class ChannelSecurity:
    ca_file: str = ""  # the CA that signed the server's certificate; empty: plaintext
    cert_file: str = ""  # this client's certificate (mutual TLS)
    key_file: str = ""

    @classmethod
    def from_environment(cls) -> ChannelSecurity:
        return cls(os.environ.get("TENANTGATE_CA_FILE", ""), os.environ.get("TENANTGATE_CERT_FILE", ""),
                   os.environ.get("TENANTGATE_KEY_FILE", ""))


def open_channel(target: str, security: ChannelSecurity | None = None) -> grpc.Channel:
    security = security or ChannelSecurity()
    if not security.ca_file:
        return grpc.insecure_channel(target)
    try:
        roots = Path(security.ca_file).read_bytes()
        chain = Path(security.cert_file).read_bytes() if security.cert_file else None
        key = Path(security.key_file).read_bytes() if security.key_file else None
    except OSError as exc:
        raise ConfigurationError(f"cannot read a TLS file: {exc}") from None
    return grpc.secure_channel(target, grpc.ssl_channel_credentials(roots, key, chain))
