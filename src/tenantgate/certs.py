"""Development certificates for mutual TLS, made with `cryptography`: a CA, a server certificate for
localhost, and one client certificate per service identity (SAN URI spiffe://DOMAIN/service/NAME).

For development and tests only: real deployments take certificates from their own PKI.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
from collections.abc import Sequence
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

TRUST_DOMAIN = "tenantgate.dev"


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "tenantgate development"),
                      x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _write(path: Path, data: bytes, *, secret: bool = False) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600 if secret else 0o644)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def make_dev_certificates(out: str | Path, services: Sequence[str], *, trust_domain: str = TRUST_DOMAIN,
                          days: int = 365) -> list[Path]:
    """Write ca.pem, server.pem/server-key.pem and client-NAME.pem/client-NAME-key.pem into ``out``."""
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (x509.CertificateBuilder().subject_name(_name("tenantgate development CA"))
          .issuer_name(_name("tenantgate development CA")).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
          .not_valid_after(now + datetime.timedelta(days=days))
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                       content_commitment=False, key_encipherment=False, data_encipherment=False,
                                       key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
          .sign(ca_key, hashes.SHA256()))
    written = [folder / "ca.pem"]
    _write(written[0], ca.public_bytes(serialization.Encoding.PEM))

    def issue(stem: str, common_name: str, names: list[x509.GeneralName], usage: x509.ObjectIdentifier) -> None:
        key = ec.generate_private_key(ec.SECP256R1())
        certificate = (x509.CertificateBuilder().subject_name(_name(common_name)).issuer_name(ca.subject)
                       .public_key(key.public_key()).serial_number(x509.random_serial_number())
                       .not_valid_before(now - datetime.timedelta(minutes=5))
                       .not_valid_after(now + datetime.timedelta(days=days))
                       .add_extension(x509.SubjectAlternativeName(names), critical=False)
                       .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
                       .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                       .sign(ca_key, hashes.SHA256()))
        _write(folder / f"{stem}.pem", certificate.public_bytes(serialization.Encoding.PEM))
        _write(folder / f"{stem}-key.pem", _key_pem(key), secret=True)
        written.extend([folder / f"{stem}.pem", folder / f"{stem}-key.pem"])

    issue("server", "localhost", [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                                  x509.IPAddress(ipaddress.ip_address("::1"))], ExtendedKeyUsageOID.SERVER_AUTH)
    for service in services:
        issue(f"client-{service}", service,
              [x509.UniformResourceIdentifier(f"spiffe://{trust_domain}/service/{service}")],
              ExtendedKeyUsageOID.CLIENT_AUTH)
    return written
