"""How callers name themselves: ``service:<name>`` from the client certificate under mutual TLS, or, only where the
operator says a proxy or mesh sets and strips it, from the ``x-tenantgate-caller`` metadata.

A certificate names a caller ``service:<name>``, taken from the first that applies: a SAN URI ending in
``/service/<name>`` (SPIFFE style), else the first DNS SAN, else the subject CN. The server names its callers so,
and so does the SDK's enforcement where it trusts callers to name a subject.
"""

from __future__ import annotations

import functools
from typing import Any

from cryptography import x509
from cryptography.x509.oid import NameOID

CALLER_METADATA = "x-tenantgate-caller"


@functools.lru_cache(maxsize=1024)
def identity_from_certificate(pem: bytes) -> str:
    certificate = x509.load_pem_x509_certificate(pem)
    try:
        names = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        names = None
    if names is not None:
        for uri in names.get_values_for_type(x509.UniformResourceIdentifier):
            name = service_in_uri(uri)
            if name:
                return f"service:{name}"
        dns = names.get_values_for_type(x509.DNSName)
        if dns:
            return f"service:{dns[0]}"
    common = certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return f"service:{common[0].value!s}" if common else ""


def caller_from_auth_context(context: Any) -> str:
    """The identity of a gRPC call's caller by its connection's client certificate (``context.auth_context()``),
    or "" without one."""
    certificates = (context.auth_context() or {}).get("x509_pem_cert")
    return identity_from_certificate(bytes(certificates[0])) if certificates else ""


def service_in_uri(uri: str) -> str:
    """``name`` of a URI ending in ``/service/<name>``; "" for any other."""
    head, sep, name = uri.rpartition("/service/")
    return name if sep and head and name and "/" not in name else ""
