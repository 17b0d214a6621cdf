"""Who is calling: from the client certificate under mutual TLS (named as ``tenantgate.identity`` says), or, only
where the operator says a proxy or mesh sets and strips it, from the ``x-tenantgate-caller`` metadata."""

from __future__ import annotations

import grpc
from cryptography import x509
from cryptography.x509.oid import NameOID

from tenantgate.identity import CALLER_METADATA, caller_from_auth_context, service_in_uri

# Longer principals are not parsed as certificate subjects (a subject's attributes are at most 64 characters).
MAX_PRINCIPAL = 1024


def identity_from_principal(principal: str) -> str:
    """A peer principal as Envoy reports it (the certificate's URI SAN, else its DNS SAN, else its subject as an
    RFC 4514 string) named as a certificate's caller is: ``service:<name>`` for a URI ending ``/service/<name>``,
    the subject's CN for a subject, else ``service:<principal>``."""
    if "://" not in principal and "=" in principal and len(principal) <= MAX_PRINCIPAL:
        try:
            common = x509.Name.from_rfc4514_string(principal).get_attributes_for_oid(NameOID.COMMON_NAME)
        except ValueError:
            common = []
        if common:
            return f"service:{common[0].value!s}"
    return f"service:{service_in_uri(principal) or principal}"


class CallerIdentity:
    def __init__(self, *, trust_metadata: bool = False, client_certificates: bool = True) -> None:
        """``client_certificates``: whether the listener can carry them (TLS); without, the per-call
        look-up of the connection's auth context is skipped."""
        self._trust_metadata = trust_metadata
        self._client_certificates = client_certificates

    def of(self, context: grpc.aio.ServicerContext) -> str:
        """The caller's identity, or "" for an anonymous caller."""
        caller = caller_from_auth_context(context) if self._client_certificates else ""
        if caller:
            return caller
        if self._trust_metadata:
            for key, value in context.invocation_metadata() or ():
                if key == CALLER_METADATA and value:
                    return value if isinstance(value, str) else bytes(value).decode("utf-8", "replace")
        return ""
